"""Loss repair over real UDP: a host and a viewer (libsrtp test peers) each behind a lossy
relay (pysfu/testing/lossy_relay.py) that drops, delays and reorders packets. The server NACKs what
the host's packets lack and answers the viewer's NACKs from its retransmission buffer (RTX);
key frames are recovered by PLI; sender/receiver reports carry the right SSRCs and give a
plausible round-trip time; getStats reports all of it to the owner only."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio

from pysfu.client import RequestFailed, connect
from pysfu.server import Server
from pysfu.testing.lossy_relay import Impairment
from pysfu.testing.media_endpoints import HOST_SSRC, LossyRoom, lossy_room
from pysfu.testing.media_room import media_workers  # noqa: F401  (fixture: 1 and 2 workers)
from pysfu.testing.webrtc_peer import build_sr, ntp_now

ROOM = "lossy"


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.02)
        return True
    return False


def is_key_frame(payload: bytes) -> bool:
    return len(payload) > 1 and payload[1] & 1 == 0  # VP8 P bit after a 1-byte descriptor


def header(datagram: bytes) -> tuple[int, int]:
    """(SSRC, sequence number) from an SRTP datagram's clear header."""
    seq, ssrc = struct.unpack_from("!H", datagram, 2)[0], struct.unpack_from("!I", datagram, 8)[0]
    return ssrc, seq


async def stats(room: LossyRoom, who: str, **target: str) -> list[dict[str, Any]]:
    client = room.host_client if who == "host" else room.viewer_client
    return await client.get_stats(ROOM, **target)


async def test_stream_is_complete_after_retransmission_at_5_percent_loss(server: Server) -> None:
    def lossy() -> Impairment:
        return Impairment(loss=0.05, reorder=0.05)

    async with lossy_room(url(server), ROOM, host_up=lossy(), host_down=lossy(),
                          viewer_up=lossy(), viewer_down=lossy(), seed=7) as room:
        await room.host.send(5, key_frame_first=True)
        assert await wait_until(lambda: len(room.viewer.received) == 5)
        room.impair(True)
        await room.host.send(400)
        room.impair(False)
        await room.host.send(5)
        total = len(room.host.payloads)
        complete = await wait_until(lambda: len(room.viewer.received) == total
                                    and not room.viewer.missing, timeout=8)
        up, down = room.host_relay.up_stats, room.viewer_relay.down_stats
        assert up.dropped > 5 and down.dropped > 5, (up.dropped, down.dropped)
        assert getattr(room.viewer.peer, "srtp_errors", []) == []  # nothing sent twice
        assert complete, f"{len(room.viewer.missing)} of {total} still missing"
        # Every packet the host sent, in order, with identical payloads.
        assert room.viewer.stream() == room.host.payloads
        # Upstream losses were repaired by the server's NACKs (the host saw them) ...
        (producer,) = await stats(room, "host", producerId=room.producer_id)
        assert producer["nackCount"] > 0 and producer["packetsRepaired"] > 0
        assert producer["packetsLost"] == 0
        assert set(room.host.nacked) & {header(d)[1] for d in up.dropped_datagrams
                                        if header(d)[0] == HOST_SSRC}
        # ... and the viewer's by RTX from the buffer, with its RTX SSRC and PT.
        consumer = (await stats(room, "viewer", consumerId=room.consumer["id"]))[0]
        assert consumer["nackCount"] > 0 and consumer["packetsRetransmitted"] > 0
        assert room.viewer.via_rtx > 0
        rtp = room.consumer["rtpParameters"]
        rtx_pt = next(c["payloadType"] for c in rtp["codecs"]
                      if c["mimeType"].lower() == "video/rtx")
        assert set(room.viewer.rtx_headers) == {(rtp["encodings"][0]["rtx"]["ssrc"], rtx_pt)}
        drops = server.media.drops()
        assert drops["srtp_replay"] == drops["srtp_auth"] == drops["rtp_malformed"] == 0


async def test_viewer_pli_recovers_a_lost_key_frame(server: Server) -> None:
    # A viewer that repairs by key frame only (no NACK): its first key frame is lost.
    async with lossy_room(url(server), ROOM, viewer_down=Impairment(drop=lambda d: True),
                          viewer_nacks=False) as room:
        room.impair(True)
        await room.host.send(5, key_frame_first=True)
        await trio.sleep(0.1)
        assert room.viewer.received == {}
        room.impair(False)
        await room.host.send(5)
        assert await wait_until(lambda: len(room.viewer.received) == 5)
        assert not any(is_key_frame(p) for p in room.viewer.received.values())
        plis_before = room.host.plis
        await room.viewer.send_pli()
        assert await wait_until(lambda: room.host.plis == plis_before + 1)
        await room.host.send(5)  # the host answers the PLI with a key frame
        assert await wait_until(lambda: len(room.viewer.received) == 10)
        assert is_key_frame(room.viewer.stream()[5])
        consumer = (await stats(room, "viewer", consumerId=room.consumer["id"]))[0]
        assert consumer["pliCount"] == 1
        (producer,) = await stats(room, "host", producerId=room.producer_id)
        assert producer["pliCount"] == room.host.plis


async def test_key_frame_lost_upstream_is_requested_again(server: Server) -> None:
    async with lossy_room(url(server), ROOM, host_up=Impairment()) as room:
        await room.host.send(5, key_frame_first=True)
        assert await wait_until(lambda: len(room.viewer.received) == 5)
        consumer_id = room.consumer["id"]
        await room.viewer_client.request("pauseConsumer", {"roomId": ROOM,
                                                           "consumerId": consumer_id})
        plis = room.host.plis
        await room.viewer_client.resume_consumer(ROOM, consumer_id)
        assert await wait_until(lambda: room.host.plis == plis + 1)
        # The key frame the host answers with, and every retransmission of it, are lost.
        lost_seq = room.host.next_seq
        room.host_relay.up.drop = lambda d: header(d) in ((HOST_SSRC, lost_seq),) or (
            header(d)[0] == HOST_SSRC + 1)
        room.impair(True)
        await room.host.send(75, interval=0.02)  # 1.5 s of video
        # The server asked again after its 1 s wait; that key frame got through.
        assert room.host.plis == plis + 2
        assert await wait_until(lambda: len(room.viewer.received) > 5)
        after = room.viewer.stream()[5:]
        assert after and is_key_frame(after[0])
        assert not room.viewer.missing  # no gap in the viewer's numbering
        # The server stops asking for the lost packet within its 2 s window.
        with trio.move_on_after(3):
            while (await stats(room, "host", producerId=room.producer_id))[0][
                    "packetsGivenUp"] == 0:
                await trio.sleep(0.1)
        (producer,) = await stats(room, "host", producerId=room.producer_id)
        assert producer["packetsGivenUp"] == 1
        assert room.host.nacked.count(lost_seq) == producer["nackPacketCount"] > 1


async def test_sender_and_receiver_reports_and_round_trip_time(server: Server) -> None:
    delayed = Impairment(delay=0.02)
    async with lossy_room(url(server), ROOM, viewer_up=delayed,
                          viewer_down=Impairment(delay=0.02)) as room:
        await room.host.send(5, key_frame_first=True)
        host_ntp, host_rtp = ntp_now(), 3000 * room.host.next_seq
        await room.host.peer.send_rtcp(build_sr(HOST_SSRC, host_ntp, host_rtp, 5, 3000))
        with trio.move_on_after(6):
            while len(room.viewer.srs) < 2 or not any(
                    b["lsr"] for i in room.host.rtcp if i["pt"] == 201 for b in i["blocks"]):
                await room.host.send(5, interval=0.04)
        rtp = room.consumer["rtpParameters"]
        ssrc = rtp["encodings"][0]["ssrc"]
        assert len(room.viewer.srs) >= 2
        assert {sr["ssrc"] for sr in room.viewer.srs} == {ssrc}
        last = room.viewer.srs[-1]
        assert 5 <= last["packets"] <= len(room.host.payloads)
        # The host's NTP/RTP mapping is carried over: RTP time advances with NTP time.
        elapsed = ((last["ntp"] - host_ntp) & (2**64 - 1)) / 2**32
        assert 0 < elapsed < 10
        assert abs(((last["rtp_ts"] - host_rtp) & 0xFFFFFFFF) - elapsed * 90000) < 900
        cnames = {i.get("cname") for i in room.viewer.rtcp if i["pt"] == 202}
        assert cnames == {rtp["rtcp"]["cname"]}
        # Receiver reports to the host: its media SSRC, echoing its SR.
        blocks = [b for i in room.host.rtcp if i["pt"] == 201 for b in i["blocks"]]
        assert blocks and {b["ssrc"] for b in blocks} == {HOST_SSRC}
        assert (host_ntp >> 16) & 0xFFFFFFFF in {b["lsr"] for b in blocks}
        assert all(b["fraction_lost"] == 0 for b in blocks)
        # The viewer answered each SR: 2 × 20 ms of relay delay (its answer to the last SR
        # may still be on the delayed relay: wait for it, bounded).
        for _ in range(50):
            consumer = (await stats(room, "viewer", consumerId=room.consumer["id"]))[0]
            if consumer["receiverReports"] >= 2:
                break
            await trio.sleep(0.02)
        assert 35 <= consumer["roundTripTime"] <= 300, consumer["roundTripTime"]
        assert consumer["senderReports"] >= 2 and consumer["receiverReports"] >= 2


async def test_get_stats_over_signaling_for_owners_only(server: Server) -> None:
    async with lossy_room(url(server), ROOM) as room:
        await room.host.send(10, key_frame_first=True)
        assert await wait_until(lambda: len(room.viewer.received) == 10)
        host_transport = room.host.peer.transport["id"]
        viewer_transport = room.viewer.peer.transport["id"]
        (t,) = await stats(room, "host", transportId=host_transport)
        assert t["type"] == "webrtc-transport" and t["transportId"] == host_transport
        assert t["bytesReceived"] > 0 and t["iceState"] == "completed"
        assert t["dtlsState"] == "connected"
        # The engine's sending tuple (it alone keeps the tuples).
        selected = t["iceSelectedTuple"]
        assert selected["remoteIp"] == "127.0.0.1" and selected["protocol"] == "udp"
        assert isinstance(selected["remotePort"], int) and selected["remotePort"] > 0
        (p,) = await stats(room, "host", producerId=room.producer_id)
        assert p["type"] == "inbound-rtp" and p["ssrc"] == HOST_SSRC
        assert p["packetCount"] == 10 and p["byteCount"] > 6000
        assert p["mimeType"] == "video/VP8" and p["kind"] == "video"
        for key in ("packetsLost", "fractionLost", "jitter", "nackCount", "pliCount",
                    "firCount", "bitrate", "layer", "packetsRepaired"):
            assert key in p
        c, inbound = await stats(room, "viewer", consumerId=room.consumer["id"])
        assert c["type"] == "outbound-rtp" and inbound["type"] == "inbound-rtp"
        assert c["ssrc"] == room.consumer["rtpParameters"]["encodings"][0]["ssrc"]
        assert c["packetCount"] == 10 and c["layer"] == 0
        (vt,) = await stats(room, "viewer", transportId=viewer_transport)
        assert vt["bytesSent"] > 0
        denied = [("viewer", {"producerId": room.producer_id}),
                  ("viewer", {"transportId": host_transport}),
                  ("host", {"consumerId": room.consumer["id"]}),
                  ("host", {"transportId": viewer_transport})]
        for who, target in denied:
            with pytest.raises(RequestFailed) as err:
                await stats(room, who, **target)
            assert err.value.code == "forbidden", (who, target)
        with pytest.raises(RequestFailed) as err:
            await stats(room, "viewer", consumerId="nope")
        assert err.value.code == "consumer_not_found"
        with pytest.raises(RequestFailed) as err:
            await stats(room, "host", producerId=room.producer_id, transportId=host_transport)
        assert err.value.code == "invalid_field"
        with pytest.raises(RequestFailed) as err:
            await room.host_client.request("getStats", {"roomId": ROOM, "producerId": 7})
        assert err.value.code == "invalid_field"
        async with connect(url(server)) as stranger:
            with pytest.raises(RequestFailed) as err:
                await stranger.get_stats(ROOM, producerId=room.producer_id)
            assert err.value.code == "not_joined"
