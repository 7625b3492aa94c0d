"""The cluster's watch (pysfu/cluster/node.py, ``Cluster._watch_once``) with a real
redis-server: a node that attaches to an origin room, or an edge room that opens, while a
watch round waits for Redis is not taken for a lost node (it was not looked up); a node
whose registry entry is gone is; after Redis was unreachable no node is judged until the
others could refresh. Redis is held with SIGSTOP (its connections hang). The rooms are
stand-ins recording what the watch does to them (only their id, ``close`` and
``close_pipe`` are used)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import trio

from pysfu.cluster.node import REFRESH, RESTART_QUIET, Cluster, EdgeRoom, Served, node_key
from pysfu.config import load_config
from pysfu.room import Room
from pysfu.testing.cluster_nodes import CLUSTER_SECRET, redis_server


@dataclass
class StandInRoom:
    id: str
    closed_with: str | None = None

    def close(self, reason: str) -> None:
        self.closed_with = reason

    def close_pipe(self, pipe: Any) -> None:  # (no pipes here)
        raise AssertionError("no pipe to close")


def as_room(room: StandInRoom) -> Room:
    return cast(Room, room)


def new_cluster(redis_url: str, monotonic: Callable[[], float] = time.monotonic) -> Cluster:
    cfg = load_config(env={"PYSFU_CLUSTER_REDIS_URL": redis_url,
                           "PYSFU_CLUSTER_SECRET": CLUSTER_SECRET, "PYSFU_NODE_ID": "node-o"})
    return Cluster(cfg, signaling_url=lambda: "ws://127.0.0.1:1/ws", load=dict,
                   monotonic=monotonic)


async def test_nodes_attaching_during_a_watch_round_are_not_lost() -> None:
    async with redis_server() as redis:
        cluster = new_cluster(redis.url)
        async with cluster.redis:
            for node in ("node-b", "node-c", "node-e"):  # alive: registered
                await cluster.redis.set(node_key(node), "{}", px=60_000)
            origin_room = StandInRoom("origin-room")
            served = Served(as_room(origin_room), nodes={"node-b": {}})
            cluster.served[origin_room.id] = served
            await trio.sleep(RESTART_QUIET)  # (a younger Redis is taken as just restarted)

            process = redis.process
            assert process is not None
            edge_room = StandInRoom("edge-room")
            process.send_signal(signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cluster._watch_once)
                    await trio.sleep(0.3)  # the round waits for Redis
                    served.nodes["node-c"] = {}  # node-c attaches (as _on_attach does)
                    cluster.edges[edge_room.id] = EdgeRoom(as_room(edge_room), "node-e")
                    process.send_signal(signal.SIGCONT)
            finally:
                process.send_signal(signal.SIGCONT)
            assert set(served.nodes) == {"node-b", "node-c"}
            assert edge_room.closed_with is None

            # The next round looks them up: alive, kept; node-e's entry gone: lost.
            await cluster._watch_once()
            assert set(served.nodes) == {"node-b", "node-c"}
            assert edge_room.closed_with is None
            await cluster.redis.delete([node_key("node-e"), node_key("node-c")])
            await cluster._watch_once()
            assert set(served.nodes) == {"node-b"}
            assert edge_room.closed_with == "node_lost"


async def test_after_an_outage_no_node_is_lost_before_the_others_could_refresh() -> None:
    """Redis unreachable past the TTL: the entries of live nodes may have expired (they
    could not refresh either). Once Redis answers again this node waits one refresh + 1 s
    before declaring anyone lost: the node that refreshed meanwhile stays, the one that
    did not is lost."""
    now = [1000.0]
    async with redis_server() as redis:
        cluster = new_cluster(redis.url, monotonic=lambda: now[0])
        async with cluster.redis:
            await trio.sleep(RESTART_QUIET)  # (a younger Redis is taken as just restarted)
            rooms = {origin: StandInRoom(f"edge-of-{origin}") for origin in ("node-e", "node-f")}
            for origin, room in rooms.items():  # neither entry is in Redis: "expired"
                cluster.edges[room.id] = EdgeRoom(as_room(room), origin)
            process = redis.process
            assert process is not None
            process.send_signal(signal.SIGSTOP)
            try:
                with trio.fail_after(REFRESH + 2):
                    await cluster._watch_once()  # times out: Redis unreachable
            finally:
                process.send_signal(signal.SIGCONT)
            await cluster._watch_once()  # Redis answers again: nobody judged yet
            assert [r.closed_with for r in rooms.values()] == [None, None]
            await cluster.redis.set(node_key("node-e"), "{}", px=60_000)  # e refreshes
            now[0] += RESTART_QUIET - 0.1
            await cluster._watch_once()
            assert [r.closed_with for r in rooms.values()] == [None, None]
            now[0] += 0.2
            await cluster._watch_once()
            assert rooms["node-e"].closed_with is None
            assert rooms["node-f"].closed_with == "node_lost"
