"""Several nodes around Redis (``cluster_redis_url``): node registry, room directory,
node-to-node requests and pipes (``pysfu.cluster.node``), sealed messages
(``pysfu.cluster.messages``). Imported only when a cluster is configured: a single node
never imports Redis."""
