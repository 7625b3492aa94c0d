"""End to end over real UDP on loopback: a host made of an independent stack (hand-built STUN,
pyOpenSSL DTLS client, libsrtp) produces through the server to two viewers."""

from __future__ import annotations

from contextlib import AsyncExitStack, suppress
from typing import Any

import pytest
import trio

from pysfu import stun
from pysfu.client import RequestFailed
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.media_room import (  # noqa: F401  (host, media_workers: fixtures)
    CHROME_MID_EXT,
    CHROME_VP8_PT,
    HOST_SSRC,
    ROOM,
    add_viewer,
    host,
    media_workers,
    open_peer,
    rtcp_types,
    send_frames,
    streaming_viewer,
)
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, vp8_payload


async def test_every_packet_reaches_each_viewer(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewers = [await add_viewer(client, stack, f"v{i}", producer_id) for i in range(2)]
        caps = await host_client.router_rtp_capabilities(ROOM)
        router_vp8 = next(c["preferredPayloadType"] for c in caps["codecs"]
                          if c["mimeType"] == "video/VP8")
        await trio.sleep(0.1)
        sent = 50
        await send_frames(host_peer, 1000, sent)
        for viewer in viewers:
            rtp = viewer.consumer["rtpParameters"]
            got = []
            while len(got) < sent:
                packet = await viewer.peer.recv_rtp(timeout=3)
                assert packet is not None, f"{len(got)} of {sent} packets arrived"
                got.append(packet)
            assert {p.ssrc for p in got} == {rtp["encodings"][0]["ssrc"]}
            assert {p.pt for p in got} == {router_vp8}
            seqs = [p.seq for p in got]
            assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(sent)]
            assert [p.ts for p in got] == [90 * (1000 + i) for i in range(sent)]
            mid_id = next(e["id"] for e in rtp["headerExtensions"]
                          if e["uri"] == "urn:ietf:params:rtp-hdrext:sdes:mid")
            assert {p.extensions.get(mid_id) for p in got} == {rtp["mid"].encode()}
        stats = server.media.drops()
        assert stats.get("replay", 0) == 0


async def test_host_pauses_and_resumes_its_producer(server: Server, client: Any,
                                                    host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer, first = await streaming_viewer(client, stack, host_peer, producer_id)
        # Only the owner may pause it.
        with pytest.raises(RequestFailed) as err:
            await viewer.client.request("pauseProducer", {"roomId": ROOM,
                                                          "producerId": producer_id})
        assert err.value.code == "forbidden"

        answer = await host_client.request("pauseProducer", {"roomId": ROOM,
                                                             "producerId": producer_id})
        assert answer == {"producerId": producer_id}
        assert await viewer.client.next_notification("producerPaused", timeout=2) == (
            "producerPaused", {"producerId": producer_id})
        assert server.media.stats(server.rooms.get(ROOM).producers[producer_id].handle)[
            "paused"] is True
        await send_frames(host_peer, 6, 5)
        assert await viewer.peer.recv_rtp(timeout=0.3) is None  # paused: nothing forwarded
        # A viewer arriving now learns it from consume's answer.
        late = await add_viewer(client, stack, "late", producer_id)
        assert late.consumer["producerPaused"] is True

        await host_client.request("resumeProducer", {"roomId": ROOM, "producerId": producer_id})
        assert (await viewer.client.next_notification("producerResumed", timeout=2))[1] == {
            "producerId": producer_id}
        await send_frames(host_peer, 11, 3, keyframe_first=True)
        after = [await viewer.peer.recv_rtp() for _ in range(3)]
        assert all(after)
        assert after[0].payload[1] & 1 == 0  # VP8 P bit clear: a key frame


async def test_pause_resume_asks_key_frame_and_keeps_sequence(server: Server, client: Any,
                                                              host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer, first = await streaming_viewer(client, stack, host_peer, producer_id)
        await viewer.client.request("pauseConsumer", {"roomId": ROOM,
                                                      "consumerId": viewer.consumer["id"]})
        await send_frames(host_peer, 6, 5)
        assert await viewer.peer.recv_rtp(timeout=0.3) is None  # paused: nothing forwarded

        await viewer.client.resume_consumer(ROOM, viewer.consumer["id"])
        # The server asks the host for a key frame (PLI, media SSRC = the host's SSRC).
        rtcp = await host_peer.recv_rtcp(timeout=2)
        assert rtcp is not None
        assert (206, 1, HOST_SSRC) in rtcp_types(rtcp)
        # Delta frames before the key frame are held back; the key frame restarts the stream.
        await send_frames(host_peer, 11, 3, keyframe_first=False)
        await send_frames(host_peer, 14, 3, keyframe_first=True)
        after = [await viewer.peer.recv_rtp() for _ in range(3)]
        assert all(after)
        assert after[0].payload[1] & 1 == 0  # VP8 P bit clear: a key frame
        assert [p.seq for p in after] == [(first[-1].seq + 1 + i) & 0xFFFF for i in range(3)]


async def test_close_producer_and_room_close_free_the_engine(server: Server, client: Any,
                                                             host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        assert server.media.counts()["consumers"] == 1
        await host_client.close_producer(ROOM, producer_id)
        await viewer.client.next_notification("producerClosed")
        await send_frames(host_peer, 1, 3)
        assert await viewer.peer.recv_rtp(timeout=0.3) is None
        assert server.media.counts()["producers"] == 0
        assert server.media.counts()["consumers"] == 0
        room = server.rooms.get(ROOM)
        await host_client.leave(ROOM)
        await viewer.client.next_notification("roomClosed")
        await room.finished.wait()
        assert server.media.counts() == {"transports": 0, "producers": 0, "consumers": 0,
                                         "streams": 0, "tuples": 0,
                                         "tcp_connections": 0}


async def test_replayed_and_foreign_packets_are_dropped(server: Server, client: Any,
                                                        host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        await trio.sleep(0.1)
        sent = await send_frames(host_peer, 1, 3)
        for _ in range(3):
            assert await viewer.peer.recv_rtp() is not None
        before = server.media.drops()
        for packet in sent:  # replays
            await host_peer.send_raw(packet)
        # A fresh packet (new index, so not a replay) with a broken authentication tag.
        fresh = build_rtp(CHROME_VP8_PT, 4, 360, HOST_SSRC, vp8_payload(False),
                          extensions={CHROME_MID_EXT: b"0"})
        tampered = bytearray(host_peer.protect(fresh))
        tampered[-1] ^= 0xFF
        await host_peer.send_raw(bytes(tampered))
        # A stranger on another port sends a valid-looking packet.
        stranger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await stranger.bind(("127.0.0.1", 0))
        await stranger.sendto(sent[0], host_peer.server)
        stranger.close()
        assert await viewer.peer.recv_rtp(timeout=0.3) is None
        after = server.media.drops()
        grew = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert grew == {"srtp_replay": 3, "srtp_auth": 1, "unknown_source": 1}


async def test_wrong_fingerprint_yields_no_keys(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    _, host_peer, producer_id = host
    async with client() as c:
        await c.join(ROOM, "viewer", "liar")
        transport = await c.create_transport(ROOM, "recv")
        peer = WebRtcPeer(transport)
        await peer.bind()
        await c.connect_transport(ROOM, transport["id"],
                                  peer.dtls_parameters(fingerprint=":".join(["AA"] * 32)))
        # The handshake may finish on the client's side; the server checks the client's
        # certificate against the signaled fingerprint and refuses it.
        with suppress(Exception):
            await peer.connect(timeout=3)
        _, note = await c.next_notification("transportClosed", timeout=5)
        assert note["transportId"] == transport["id"]
        assert note["reason"].startswith("dtls")
        # Counted for /metrics as a failed handshake (the host's connected one is there too).
        assert server.ctx.metrics.dtls_handshakes["failed"] == 1
        assert server.ctx.metrics.dtls_handshakes["connected"] == 1
        peer.close()


async def test_bad_stun_integrity_is_refused(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "h")
        transport = await c.create_transport(ROOM, "send")
        peer = WebRtcPeer(transport)
        await peer.bind()
        drops0 = server.media.drops().get("stun_integrity", 0)
        # Checked in the engine, before Python: a wrong password gets silence (no 401 to
        # reflect), a counted drop, and selects nothing.
        response = await peer.ice_check(password="x" * 24, timeout=0.5)
        assert response is None
        assert server.media.drops().get("stun_integrity", 0) == drops0 + 1
        room = server.rooms.get(ROOM)
        assert room.transports[transport["id"]].ice.nominated is None
        # The right password still works.
        response = await peer.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
        peer.close()


async def test_host_reconnect_replaces_media(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        async with client() as host2:
            assert (await host2.join(ROOM, "host", "host"))["reconnected"] is True
            _, note = await viewer.client.next_notification("producerClosed")
            assert note == {"producerId": producer_id}
            counts = server.media.counts()
            assert counts["producers"] == counts["consumers"] == 0
            assert counts["transports"] == 1  # the viewer's recv transport only
            # The reloaded host produces again; the viewer consumes the new stream.
            peer2 = await open_peer(host2, "send")
            new_id = await host2.produce(ROOM, peer2.transport["id"], "video",
                                         vp8_producer(mid="0", ssrc=HOST_SSRC))
            caps = device_caps(await viewer.client.router_rtp_capabilities(ROOM))
            consumer = await viewer.client.consume(ROOM, viewer.peer.transport["id"], new_id,
                                                   caps)
            await viewer.client.resume_consumer(ROOM, consumer["id"])
            await trio.sleep(0.1)
            await send_frames(peer2, 500, 5)
            got = [await viewer.peer.recv_rtp() for _ in range(5)]
            assert all(got)
            assert {p.ssrc for p in got} == {consumer["rtpParameters"]["encodings"][0]["ssrc"]}
            # Packets from the old host socket go nowhere now.
            await send_frames(host_peer, 9000, 2)
            assert await viewer.peer.recv_rtp(timeout=0.3) is None
            peer2.close()


@pytest.mark.parametrize("config_overrides", [{"consent_timeout": 0.6}])
async def test_consent_checks_are_answered_by_the_engine_and_keep_the_transport(
        server: Server, client: Any) -> None:
    """After ICE and DTLS, the peer's consent checks on its selected tuple are answered by the
    engine (a valid Binding success: integrity with the transport's password, the peer's
    mapped address), never reach Python, and keep consent alive for many timeouts; once they
    stop, the transport closes with ``ice_consent_timeout``."""
    async with client() as c:
        await c.join(ROOM, "host", "h")
        peer = await open_peer(c, "send")
        await c.produce(ROOM, peer.transport["id"], "video", vp8_producer(mid="0"))
        transport = server.rooms.get(ROOM).transports[peer.transport["id"]]
        up0 = server.media.stats(transport.handle)["stunReceived"]
        for _ in range(15):  # 3 s: five consent timeouts
            response = await peer.ice_check(timeout=1.0)
            assert response is not None, "consent check unanswered"
            msg = stun.parse(response)
            assert (msg.method, msg.is_request) == (stun.METHOD_BINDING, False)
            assert stun.verify_integrity(msg, peer.ice["password"].encode())
            assert stun.verify_fingerprint(msg)
            assert msg.xor_mapped_address == peer.local_address
            await trio.sleep(0.2)
        stats = server.media.stats(transport.handle)
        assert stats["stunAnswered"] >= 15
        assert stats["stunReceived"] == up0, "Python's ICE saw none of them"
        with trio.move_on_after(0.01):
            _, note = await c.next_notification("transportClosed")
            raise AssertionError(f"closed while checks went on: {note}")
        _, note = await c.next_notification("transportClosed", timeout=5)
        assert note == {"transportId": peer.transport["id"], "reason": "ice_consent_timeout"}
        peer.close()


@pytest.mark.parametrize("config_overrides", [{"consent_timeout": 0.6}])
async def test_silent_peer_loses_its_transport(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "h")
        peer = await open_peer(c, "send")
        await c.produce(ROOM, peer.transport["id"], "video", vp8_producer(mid="0"))
        assert server.media.counts()["transports"] == 1
        # No more STUN consent checks from the peer: the server closes the transport.
        _, note = await c.next_notification("transportClosed", timeout=5)
        assert note == {"transportId": peer.transport["id"], "reason": "ice_consent_timeout"}
        assert server.media.counts() == {"transports": 0, "producers": 0, "consumers": 0,
                                         "streams": 0, "tuples": 0,
                                         "tcp_connections": 0}
        assert server.rooms.get(ROOM).snapshot()["producers"] == 0
        peer.close()
