"""Cluster settings (pysfu/config.py) and the single-node default: without
cluster_redis_url nothing of the cluster (nor Redis) is imported or started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pysfu.config import ConfigError, load_config

URL = "redis://127.0.0.1:6379/0"
SECRET = "cluster-secret-0123456789abcdef-xyz"


def test_cluster_settings_from_the_environment() -> None:
    cfg = load_config(env={"PYSFU_CLUSTER_REDIS_URL": URL, "PYSFU_CLUSTER_SECRET": SECRET,
                           "PYSFU_NODE_ID": "node-1", "PYSFU_NODE_URL": "wss://n1.example/ws",
                           "PYSFU_NODE_PIPE_IP": "10.0.0.5"})
    assert (cfg.cluster_redis_url, cfg.node_id, cfg.node_url, cfg.node_pipe_ip) == (
        URL, "node-1", "wss://n1.example/ws", "10.0.0.5")
    assert SECRET not in repr(cfg) and "cluster_secret='***'" in repr(cfg)
    single = load_config()
    assert single.cluster_redis_url is None and single.node_id is None
    assert single.cluster_placement == "least_loaded"
    assert load_config(env={"PYSFU_CLUSTER_PLACEMENT": "local"}).cluster_placement == "local"


@pytest.mark.parametrize(("env", "needle"), [
    ({"PYSFU_CLUSTER_REDIS_URL": URL}, "cluster_secret"),
    ({"PYSFU_CLUSTER_REDIS_URL": URL, "PYSFU_CLUSTER_SECRET": "short"}, "cluster_secret"),
    ({"PYSFU_CLUSTER_REDIS_URL": "http://x", "PYSFU_CLUSTER_SECRET": SECRET},
     "cluster_redis_url"),
    ({"PYSFU_NODE_ID": "a b"}, "node_id"),
    ({"PYSFU_NODE_ID": "x" * 65}, "node_id"),
    ({"PYSFU_NODE_PIPE_IP": "not-an-ip"}, "node_pipe_ip"),
    ({"PYSFU_NODE_PIPE_IP": "0.0.0.0"}, "node_pipe_ip"),
    ({"PYSFU_NODE_URL": "http://x/ws"}, "node_url"),
    ({"PYSFU_CLUSTER_PLACEMENT": "random"}, "cluster_placement"),
])
def test_bad_cluster_settings_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(env=env)
    assert "short" not in str(info.value)  # secrets never echoed


def test_node_id_defaults_to_a_random_name() -> None:
    """Without node_id every node process names itself at random (coredis connects only
    in ``run``: nothing is reached here)."""
    import re

    from pysfu.cluster.node import Cluster

    def node_id(env: dict[str, str]) -> str:
        cfg = load_config(env={"PYSFU_CLUSTER_REDIS_URL": URL, "PYSFU_CLUSTER_SECRET": SECRET,
                               **env})
        return Cluster(cfg, signaling_url=lambda: "ws://127.0.0.1:1/ws", load=dict).node_id

    ids = {node_id({}) for _ in range(5)}
    assert len(ids) == 5 and all(re.fullmatch(r"n-[0-9a-f]{12}", i) for i in ids), ids
    assert node_id({"PYSFU_NODE_ID": "node-7"}) == "node-7"


def test_cli_options() -> None:
    from pysfu.cli import _parser

    args = _parser().parse_args(["serve", "--cluster-redis-url", URL, "--node-id", "n2",
                                 "--node-url", "ws://127.0.0.1:9/ws", "--node-pipe-ip",
                                 "127.0.0.1"])
    assert (args.cluster_redis_url, args.node_id, args.node_pipe_ip) == (URL, "n2",
                                                                         "127.0.0.1")


def test_single_node_imports_no_redis() -> None:
    """A server without cluster_redis_url runs a room and never imports coredis or
    pysfu.cluster."""
    script = """
import sys, trio
from pysfu.config import load_config
from pysfu.server import serve
from pysfu.client import connect

async def main():
    async with trio.open_nursery() as n:
        server = await n.start(serve, load_config(overrides={"port": 0, "rtc_port": 0,
                                                             "metrics_port": 0}))
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as c:
            await c.join("r", "host", "h")
        assert server.cluster is None and "node" not in server.health()
        n.cancel_scope.cancel()
    loaded = sorted(m for m in sys.modules if m.startswith(("coredis", "pysfu.cluster")))
    print("loaded:", loaded)

trio.run(main)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded: []" in out.stdout


def test_unreachable_redis_at_start_is_one_line_and_exit_1() -> None:
    import os

    from pysfu.testing.cluster_nodes import CLUSTER_SECRET
    from pysfu.testing.ports import free_port

    env = dict(os.environ, PYSFU_CLUSTER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
               PYSFU_CLUSTER_SECRET=CLUSTER_SECRET)
    out = subprocess.run([sys.executable, "-m", "pysfu", "serve", "--port", "0", "--rtc-port",
                          "0", "--metrics-port", "0"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "event=server.failed" in text and "cluster_redis_url" in text
    assert "Traceback" not in text
