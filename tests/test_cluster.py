"""Rooms across nodes (pysfu/cluster/): a real redis-server and real ``pysfu serve``
processes on loopback (pysfu.testing.cluster_nodes). The host is on node A; viewers on A,
B and C receive every packet, decrypted, in order (independent WebRTC test peers); 20
viewers on B cost A one pipe consumer per producer; kill -9 of A closes the room on B and C
with ``node_lost`` in time and their engine counts return to zero; two hosts racing for one
room id on A and B: exactly one wins, 50 times over; a Redis restart mid-stream stops no
media, and the nodes and their rooms are back in Redis within a refresh; Redis unreachable
(stopped, its connections hanging) for longer than the TTL stops no media and closes no
room."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from pysfu.client import RequestFailed, SignalingClient, connect
from pysfu.cluster.node import (
    PIPE_RETRIES,
    PIPE_RETRY_DELAY,
    REFRESH,
    RESTART_QUIET,
    TTL,
    WATCH_INTERVAL,
)
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
REPUBLISHED = 2 * REFRESH + 2  # seconds after Redis starts: every entry is back
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


async def test_registry_and_directory_entries_live_ttl_and_are_refreshed(nodes: Nodes) -> None:
    """Each node's registry entry (id, URLs, pipe address, load) and its rooms' directory
    entries carry the TTL and outlive it only because the node refreshes them."""
    import json

    import coredis

    from pysfu.cluster.node import node_key, room_key

    async with AsyncExitStack() as stack:
        await start_host(stack, nodes.a, ROOM)
        client: coredis.Redis[str] = coredis.Redis.from_url(nodes.redis.url,
                                                            decode_responses=True)
        await stack.enter_async_context(client)
        first = await client.get(node_key("node-a"))
        assert first is not None
        entry = json.loads(first)
        assert (entry["id"], entry["url"], entry["pipeIp"], entry["nodeUrl"]) == (
            "node-a", nodes.a.ws_url, "127.0.0.1", None)  # no node_url: no redirect target
        assert set(entry["load"]) == {"rooms", "peers", "pps", "cpu", "draining"}
        assert await client.get(room_key(ROOM)) == "node-a"
        for key in (node_key("node-a"), node_key("node-b"), room_key(ROOM)):
            assert 0 < await client.pttl(key) <= TTL * 1000, key
        await trio.sleep(TTL + 0.5)  # past the TTL of the entries read above
        again = await client.get(node_key("node-a"))
        assert again is not None and json.loads(again)["ts"] > entry["ts"]
        assert json.loads(again)["load"]["rooms"] == 1
        assert json.loads(again)["load"]["peers"] == 1
        assert await client.get(room_key(ROOM)) == "node-a"
        assert await client.exists([node_key("node-b")]) == 1


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
        _, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        viewers = [await start_viewer(stack, nodes.b, "edge-viewer-b", ROOM),
                   await start_viewer(stack, c, "edge-viewer-c", ROOM)]
        assert (await nodes.b.engine())["consumers"] == 1
        assert (await c.engine())["consumers"] == 1
        await trio.sleep(0.3)
        async with trio.open_nursery() as tasks:  # A killed mid-stream
            tasks.start_soon(send_frames, host_peer, 1, 100_000, 0.005)
            for viewer in viewers:  # media flows through both pipes
                assert len(await receive(viewer.peer, 20)) == 20
            nodes.a.kill()
            killed = trio.current_time()
            await trio.sleep(0.2)
            tasks.cancel_scope.cancel()
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


async def test_origin_events_reach_viewers_on_every_node_and_close_tears_down(
        nodes: Nodes, tmp_path: Path) -> None:
    """newProducer, producerPaused/Resumed, producerClosed and roomClosed of the origin A
    reach its own viewer and the viewers on B and C (each with its node's producer id);
    afterwards every engine is back to zero."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(serve_node(
            nodes.redis, "node-c", tmp_path, plain_ports="42300-42399",
            extra_env=LOOPBACK_ROOMS))
        host, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        viewers = [await start_viewer(stack, node, f"viewer-{node.node_id}", ROOM)
                   for node in (nodes.a, nodes.b, c)]
        audio_id = await host.produce(ROOM, host_peer.transport["id"], "audio",
                                      opus_producer(mid="1"))
        audio: list[str] = []  # each viewer's id of the audio producer
        for viewer in viewers:
            with trio.fail_after(5):
                _, note = await viewer.client.next_notification("newProducer")
            assert note["kind"] == "audio"
            audio.append(note["producerId"])
            assert {p["id"] for p in await viewer.client.get_producers(ROOM)} == {
                viewer.consumer["producerId"], note["producerId"]}
        assert audio[0] == audio_id and len(set(audio)) == 3  # B's and C's are piped
        # A: its viewer's consumer and one pipe consumer per producer per edge node.
        assert (await nodes.a.engine())["consumers"] == 1 + 2 * 2

        # Pause and resume on the origin reach the edges (their piped producers follow).
        for method, event in (("pauseProducer", "producerPaused"),
                              ("resumeProducer", "producerResumed")):
            await host.request(method, {"roomId": ROOM, "producerId": audio_id})
            for viewer, producer_id in zip(viewers, audio, strict=True):
                with trio.fail_after(5):
                    _, note = await viewer.client.next_notification(event)
                assert note == {"producerId": producer_id}

        await host.close_producer(ROOM, audio_id)
        for viewer, producer_id in zip(viewers, audio, strict=True):
            with trio.fail_after(5):
                _, note = await viewer.client.next_notification("producerClosed")
            assert note == {"producerId": producer_id}

        async def a_has_two_pipes() -> bool:
            return (await nodes.a.engine())["consumers"] == 1 + 2

        await wait_for(a_has_two_pipes, "the audio pipes closed on A", timeout=5)

        await host.leave(ROOM)
        for viewer in viewers:
            with trio.fail_after(5):
                _, note = await viewer.client.next_notification("roomClosed")
            assert note == {"roomId": ROOM, "reason": "host_left"}

        async def all_empty() -> bool:
            return all([is_empty(await node.engine()) for node in (nodes.a, nodes.b, c)])

        await wait_for(all_empty, "every node's engine counts back to zero", timeout=5)


async def test_an_edge_node_that_cannot_pipe_the_media_refuses_the_viewer(
        nodes: Nodes, tmp_path: Path) -> None:
    """Node C has one pipe port: the room's video is piped, its audio cannot be. The viewer
    is told ``unavailable`` (rather than joining a room without the audio), C's room
    closes and A closes the pipe it had opened for C."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(serve_node(
            nodes.redis, "node-c", tmp_path, plain_ports="42300-42300",
            extra_env=LOOPBACK_ROOMS))
        host, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        await host.produce(ROOM, host_peer.transport["id"], "audio", opus_producer(mid="1"))
        alone = await nodes.a.engine()
        viewer = await stack.enter_async_context(connect(c.ws_url))
        with pytest.raises(RequestFailed) as info:
            await viewer.join(ROOM, "viewer", "viewer-c")
        assert info.value.code == "unavailable", info.value
        assert "could not be piped" in info.value.message

        async def back() -> bool:
            return await nodes.a.engine() == alone and is_empty(await c.engine())

        await wait_for(back, "A's pipe to C closed, C empty", timeout=5)
        assert (await c.health())["rooms"] == 0
        # A node with pipe ports gets both.
        other = await stack.enter_async_context(connect(nodes.b.ws_url))
        await other.join(ROOM, "viewer", "viewer-b")
        assert len(await other.get_producers(ROOM)) == 2


async def test_an_added_producer_the_edge_could_not_pipe_is_piped_once_it_can(
        nodes: Nodes, tmp_path: Path) -> None:
    """Node C has one pipe port, taken by the video's pipe: the audio added on A cannot be
    piped at once. When the video closes (its pipe frees the port) C tries again and its
    viewer gets the audio."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(serve_node(
            nodes.redis, "node-c", tmp_path, plain_ports="42300-42300",
            extra_env=LOOPBACK_ROOMS))
        host, host_peer, video_id = await start_host(stack, nodes.a, ROOM)
        viewer = await start_viewer(stack, c, "viewer-c", ROOM)
        await host.produce(ROOM, host_peer.transport["id"], "audio", opus_producer(mid="1"))
        with trio.fail_after(5):
            while b"event=cluster.pipe_refused" not in c.log.read_bytes():
                await trio.sleep(0.05)
        await host.close_producer(ROOM, video_id)
        with trio.fail_after(5):
            _, note = await viewer.client.next_notification("producerClosed")
        assert note == {"producerId": viewer.consumer["producerId"]}
        with trio.fail_after(PIPE_RETRIES * PIPE_RETRY_DELAY + 3):
            _, note = await viewer.client.next_notification("newProducer")
        assert note["kind"] == "audio"
        assert [p["id"] for p in await viewer.client.get_producers(ROOM)] == [
            note["producerId"]]


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


async def test_origin_stopped_cleanly_tells_the_edges_and_leaves_redis(
        nodes: Nodes, tmp_path: Path) -> None:
    """SIGTERM of the origin (README: a clean stop): its rooms close with
    ``server_shutdown``, which the edge viewer hears at once (not ``node_lost`` after the
    TTL), and its registry and directory entries are gone when the process has exited."""
    import coredis

    from pysfu.cluster.node import node_key, room_key

    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(serve_node(
            nodes.redis, "node-s", tmp_path, plain_ports="42400-42499",
            extra_env={**LOOPBACK_ROOMS, "PYSFU_SHUTDOWN_GRACE": "1"}))
        await start_host(stack, s, ROOM)
        viewer = await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        client: coredis.Redis[str] = coredis.Redis.from_url(nodes.redis.url,
                                                            decode_responses=True)
        await stack.enter_async_context(client)
        assert await client.get(room_key(ROOM)) == "node-s"
        s.process.send_signal(signal.SIGTERM)
        with trio.fail_after(1 + 3):  # the grace, then the rooms close
            _, note = await viewer.client.next_notification("roomClosed")
        assert note == {"roomId": ROOM, "reason": "server_shutdown"}
        with trio.fail_after(5):
            while s.process.poll() is None:
                await trio.sleep(0.05)
        assert s.process.returncode == 0, s.log.read_text()[-2000:]
        assert await client.exists([node_key("node-s")]) == 0, "node entry"
        assert await client.exists([room_key(ROOM)]) == 0, "room entry"
        await wait_for(lambda: _empty(nodes.b), "B's engine counts back to zero", timeout=5)


async def _empty(node: Node) -> bool:
    return is_empty(await node.engine())


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

    from pysfu.cluster.bus import inbox
    from pysfu.cluster.messages import seal

    async with AsyncExitStack() as stack:
        host, _, _ = await start_host(stack, nodes.a, ROOM)
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
        # A client of the SFU, even the room's host, has no request that opens a pipe.
        for event in ("attach", "pipe", "pipeToRouter", "createPipeTransport"):
            with pytest.raises(RequestFailed) as info:
                await host.request(event, {"roomId": ROOM, "room": ROOM, "id": "x"})
            assert info.value.code == "unknown_event", (event, info.value)
        assert b"event=pipe.transport_created" not in nodes.a.log.read_bytes()
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


async def back_in_redis(nodes: Nodes, room: str) -> bool:
    """Both nodes registered and ``room``'s directory entry naming its origin, A."""
    import coredis

    from pysfu.cluster.node import node_key, room_key

    client: coredis.Redis[str] = coredis.Redis.from_url(nodes.redis.url,
                                                        decode_responses=True)
    async with client:
        registered = await client.exists([node_key("node-a"), node_key("node-b")])
        return registered == 2 and await client.get(room_key(room)) == "node-a"


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
            restarted = trio.current_time()
            sent += await send_frames(host_peer, 126, 25)
        assert [p.payload for p in got] == sent, len(got)
        # The empty Redis gets both nodes' registry entries and the room's origin back
        # within REPUBLISHED of its start (a refresh attempt may have been failing at the
        # restart: up to one refresh, then the next one).
        await wait_for(lambda: back_in_redis(nodes, ROOM), "nodes and room back in Redis",
                       timeout=max(0.1, restarted + REPUBLISHED - trio.current_time()))
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


async def test_redis_unreachable_longer_than_the_ttl_closes_no_room(nodes: Nodes) -> None:
    """Redis stopped (SIGSTOP: its connections hang, as in a network partition) for longer
    than the registry's TTL, then continued: every registry and directory entry expires
    at once when it continues, yet no node is declared lost (each node waits one refresh
    after Redis answers again), the edge viewer gets every packet throughout, a join that
    needs the directory meanwhile is ``unavailable``, and the nodes recover by themselves."""
    async with AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, nodes.a, ROOM)
        viewer = await start_viewer(stack, nodes.b, "edge-viewer", ROOM)
        await trio.sleep(0.3)
        newcomer = await stack.enter_async_context(connect(nodes.b.ws_url))
        redis = nodes.redis.process
        assert redis is not None
        got: list[Rtp] = []
        sent: list[bytes] = []
        try:
            async with trio.open_nursery() as tasks:
                async def collect() -> None:  # until cancelled
                    while True:
                        packet = await viewer.peer.recv_rtp(timeout=TTL + 12)
                        if packet is not None:
                            got.append(packet)

                tasks.start_soon(collect)
                sent += await send_frames(host_peer, 1, 25)
                redis.send_signal(signal.SIGSTOP)
                stopped = trio.current_time()
                with pytest.raises(RequestFailed) as info:
                    await newcomer.join("while-unreachable", "host", "h2")
                assert info.value.code == "unavailable"
                seq = 26
                while trio.current_time() - stopped < TTL + REFRESH:  # entries expire
                    sent += await send_frames(host_peer, seq, 10, interval=0.02)
                    seq += 10
                redis.send_signal(signal.SIGCONT)
                # Past a refresh and several watches after Redis answers again.
                while trio.current_time() - stopped < TTL + REFRESH + RESTART_QUIET + 2:
                    sent += await send_frames(host_peer, seq, 10, interval=0.02)
                    seq += 10
                await trio.sleep(0.5)
                tasks.cancel_scope.cancel()
        finally:
            redis.send_signal(signal.SIGCONT)
        assert len(got) == len(sent), (len(got), len(sent))
        assert [p.payload for p in got] == sent
        with trio.move_on_after(0.2):
            _, note = await viewer.client.next_notification("roomClosed")
            raise AssertionError(f"the room closed: {note}")
        assert b"event=cluster.node_lost" not in nodes.b.log.read_bytes()
        await wait_for(lambda: back_in_redis(nodes, ROOM), "nodes and room back in Redis",
                       timeout=REPUBLISHED)
        assert (await nodes.b.engine())["consumers"] == 1
        # A new room across the two nodes.
        host2 = await stack.enter_async_context(connect(nodes.a.ws_url))
        await host2.join("after-outage", "host", "h3")
        peer2 = await open_peer(host2, "after-outage", "send")
        stack.callback(peer2.close)
        await host2.produce("after-outage", peer2.transport["id"], "video",
                            vp8_producer(mid="0", ssrc=HOST_SSRC + 1))
        late = await start_viewer(stack, nodes.b, "late-viewer", "after-outage")
        assert late.consumer["producerId"]
