"""Host reconnect without a cut (issue 18), over real UDP, DTLS and SRTP on loopback.

When a host's WebSocket drops, its transports, producers and the viewers' consumers stay for
``host_grace_period`` and media keeps flowing (the engine does not depend on the socket). A
host that comes back with the secret of its join answer (``resume``) gets its peer back: the
viewers see no ``producerClosed``/``newProducer``, their consumer ids stay, and the host is
asked for a key frame. A wrong, spent or foreign secret is ``forbidden`` and counted as a
failed join; without a resume the grace period ends as before (room closed, engine empty).
"""

from __future__ import annotations

import secrets
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu import errors
from pysfu.auth import create_token
from pysfu.client import ConnectionLost, RequestFailed, SignalingClient, connect
from pysfu.server import Server
from pysfu.testing.fixtures import engine_leftovers, vp8_producer
from pysfu.testing.media_room import (
    HOST_SSRC,
    ROOM,
    add_viewer,
    open_peer,
    rtcp_types,
    send_frames,
)
from pysfu.testing.webrtc_peer import WebRtcPeer

GRACE = 2.0  # seconds: long enough for a resume on a loaded machine, short for expiry tests


def _url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def drop_socket(server: Server, peer_id: str, room_id: str = ROOM) -> None:
    """Close a peer's WebSocket from the server side (as a proxy or a network change would),
    without the peer leaving: its session ends and the room sees the socket go."""
    assert server.rooms is not None
    room = server.rooms.get(room_id)
    assert room is not None
    notify = room.peers[peer_id].notify
    assert notify is not None
    session = notify.__self__  # type: ignore[attr-defined]  # the peer's Session
    # The close frame goes at once; a client that resumes at once may never answer it, so
    # the closing handshake is not waited for long.
    with trio.move_on_after(0.5):
        await session.ws.aclose(1001, "test: connection dropped")


def pending(client: SignalingClient) -> list[tuple[str, dict[str, Any]]]:
    """The notifications a client has received and not yet read."""
    out = []
    while True:
        try:
            out.append(client.notifications.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


async def receive(peer: WebRtcPeer, count: int) -> list[int]:
    """Sequence numbers of the next ``count`` RTP packets (fails on a 3 s gap)."""
    seqs = []
    for _ in range(count):
        packet = await peer.recv_rtp(timeout=3)
        assert packet is not None, f"{len(seqs)} of {count} packets arrived"
        seqs.append(packet.seq)
    return seqs


async def wait_pli(peer: WebRtcPeer, *, timeout: float = 3.0) -> bool:
    """Whether a PLI for the host's SSRC reaches ``peer`` within ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            rtcp = await peer.recv_rtcp(timeout=timeout)
            if rtcp is not None and (206, 1, HOST_SSRC) in rtcp_types(rtcp):
                return True
    return False


def contiguous(seqs: list[int], first: int) -> bool:
    return seqs == [(first + i) & 0xFFFF for i in range(len(seqs))]


async def _room_with_viewer(client: Any, stack: AsyncExitStack, host: SignalingClient
                            ) -> tuple[WebRtcPeer, str, Any, list[int]]:
    """The host (joined) produces VP8 on a real transport; a viewer consumes and has the
    first 10 packets. Returns (host peer, producer id, viewer, the viewer's sequence numbers);
    the host's start-up PLIs are read off."""
    host_peer = await open_peer(host, "send")
    stack.callback(host_peer.close)
    producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                     vp8_producer(mid="0", ssrc=HOST_SSRC))
    viewer = await add_viewer(client, stack, "v", producer_id)
    stack.callback(viewer.peer.close)
    await trio.sleep(0.1)
    await send_frames(host_peer, 1, 10)
    before = await receive(viewer.peer, 10)
    assert contiguous(before, before[0])
    while await host_peer.recv_rtcp(timeout=0.3) is not None:
        pass
    return host_peer, producer_id, viewer, before


def _no_cut(viewer: Any) -> None:
    events = [name for name, _ in pending(viewer.client)]
    assert "producerClosed" not in events and "newProducer" not in events, events


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_media_flows_without_the_socket_and_after_resume(server: Server,
                                                               client: Any) -> None:
    """The host's socket is dropped mid-stream; every packet sent meanwhile reaches the
    viewer; the host resumes on a new socket: same transport, producer and consumer, a PLI
    reaches the host, and every packet sent after the resume (from the key frame it asked
    for) arrives in order."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(client())
        joined = await host.join(ROOM, "host", "h")
        secret = joined["resumeToken"]
        assert isinstance(secret, str) and len(secret) >= 40
        host_peer, producer_id, viewer, before = await _room_with_viewer(client, stack, host)
        consumer_id = viewer.consumer["id"]
        room = server.rooms.get(ROOM)
        assert room is not None

        await drop_socket(server, "h")
        with trio.fail_after(3):
            await host.closed.wait()
        assert room.peers["h"].notify is None  # the server saw it go: grace period
        # Media goes on while the host has no socket.
        await send_frames(host_peer, 11, 50, keyframe_first=False)
        during = await receive(viewer.peer, 50)
        assert contiguous(during, before[-1] + 1)
        assert not await wait_pli(host_peer, timeout=0.3)  # nobody asked for a key frame

        back = await stack.enter_async_context(client())
        answer = await back.resume(ROOM, "h", secret)
        assert answer["peerId"] == "h" and answer["roomId"] == ROOM and answer["role"] == "host"
        assert answer["resumeToken"] != secret  # single use: a new one each time
        [transport] = answer["transports"]
        assert transport["id"] == host_peer.transport["id"] and transport["connected"]
        assert transport["direction"] == "send"
        assert transport["iceParameters"] == host_peer.ice  # unchanged: no restart asked
        assert [(p["id"], p["kind"], p["paused"]) for p in transport["producers"]] == [
            (producer_id, "video", False)]
        assert transport["producers"][0]["rtpParameters"]["encodings"][0]["ssrc"] == HOST_SSRC
        assert await wait_pli(host_peer), "no PLI reached the host after the resume"
        await send_frames(host_peer, 61, 50, keyframe_first=True)
        after = await receive(viewer.peer, 50)
        assert contiguous(after, during[-1] + 1)

        _no_cut(viewer)
        assert room.consumers[consumer_id].producer.id == producer_id
        assert (await viewer.client.get_stats(ROOM, consumerId=consumer_id))[0]["type"] == \
            "outbound-rtp"
        # The resumed host works on its new socket and the room outlives the grace period.
        await trio.sleep(GRACE + 0.3)
        assert server.rooms.get(ROOM) is room and not room.closed
        assert (await back.get_stats(ROOM, producerId=producer_id))[0]["type"] == "inbound-rtp"
        assert server.media.counts()["producers"] == 1 == server.media.counts()["consumers"]


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_client_auto_resume(server: Server, client: Any) -> None:
    """``connect(auto_resume=True)``: after a drop the same SignalingClient reconnects and
    resumes (twice in a row: each time with the newest secret); the viewer sees no cut."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(connect(_url(server), auto_resume=True))
        joined = await host.join(ROOM, "host", "h")
        assert host.resume_state is not None
        assert host.resume_state.resume_token == joined["resumeToken"]
        host_peer, producer_id, viewer, before = await _room_with_viewer(client, stack, host)

        await drop_socket(server, "h")
        answer = await host.wait_resumed(timeout=5)
        assert [p["id"] for p in answer["transports"][0]["producers"]] == [producer_id]
        assert host.resume_state.resume_token == answer["resumeToken"] != joined["resumeToken"]
        assert await wait_pli(host_peer), "no PLI reached the host after the resume"
        await send_frames(host_peer, 11, 30, keyframe_first=True)
        after = await receive(viewer.peer, 30)
        assert contiguous(after, before[-1] + 1)
        # Requests go over the new socket; notifications still arrive on the same channel.
        assert (await host.get_stats(ROOM, producerId=producer_id))[0]["type"] == "inbound-rtp"

        await drop_socket(server, "h")
        second = await host.wait_resumed(2, timeout=5)
        assert second["resumeToken"] not in (joined["resumeToken"], answer["resumeToken"])
        assert [p["id"] for p in second["transports"][0]["producers"]] == [producer_id]
        _no_cut(viewer)
        assert viewer.consumer["id"] in server.rooms.get(ROOM).consumers  # type: ignore[union-attr]


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_resume_with_ice_restart_after_a_network_change(server: Server,
                                                              client: Any) -> None:
    """The host comes back from another address: resume, restartIce on its send transport,
    nominate the new tuple; the viewer gets the media from the new address, same consumer."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(client())
        joined = await host.join(ROOM, "host", "h")
        host_peer = await open_peer(host, "send")
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                         vp8_producer(mid="0", ssrc=HOST_SSRC))
        viewer = await add_viewer(client, stack, "v", producer_id)
        stack.callback(viewer.peer.close)
        await trio.sleep(0.1)
        await send_frames(host_peer, 1, 5)
        first = await receive(viewer.peer, 5)
        await host.aclose()  # the old network: gone
        await trio.sleep(0.1)

        again = await stack.enter_async_context(client())
        answer = await again.resume(ROOM, "h", joined["resumeToken"])
        transport_id = answer["transports"][0]["id"]
        params = await again.restart_ice(ROOM, transport_id)
        # The same SRTP session from a new UDP socket (a new local address and port).
        old_sock = host_peer.sock
        host_peer.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await host_peer.sock.bind(("127.0.0.1", 0))
        old_sock.close()
        host_peer.ice = params
        response = await host_peer.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
        await send_frames(host_peer, 6, 20, keyframe_first=True)
        after = await receive(viewer.peer, 20)
        assert contiguous(after, first[-1] + 1)
        _no_cut(viewer)


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": 0.5}])
async def test_grace_expiry_without_resume_closes_as_before(server: Server,
                                                            client: Any) -> None:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(client())
        joined = await host.join(ROOM, "host", "h")
        host_peer = await open_peer(host, "send")
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                         vp8_producer(mid="0", ssrc=HOST_SSRC))
        viewer = await add_viewer(client, stack, "v", producer_id)
        stack.callback(viewer.peer.close)
        room = server.rooms.get(ROOM)
        assert room is not None
        await drop_socket(server, "h")
        _, note = await viewer.client.next_notification("roomClosed", timeout=3)
        assert note["reason"] == "host_left"
        await room.finished.wait()
        assert engine_leftovers(server.media.counts()) == {}
        assert room._nursery is not None and not room._nursery.child_tasks
        # Too late: nothing to resume.
        async with client() as late:
            with pytest.raises(RequestFailed) as err:
                await late.resume(ROOM, "h", joined["resumeToken"])
            assert err.value.code == errors.FORBIDDEN


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": 0}])
async def test_no_grace_period_closes_with_the_socket(server: Server, client: Any) -> None:
    async with client() as viewer:
        async with client() as host:
            joined = await host.join(ROOM, "host", "h")
            await viewer.join(ROOM, "viewer", "v")
            send = await host.create_transport(ROOM, "send")
            await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        _, note = await viewer.next_notification("roomClosed", timeout=1)
        assert note["reason"] == "host_left"
        async with client() as late:
            with pytest.raises(RequestFailed) as err:
                await late.resume(ROOM, "h", joined["resumeToken"])
            assert err.value.code == errors.FORBIDDEN
        assert engine_leftovers(server.media.counts()) == {}


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_only_the_same_host_resumes(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer, client() as other_host:
        joined = await host.join(ROOM, "host", "h")
        secret = joined["resumeToken"]
        viewer_joined = await viewer.join(ROOM, "viewer", "v")
        assert "resumeToken" not in viewer_joined  # viewers have nothing to resume
        other = await other_host.join("elsewhere", "host", "h2")
        send = await host.create_transport(ROOM, "send")
        producer_id = await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        await drop_socket(server, "h")
        await trio.sleep(0.05)

        attempts = {
            "wrong secret": (ROOM, "h", secrets.token_urlsafe(32)),
            "secret, another peer": (ROOM, "v", secret),
            "secret, another room": ("elsewhere", "h", secret),
            "another host's secret": (ROOM, "h", other["resumeToken"]),
            "another room's host": ("elsewhere", "h2", secret),
            "no such room": ("nowhere", "h", secret),
        }
        for why, (room_id, peer_id, token) in attempts.items():
            async with client() as c:
                with pytest.raises(RequestFailed) as err:
                    await c.resume(room_id, peer_id, token)
                assert err.value.code == errors.FORBIDDEN, why
        # Malformed: a clear error, no crash.
        async with client() as c:
            for data in ({"roomId": ROOM, "peerId": "h"}, {"roomId": ROOM, "peerId": "h",
                                                           "resumeToken": 7}):
                with pytest.raises(RequestFailed) as err:
                    await c.request("resume", data)
                assert err.value.code == errors.INVALID_FIELD
        # The host itself: once. Its secret is spent after that.
        async with client() as back:
            answer = await back.resume(ROOM, "h", secret)
            assert [p["id"] for p in answer["transports"][0]["producers"]] == [producer_id]
            with pytest.raises(RequestFailed) as err:
                await back.resume(ROOM, "h", answer["resumeToken"])
            assert err.value.code == errors.ALREADY_JOINED  # this connection has its peer
            async with client() as replay:
                with pytest.raises(RequestFailed) as err:
                    await replay.resume(ROOM, "h", secret)
                assert err.value.code == errors.FORBIDDEN
            # A viewer's resume would be a takeover: refused, and the viewer keeps going.
            assert [p["id"] for p in await viewer.get_producers(ROOM)] == [producer_id]


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_two_resumes_with_one_secret_one_wins(server: Server, client: Any) -> None:
    async with client() as host:
        joined = await host.join(ROOM, "host", "h")
        send = await host.create_transport(ROOM, "send")
        await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
    await trio.sleep(0.05)
    results: list[str] = []

    async def attempt(c: SignalingClient) -> None:
        try:
            await c.resume(ROOM, "h", joined["resumeToken"])
            results.append("resumed")
        except RequestFailed as exc:
            results.append(exc.code)

    async with client() as a, client() as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, a)
            nursery.start_soon(attempt, b)
        assert sorted(results) == [errors.FORBIDDEN, "resumed"]


async def test_failed_resumes_count_as_failed_joins(server: Server, client: Any) -> None:
    async with client() as host:
        await host.join(ROOM, "host", "h")
        await host.create_transport(ROOM, "send")
        async with client() as guesser:
            for _ in range(server.config.max_failed_joins):
                with pytest.raises(RequestFailed) as err:
                    await guesser.resume(ROOM, "h", secrets.token_urlsafe(32))
                assert err.value.code == errors.FORBIDDEN
            with trio.fail_after(3):
                await guesser.closed.wait()
            assert guesser.ws.closed is not None and guesser.ws.closed.code == 1008
        # The host was never disturbed.
        assert await host.get_producers(ROOM) == []


SECRET = secrets.token_urlsafe(32)


def _token(room: str, identity: str, role: str) -> str:
    return create_token(SECRET, room=room, identity=identity, role=role, now=time.time(),
                        ttl=600)


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE,
                                               "auth_secret": SECRET}])
async def test_with_tokens_resume_needs_a_valid_token_too(server: Server,
                                                          client: Any) -> None:
    async with client() as host:
        joined = await host.join(ROOM, "host", token=_token(ROOM, "alice", "host"))
        assert joined["peerId"] == "alice"
        send = await host.create_transport(ROOM, "send")
        await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
    await trio.sleep(0.05)
    secret = joined["resumeToken"]
    cases = {
        "no token": (None, errors.UNAUTHORIZED),
        "bad token": ("a.b.c", errors.UNAUTHORIZED),
        "viewer token": (_token(ROOM, "alice", "viewer"), errors.FORBIDDEN),
        "another room": (_token("elsewhere", "alice", "host"), errors.FORBIDDEN),
        "another identity": (_token(ROOM, "mallory", "host"), errors.FORBIDDEN),
    }
    for why, (tok, code) in cases.items():
        async with client() as c:
            with pytest.raises(RequestFailed) as err:
                await c.request("resume", {"roomId": ROOM, "resumeToken": secret,
                                           **({"token": tok} if tok else {})})
            assert err.value.code == code, why
    async with client() as back:
        answer = await back.resume(ROOM, "alice", secret, token=_token(ROOM, "alice", "host"))
        assert answer["peerId"] == "alice" and len(answer["transports"]) == 1


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": GRACE}])
async def test_client_gives_up_when_the_room_is_gone(server: Server, client: Any) -> None:
    """The automatic resume ends cleanly (client closed, resume_error set) when the server
    refuses it; a viewer's client (nothing to resume) just closes."""
    async with connect(_url(server), auto_resume=True) as host, \
            connect(_url(server), auto_resume=True) as viewer:
        await host.join(ROOM, "host", "h")
        send = await host.create_transport(ROOM, "send")
        await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        await viewer.join(ROOM, "viewer", "v")
        assert viewer.resume_state is None
        assert server.rooms is not None
        room = server.rooms.get(ROOM)
        assert room is not None
        await drop_socket(server, "v")
        with trio.fail_after(3):
            await viewer.closed.wait()
        host.resume_state.resume_token = secrets.token_urlsafe(32)  # type: ignore[union-attr]
        await drop_socket(server, "h")
        with pytest.raises(ConnectionLost):
            await host.wait_resumed(timeout=5)
        assert isinstance(host.resume_error, RequestFailed)
        assert host.resume_error.code == errors.FORBIDDEN
        with trio.fail_after(GRACE + 3):
            await room.finished.wait()
        assert engine_leftovers(server.media.counts()) == {}

