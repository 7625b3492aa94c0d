"""Placement of new rooms by load (``cluster_placement``; pysfu/cluster/placement.py), with
a real redis-server and real ``pysfu serve`` nodes on loopback: a host opening a room on a
loaded node is redirected to the idle one (``join`` answers ``redirect {url}``; the client
library follows it) and viewers on every node receive its media; ``local`` never redirects;
two hosts racing into one new room through redirects: exactly one host; nodes without
node_url and draining nodes are never chosen; a draining node sends hosts of new rooms
elsewhere; an arrival through a redirect is never redirected again; a viewer is never
redirected."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

from pysfu.client import Redirected, RequestFailed, connect, connect_and_join
from pysfu.cluster.node import REFRESH, node_key, room_key
from pysfu.testing.cluster_nodes import Node, RedisServer, redis_server, serve_node
from pysfu.testing.cluster_peers import receive, send_frames, start_host, start_viewer, wait_for

ROOM = "placed-room"
BUSY_PEERS = 24  # peers on the loaded node: far above the placement margin
FRAMES = 150
ADMIN_TOKEN = "an-admin-token-of-more-than-32-bytes-xyz"
LOOPBACK = {"PYSFU_MAX_ROOMS_PER_ADDRESS_PER_MINUTE": "1000"}


@asynccontextmanager
async def cluster(tmp_path: Path, *specs: dict[str, Any]
                  ) -> AsyncIterator[tuple[RedisServer, list[Node]]]:
    """redis-server and one node per spec (``node_url``: bool, ``env``: extra variables);
    nodes are named node-a, node-b, ..."""
    async with redis_server() as redis, AsyncExitStack() as stack:
        nodes = []
        for i, spec in enumerate(specs):
            first = 43100 + 100 * i
            nodes.append(await stack.enter_async_context(serve_node(
                redis, f"node-{'abcdef'[i]}", tmp_path, plain_ports=f"{first}-{first + 99}",
                node_url=spec.get("node_url", True), extra_env={**LOOPBACK,
                                                                **spec.get("env", {})})))
        yield redis, nodes


async def registry(redis: RedisServer, key: str) -> str | None:
    client: coredis.Redis[str] = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with client:
        return await client.get(key)


async def node_load(redis: RedisServer, node: Node) -> dict[str, Any]:
    text = await registry(redis, node_key(node.node_id))
    assert text is not None, f"{node.node_id} is not registered"
    load: dict[str, Any] = json.loads(text)["load"]
    return load


async def load_node(stack: AsyncExitStack, redis: RedisServer, node: Node,
                    peers: int = BUSY_PEERS) -> None:
    """``peers`` peers (a host and viewers, signaling only) in a room on ``node``, and the
    registry showing them."""
    host = await stack.enter_async_context(connect(node.ws_url))
    await host.join("busy", "host", "busy-host", redirected=True)  # (stays here)
    for i in range(peers - 1):
        viewer = await stack.enter_async_context(connect(node.ws_url))
        await viewer.join("busy", "viewer", f"busy-{i}")

    async def shown() -> bool:
        return int((await node_load(redis, node))["peers"]) >= peers

    await wait_for(shown, f"{node.node_id}'s load in the registry", timeout=3 * REFRESH)


async def admin(node: Node, path: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    async with stream:
        await stream.send_all(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              f"{ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n".encode())
        head = await stream.receive_some(4096)
    assert head.split()[1] == b"200", head


def redirects_in(node: Node) -> int:
    return node.log.read_bytes().count(b"event=cluster.redirect")


async def test_host_on_a_loaded_node_is_redirected_and_viewers_everywhere_get_media(
        tmp_path: Path) -> None:
    async with cluster(tmp_path, {}, {}, {}) as (redis, (a, b, c)), \
            AsyncExitStack() as stack:
        await load_node(stack, redis, a)
        host, host_peer, _ = await start_host(stack, a, ROOM)  # follows the redirect
        assert host.url in (b.ws_url, c.ws_url), host.url
        origin = b if host.url == b.ws_url else c
        assert host.join_answer is not None and host.join_answer["role"] == "host"
        assert await registry(redis, room_key(ROOM)) == origin.node_id
        assert redirects_in(a) == 1
        load = await node_load(redis, a)
        assert set(load) >= {"rooms", "peers", "pps", "cpu", "draining"}

        viewers = [await start_viewer(stack, node, f"viewer-{node.node_id}", ROOM)
                   for node in (a, b, c)]
        await trio.sleep(0.3)  # the pipes' first packets and the viewers' ICE settle
        results: dict[int, list[int]] = {}
        async with trio.open_nursery() as nursery:
            async def collect(index: int) -> None:
                got = await receive(viewers[index].peer, FRAMES, timeout=15)
                results[index] = [p.seq for p in got]

            for index in range(3):
                nursery.start_soon(collect, index)
            sent = await send_frames(host_peer, 1, FRAMES)
        assert len(sent) == FRAMES
        for index, seqs in results.items():
            assert len(seqs) == FRAMES, (index, len(seqs))
            assert seqs == sorted(seqs), index  # in order (each consumer's own numbering)


async def test_forwarded_packets_show_in_the_registry_load(tmp_path: Path) -> None:
    async with cluster(tmp_path, {}) as (redis, (a,)), AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, a, ROOM)
        await start_viewer(stack, a, "viewer", ROOM)
        await trio.sleep(0.3)
        peak = 0.0
        with trio.move_on_after(4 * REFRESH):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_frames, host_peer, 1, 100_000, 0.005)
                while peak < 50:
                    await trio.sleep(0.5)
                    peak = max(peak, float((await node_load(redis, a))["pps"]))
                nursery.cancel_scope.cancel()
        assert peak >= 50, peak  # ~200 packets/s forwarded to the one viewer
        assert float((await node_load(redis, a))["cpu"]) > 0


async def test_local_placement_never_redirects(tmp_path: Path) -> None:
    local = {"env": {"PYSFU_CLUSTER_PLACEMENT": "local"}}
    async with cluster(tmp_path, local, local) as (redis, (a, b)), AsyncExitStack() as stack:
        await load_node(stack, redis, a)
        for room in ("local-1", "local-2", "local-3"):
            host = await stack.enter_async_context(connect(a.ws_url))
            answer = await host.join(room, "host", f"host-{room}")
            assert answer["role"] == "host"
            assert await registry(redis, room_key(room)) == "node-a"
        assert redirects_in(a) == 0


async def test_two_hosts_racing_through_redirects_one_host(tmp_path: Path) -> None:
    async with cluster(tmp_path, {}, {}) as (redis, (a, b)), AsyncExitStack() as stack:
        await load_node(stack, redis, a)
        for round_ in range(5):
            room = f"race-{round_}"
            outcomes: list[tuple[str, str]] = []
            done = trio.Event()

            async def racer(name: str, room: str = room,
                            outcomes: list[tuple[str, str]] = outcomes,
                            done: trio.Event = done) -> None:
                try:
                    async with connect_and_join(a.ws_url, room, "host", name) as client:
                        outcomes.append(("joined", str(client.url)))
                        if len(outcomes) == 2:
                            done.set()
                        await done.wait()
                except RequestFailed as exc:
                    outcomes.append((exc.code, exc.message))
                    if len(outcomes) == 2:
                        done.set()

            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(racer, "host-1")
                    nursery.start_soon(racer, "host-2")
            joined = [o for o in outcomes if o[0] == "joined"]
            assert len(joined) == 1, outcomes
            assert joined[0][1] == b.ws_url, outcomes  # the winner went through a redirect
            assert [o[0] for o in outcomes if o[0] != "joined"] == ["forbidden"], outcomes
        assert redirects_in(a) >= 5


async def test_no_node_url_or_draining_node_is_never_chosen(tmp_path: Path) -> None:
    admin_env = {"env": {"PYSFU_ADMIN_TOKEN": ADMIN_TOKEN}}
    async with cluster(tmp_path, {}, {"node_url": False}, admin_env) as (redis, (a, b, c)), \
            AsyncExitStack() as stack:
        await admin(c, "/admin/drain")

        async def c_draining(value: bool) -> bool:
            return (await node_load(redis, c))["draining"] is value

        await wait_for(lambda: c_draining(True), "C draining in the registry",
                       timeout=3 * REFRESH)
        await load_node(stack, redis, a)
        # B is idle but has no node_url, C is idle but draining: the host stays on A.
        host = await stack.enter_async_context(connect_and_join(a.ws_url, "r1", "host", "h1"))
        assert host.url == a.ws_url
        assert await registry(redis, room_key("r1")) == "node-a"
        text = await registry(redis, node_key("node-b"))
        assert text is not None and json.loads(text)["nodeUrl"] is None
        # C back in service: the next new room goes there.
        await admin(c, "/admin/undrain")
        await wait_for(lambda: c_draining(False), "C serving again in the registry",
                       timeout=3 * REFRESH)
        host2 = await stack.enter_async_context(connect_and_join(a.ws_url, "r2", "host", "h2"))
        assert host2.url == c.ws_url


async def test_client_redirects_are_bounded_and_never_loop(tmp_path: Path) -> None:
    async with cluster(tmp_path, {}, {}) as (redis, (a, b)), AsyncExitStack() as stack:
        await load_node(stack, redis, a)
        client = await stack.enter_async_context(connect(a.ws_url))
        with pytest.raises(Redirected) as info:
            await client.join("new-room", "host", "h1")
        assert (info.value.url, info.value.node) == (b.ws_url, "node-b")
        with pytest.raises(Redirected):  # no hop allowed: the redirect is the caller's
            async with connect_and_join(a.ws_url, "new-room-2", "host", "h2",
                                        max_redirects=0):
                pass
        # An arrival through a redirect stays, even on the loaded node.
        again = await stack.enter_async_context(connect(a.ws_url))
        answer = await again.join("new-room-3", "host", "h3", redirected=True)
        assert answer["role"] == "host"
        # A viewer opening a new room on the loaded node is not redirected either.
        viewer = await stack.enter_async_context(connect(a.ws_url))
        assert (await viewer.join("new-room-4", "viewer", "v1"))["role"] == "viewer"
        # The room reserved for B by the first redirect: a host arriving there gets it.
        assert await registry(redis, room_key("new-room")) == "node-b"
        on_b = await stack.enter_async_context(connect(b.ws_url))
        assert (await on_b.join("new-room", "host", "h1", redirected=True))["role"] == "host"


async def test_a_draining_node_sends_hosts_of_new_rooms_elsewhere(tmp_path: Path) -> None:
    admin_env = {"env": {"PYSFU_ADMIN_TOKEN": ADMIN_TOKEN}}
    async with cluster(tmp_path, admin_env, {}) as (redis, (a, b)), AsyncExitStack() as stack:
        before = await stack.enter_async_context(connect_and_join(a.ws_url, "kept", "host",
                                                                  "h0"))
        assert before.url == a.ws_url  # both idle: no redirect
        await admin(a, "/admin/drain")
        host = await stack.enter_async_context(connect_and_join(a.ws_url, "new", "host", "h1"))
        assert host.url == b.ws_url and await registry(redis, room_key("new")) == "node-b"
        # A viewer of a new room, and a host that came through a redirect, are refused.
        for role, redirected in (("viewer", False), ("host", True)):
            client = await stack.enter_async_context(connect(a.ws_url))
            with pytest.raises(RequestFailed) as info:
                await client.join(f"other-{role}", role, "p", redirected=redirected)
            assert info.value.code == "unavailable"
        # The room it has goes on: a viewer joins it there.
        viewer = await stack.enter_async_context(connect(a.ws_url))
        assert (await viewer.join("kept", "viewer", "v"))["role"] == "viewer"
