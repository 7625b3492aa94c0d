"""Rooms across nodes (pysfu/cluster/): a real redis-server and real ``pysfu serve``
processes on loopback (pysfu.testing.cluster_nodes). The host is on node A; viewers on A,
B and C receive every packet, decrypted, in order (independent WebRTC test peers); 20
viewers on B cost A one pipe consumer per producer; kill -9 of A closes the room on B and C
with ``node_lost`` in time and their engine counts return to zero; two hosts racing for one
room id on A and B: exactly one wins, 50 times over; a Redis restart mid-stream stops no
media."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from pysfu.client import RequestFailed, SignalingClient, connect
from pysfu.cluster.node import REFRESH, RESTART_QUIET, TTL, WATCH_INTERVAL
from pysfu.testing.cluster_nodes import Node, RedisServer, redis_server, serve_node
from pysfu.testing.cluster_peers import (
    Viewer,
    open_peer,
    receive,
    send_frames,
    start_host,
    start_viewer,
    wait_for,
)
from pysfu.testing.fixtures import opus_producer, vp8_producer
from pysfu.testing.media_room import HOST_SSRC
from pysfu.testing.webrtc_peer import Rtp

ROOM = "cluster-room"
FRAMES = 200


@dataclass
class Nodes:
    redis: RedisServer
    a: Node
    b: Node


# Every test client comes from 127.0.0.1: the race test creates 50 rooms from it.
LOOPBACK_ROOMS = {"PYSFU_MAX_ROOMS_PER_ADDRESS_PER_MINUTE": "1000"}


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with redis_server() as redis, \
            serve_node(redis, "node-a", tmp_path, plain_ports="42100-42199",
                       extra_env=LOOPBACK_ROOMS) as a, \
            serve_node(redis, "node-b", tmp_path, plain_ports="42200-42299",
                       extra_env=LOOPBACK_ROOMS) as b:
        yield Nodes(redis, a, b)


def pipe_consumers_of(log: Path) -> int:
    return len(re.findall(rb"event=pipe\.consumer_created", log.read_bytes()))


async def test_viewers_on_three_nodes_get_every_packet_in_order(nodes: Nodes,
                                                                 tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(serve_node(
            nodes.redis, "node-c", tmp_path, plain_ports="42300-42399",
            extra_env=LOOPBACK_ROOMS))
        _, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        local = await start_viewer(stack, nodes.a, "viewer-a", ROOM)
        remote = await start_viewer(stack, nodes.b, "viewer-b", ROOM)
        third = await start_viewer(stack, c, "viewer-c", ROOM)
        await trio.sleep(0.3)  # the pipe's first packets and the viewers' ICE settle
        async with trio.open_nursery() as tasks:
            results: dict[str, list[Rtp]] = {}

            async def collect(name: str, viewer: Viewer) -> None:
                results[name] = await receive(viewer.peer, FRAMES)

            tasks.start_soon(collect, "a", local)
            tasks.start_soon(collect, "b", remote)
            tasks.start_soon(collect, "c", third)
            sent = await send_frames(host_peer, 1, FRAMES)
        assert (await nodes.a.engine())["consumers"] == 3  # a viewer, two pipe consumers
        for name in ("a", "b", "c"):
            got = results[name]
            assert [p.payload for p in got] == sent, (name, len(got))
            seqs = [p.seq for p in got]
            assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:], strict=False)), name
        # The edge viewer's consumer is of B's piped producer, not of A's.
        assert remote.consumer["producerId"] != local.consumer["producerId"]


async def test_twenty_viewers_on_b_cost_a_one_pipe_consumer(nodes: Nodes) -> None:
    async with AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        before = await nodes.a.engine()
        viewers = [await start_viewer(stack, nodes.b, f"edge-{i}", ROOM) for i in range(20)]
        await trio.sleep(0.3)
        after = await nodes.a.engine()
        # A: one consumer more (the pipe consumer) and one transport (the pipe), whatever
        # the number of viewers on B.
        assert after["consumers"] - before["consumers"] == 1, (before, after)
        assert pipe_consumers_of(nodes.a.log) == 1
        b_counts = await nodes.b.engine()
        assert b_counts["consumers"] == 20 and b_counts["producers"] == 1, b_counts
        async with trio.open_nursery() as tasks:
            counts: list[int] = []

            async def collect(viewer: Viewer) -> None:
                counts.append(len(await receive(viewer.peer, 20)))

            for viewer in viewers:
                tasks.start_soon(collect, viewer)
            await trio.sleep(0.1)
            await send_frames(host_peer, 1, 20)
        assert counts == [20] * 20, counts


async def test_origin_killed_viewers_elsewhere_get_node_lost(nodes: Nodes,
                                                            tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(serve_node(
            nodes.redis, "node-c", tmp_path, plain_ports="42300-42399",
            extra_env=LOOPBACK_ROOMS))
        await start_host(stack, nodes.a, ROOM)
        viewers = [await start_viewer(stack, nodes.b, "edge-viewer-b", ROOM),
                   await start_viewer(stack, c, "edge-viewer-c", ROOM)]
        assert (await nodes.b.engine())["consumers"] == 1
        assert (await c.engine())["consumers"] == 1
        nodes.a.kill()
        killed = trio.current_time()
        for viewer in viewers:
            with trio.fail_after(TTL + REFRESH + 2):
                _, note = await viewer.client.next_notification("roomClosed")
            elapsed = trio.current_time() - killed
            assert note == {"roomId": ROOM, "reason": "node_lost"}
            assert elapsed <= TTL + 2, elapsed

        async def edges_empty() -> bool:
            return is_empty(await nodes.b.engine()) and is_empty(await c.engine())

        await wait_for(edges_empty, "B's and C's engine counts back to zero", timeout=5)
        assert (await nodes.b.health())["rooms"] == 0 and (await c.health())["rooms"] == 0


def is_empty(counts: dict[str, int]) -> bool:
    return all(v == 0 for v in counts.values())


async def test_origin_events_reach_edge_viewers_and_close_tears_down(nodes: Nodes) -> None:
    async with AsyncExitStack() as stack:
        host, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        viewer = await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        audio_id = await host.produce(ROOM, host_peer.transport["id"], "audio",
                                      opus_producer(mid="1"))
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("newProducer")
        assert note["kind"] == "audio" and note["producerId"] != audio_id
        piped_audio = note["producerId"]
        assert {p["id"] for p in await viewer.client.get_producers(ROOM)} == {
            viewer.consumer["producerId"], piped_audio}
        assert (await nodes.a.engine())["consumers"] == 2  # one pipe consumer per producer

        # Pause and resume on the origin reach the edge (its piped producer follows).
        await host.request("pauseProducer", {"roomId": ROOM, "producerId": audio_id})
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("producerPaused")
        assert note == {"producerId": piped_audio}
        await host.request("resumeProducer", {"roomId": ROOM, "producerId": audio_id})
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("producerResumed")
        assert note == {"producerId": piped_audio}

        await host.close_producer(ROOM, audio_id)
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("producerClosed")
        assert note == {"producerId": piped_audio}

        async def a_has_one_pipe() -> bool:
            return (await nodes.a.engine())["consumers"] == 1

        await wait_for(a_has_one_pipe, "the audio pipe closed on A", timeout=5)

        await host.leave(ROOM)
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("roomClosed")
        assert note == {"roomId": ROOM, "reason": "host_left"}

        async def both_empty() -> bool:
            return is_empty(await nodes.a.engine()) and is_empty(await nodes.b.engine())

        await wait_for(both_empty, "both nodes' engine counts back to zero", timeout=5)


async def test_edge_room_emptied_closes_the_origin_pipes(nodes: Nodes) -> None:
    async with AsyncExitStack() as stack:
        await start_host(stack, nodes.a, ROOM)
        alone = await nodes.a.engine()
        viewer = await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        with_pipe = await nodes.a.engine()
        assert with_pipe["consumers"] == alone["consumers"] + 1
        assert with_pipe["transports"] == alone["transports"] + 1
        await viewer.client.leave(ROOM)

        async def back() -> bool:
            return await nodes.a.engine() == alone and is_empty(await nodes.b.engine())

        await wait_for(back, "A's pipe closed after B's room emptied", timeout=5)
        # The room is still A's: a new viewer on B gets a pipe again.
        again = await start_viewer(stack, nodes.b, "edge-viewer-2", ROOM)
        assert again.consumer["producerId"]
        assert (await nodes.a.engine())["consumers"] == alone["consumers"] + 1


async def test_viewer_node_killed_origin_closes_its_pipes(nodes: Nodes) -> None:
    async with AsyncExitStack() as stack:
        await start_host(stack, nodes.a, ROOM)
        alone = await nodes.a.engine()
        await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        assert (await nodes.a.engine())["consumers"] == alone["consumers"] + 1
        nodes.b.kill()
        killed = trio.current_time()

        async def back() -> bool:
            return await nodes.a.engine() == alone

        await wait_for(back, "A's pipe to the lost node closed", timeout=TTL + REFRESH + 2)
        assert trio.current_time() - killed <= TTL + 2


async def test_host_cannot_join_an_edge_room(nodes: Nodes) -> None:
    async with AsyncExitStack() as stack:
        await start_host(stack, nodes.a, ROOM)
        await start_viewer(stack, nodes.b, "edge-viewer", ROOM)  # B's room is an edge of A's
        intruder = await stack.enter_async_context(connect(nodes.b.ws_url))
        with pytest.raises(RequestFailed) as info:
            await intruder.join(ROOM, "host", "second-host")
        assert info.value.code == "forbidden"


async def test_forged_node_request_opens_no_pipe(nodes: Nodes) -> None:
    """Someone who can publish on Redis but lacks cluster_secret cannot make A open a pipe
    (a client of the SFU has no way to ask for one at all)."""
    import time

    import coredis

    from pysfu.cluster.messages import seal
    from pysfu.cluster.node import inbox

    async with AsyncExitStack() as stack:
        await start_host(stack, nodes.a, ROOM)
        before = await nodes.a.engine()
        forged = seal(b"not-the-cluster-secret-0123456789abcdef",
                      {"type": "attach", "room": ROOM, "id": "x"}, sender="node-evil",
                      to="node-a", now=time.time(), nonce="n1")
        redis: coredis.Redis[str] = coredis.Redis.from_url(nodes.redis.url,
                                                           decode_responses=True)
        async with redis:
            assert await redis.publish(inbox("node-a"), forged) == 1
        with trio.fail_after(5):
            while b"event=cluster.message_rejected" not in nodes.a.log.read_bytes():
                await trio.sleep(0.05)
        assert b"event=cluster.node_attached" not in nodes.a.log.read_bytes()
        assert await nodes.a.engine() == before


async def race_join(c: SignalingClient, room: str, name: str, outcomes: dict[str, Any]
                    ) -> None:
    try:
        await c.join(room, "host", f"host-{name}")
        outcomes[name] = "joined"
    except RequestFailed as exc:
        outcomes[name] = exc.code


async def test_two_hosts_racing_on_two_nodes_one_wins_every_time(nodes: Nodes) -> None:
    for attempt in range(50):
        room = f"race-{attempt}"
        outcomes: dict[str, Any] = {}
        async with AsyncExitStack() as stack:
            ca = await stack.enter_async_context(connect(nodes.a.ws_url))
            cb = await stack.enter_async_context(connect(nodes.b.ws_url))

            async with trio.open_nursery() as tasks:
                tasks.start_soon(race_join, ca, room, "a", outcomes)
                tasks.start_soon(race_join, cb, room, "b", outcomes)
        assert sorted(outcomes.values()) == ["forbidden", "joined"], (attempt, outcomes)


async def test_redis_restart_media_goes_on_and_joins_work_again(nodes: Nodes) -> None:
    """Redis killed and started again (empty) mid-stream: the edge viewer gets every packet
    throughout; while Redis is down a join that needs the directory is ``unavailable``;
    nobody is told ``node_lost``; afterwards a new room spans both nodes again."""
    async with AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        viewer = await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        await trio.sleep(0.3)
        newcomer = await stack.enter_async_context(connect(nodes.a.ws_url))
        got: list[Rtp] = []
        async with trio.open_nursery() as tasks:
            async def collect() -> None:
                got.extend(await receive(viewer.peer, 150, timeout=20))

            tasks.start_soon(collect)
            sent = await send_frames(host_peer, 1, 50)
            nodes.redis.stop()
            sent += await send_frames(host_peer, 51, 50)
            with pytest.raises(RequestFailed) as info:
                await newcomer.join("while-down", "host", "h2")
            assert info.value.code == "unavailable"
            await trio.sleep(REFRESH + 0.5)  # down across a refresh and several watches
            sent += await send_frames(host_peer, 101, 25)
            await nodes.redis.start()
            sent += await send_frames(host_peer, 126, 25)
        assert [p.payload for p in got] == sent, len(got)
        # Past the quiet time and a refresh: both nodes are registered again, the room too.
        await trio.sleep(RESTART_QUIET + WATCH_INTERVAL + 1)
        assert (await nodes.b.health())["rooms"] == 1
        with trio.move_on_after(0.2):
            event, note = await viewer.client.next_notification("roomClosed")
            raise AssertionError(f"the room closed: {note}")
        # A new room across the two nodes (directory and inbox subscriptions are back).
        host2 = await stack.enter_async_context(connect(nodes.a.ws_url))
        with trio.fail_after(10):
            while True:
                try:
                    await host2.join("after-restart", "host", "h3")
                    break
                except RequestFailed as exc:
                    assert exc.code == "unavailable", exc
                    await trio.sleep(0.5)
        peer2 = await open_peer(host2, "after-restart", "send")
        stack.callback(peer2.close)
        await host2.produce("after-restart", peer2.transport["id"], "video",
                            vp8_producer(mid="0", ssrc=HOST_SSRC + 1))
        late = await start_viewer(stack, nodes.b, "late-viewer", "after-restart")
        assert late.consumer["producerId"]
