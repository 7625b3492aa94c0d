"""ICE over TCP (RFC 6544 passive candidates, RFC 4571 framing) over real TCP connections on
loopback, with real DTLS and SRTP: the server's TCP candidate on the media port number, a
viewer that receives every packet over TCP, RTCP both ways over TCP (reports, NACK and its
retransmission, PLI), a stalled TCP reader that holds up no one, connection limits, the
no-STUN deadline, half-open connections, garbage framing, and engine counts back to zero."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio

from pysfu import _native
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.live_stream import live_stream
from pysfu.testing.media_room import HOST_SSRC, send_frames
from pysfu.testing.webrtc_peer import (
    WebRtcPeer,
    build_nack,
    build_pli,
    connected_peer,
    parse_rtcp,
    rtx_original,
    stun_binding_request,
)
from pysfu.transport import ice_candidates

MAX_TCP_UNPROVEN_PER_IP = _native.MAX_TCP_UNPROVEN_PER_IP
TCP_STUN_DEADLINE = _native.TCP_STUN_DEADLINE
MAX_TCP_FRAME = 4096  # native/src/framing.rs MAX_FRAME (README: RFC 4571 frames up to 4096 B)


def _drops(server: Server) -> dict[str, int]:
    return server.media.drops()


async def _wait_for(cond: Any, timeout: float = 5.0, what: str = "") -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


def test_candidates_follow_the_settings() -> None:
    both = ice_candidates("10.0.0.1", 40000, udp=True, tcp=True, prefer_udp=True)
    assert [(c["protocol"], c.get("tcpType")) for c in both] == [("udp", None), ("tcp", "passive")]
    assert all(c["port"] == 40000 and c["type"] == "host" for c in both)
    # mediasoup's computation: 2^24 * 64 + 2^8 * local preference + (256 - 1); UDP first
    # (10000, +1000 with preferUdp), TCP next (100 less).
    assert both[0]["priority"] == (64 << 24) + (11000 << 8) + 255
    assert both[1]["priority"] == (64 << 24) + (9900 << 8) + 255
    assert both[1]["priority"] < both[0]["priority"]
    no_pref = ice_candidates("10.0.0.1", 40000, udp=True, tcp=True, prefer_udp=False)
    assert no_pref[0]["priority"] == (64 << 24) + (10000 << 8) + 255
    tcp_only = ice_candidates("10.0.0.1", 40000, udp=False, tcp=True, prefer_udp=True)
    assert [c["protocol"] for c in tcp_only] == ["tcp"]
    assert tcp_only[0]["priority"] == (64 << 24) + (10000 << 8) + 255
    udp_only = ice_candidates("10.0.0.1", 40000, udp=True, tcp=False, prefer_udp=True)
    assert [c["protocol"] for c in udp_only] == ["udp"]


def test_engine_listens_on_tcp_at_the_udp_port_number() -> None:
    with _native.Engine("127.0.0.1", 0) as engine:
        with socket.create_connection(("127.0.0.1", engine.port), timeout=2):
            pass
    with _native.Engine("127.0.0.1", 0, True, False) as engine:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", engine.port), timeout=2).close()
    with pytest.raises(ValueError, match="UDP or TCP"):
        _native.Engine("127.0.0.1", 0, False, False)


async def test_transport_offers_a_passive_tcp_candidate(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join("cands", "host", "h")
        transport = await c.create_transport("cands", "send")
    cands = transport["iceCandidates"]
    assert [(c["protocol"], c["port"]) for c in cands] == [
        ("udp", server.media.port), ("tcp", server.media.port)]
    assert cands[1]["tcpType"] == "passive"


# With several I/O workers a transport's SRTP is applied by its owner worker, which then
# writes to the TCP connection: the same results.
TWO_WORKERS = pytest.mark.parametrize("config_overrides", [{"workers": 1}, {"workers": 2}],
                                      ids=["1worker", "2workers"])


@TWO_WORKERS
async def test_viewer_gets_every_packet_over_tcp(server: Server) -> None:
    async with live_stream(server, viewer_protocol="tcp") as live:
        await trio.sleep(1.5)
        assert server.media.counts()["tcp_connections"] == 1
    summary = live.assert_intact()
    assert summary["received"] >= 100
    # The viewer's transport sent media on its TCP tuple; the connection closed with the
    # room: nothing left in the engine.
    await _wait_for(lambda: server.media.counts()["tcp_connections"] == 0)
    await _wait_for(lambda: server.media.counts()["transports"] == 0)
    assert server.media.counts()["tuples"] == 0
    assert _drops(server)["tcp_queue_full"] == 0
    assert server.media.totals()["tcpConnectionsAccepted"] == 1


@pytest.mark.parametrize("config_overrides", [{"enable_udp": False}])
async def test_tcp_only_server(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join("tcponly", "host", "h")
        transport = await c.create_transport("tcponly", "send")
    assert [c["protocol"] for c in transport["iceCandidates"]] == ["tcp"]
    async with live_stream(server, viewer_protocol="tcp", host_protocol="tcp") as live:
        await trio.sleep(1.0)
    live.assert_intact()


async def test_stalled_tcp_reader_does_not_delay_a_udp_viewer(server: Server, client: Any) -> None:
    # A UDP viewer gets a fast stream of big packets; a TCP viewer of the same producer in the
    # same room stops reading once connected.
    async with live_stream(server, interval=0.002, payload_size=1000,
                           key_frame_every=50) as live:
        async with client() as c:
            await c.join(live.room, "viewer", "stalled")
            transport = await c.create_transport(live.room, "recv")
            peer = WebRtcPeer(transport, protocol="tcp")
            # A small receive buffer: the stall reaches the server at once.
            await peer.bind(recv_buffer=4096)
            await c.connect_transport(live.room, transport["id"], peer.dtls_parameters())
            await peer.connect()
            caps = device_caps(await c.router_rtp_capabilities(live.room))
            consumer = await c.consume(live.room, transport["id"], live.producer_id, caps)
            await c.resume_consumer(live.room, consumer["id"])
            # Never read again: the server's queue for it fills, frames are dropped and
            # counted, and the connection is closed after the stall deadline.
            await _wait_for(lambda: _drops(server)["tcp_queue_full"] > 0, timeout=10)
            await _wait_for(lambda: _drops(server)["tcp_closed_stalled"] == 1, timeout=10)
            await _wait_for(lambda: server.media.counts()["tcp_connections"] == 0)
            # Its tuple is forgotten: the host's and the UDP viewer's remain.
            assert server.media.counts()["tuples"] == 2
            peer.close()
    summary = live.assert_intact(min_packets=500)
    # The UDP viewer was not slowed down meanwhile.
    assert summary["p99_ms"] < 100, summary


async def test_a_connection_without_valid_stun_is_closed(server: Server, client: Any) -> None:
    port = server.media.port
    before = _drops(server)
    with trio.fail_after(TCP_STUN_DEADLINE + 5):
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        # A STUN request with credentials no transport has is no proof either.
        wrong = await trio.open_tcp_stream("127.0.0.1", port)
        request = stun_binding_request("nobody:x", "secret")
        await wrong.send_all(struct.pack("!H", len(request)) + request)
        await _wait_for(lambda: server.media.counts()["tcp_connections"] == 2)
        for stream in (idle, wrong):
            assert await stream.receive_some(1) == b""  # closed by the server
    assert _drops(server)["tcp_closed_no_stun"] == before["tcp_closed_no_stun"] + 2
    assert _drops(server)["stun_unknown"] >= before["stun_unknown"] + 1
    assert server.media.counts()["tcp_connections"] == 0


async def test_a_valid_stun_request_keeps_the_connection(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join("keep", "host", "h")
        transport = await c.create_transport("keep", "send")
        peer = WebRtcPeer(transport, protocol="tcp")
        await peer.bind()
        response = await peer.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
        await trio.sleep(TCP_STUN_DEADLINE + 0.5)
        assert server.media.counts()["tcp_connections"] == 1
        response = await peer.ice_check()
        assert response is not None
        peer.close()
    await _wait_for(lambda: server.media.counts()["tcp_connections"] == 0)
    assert server.media.counts()["tuples"] == 0


async def test_garbage_framing_and_oversize_prefix_close_the_connection(server: Server) -> None:
    port = server.media.port
    before = _drops(server)
    async with live_stream(server) as live:
        for garbage in (b"\xff\xff" + b"x" * 100, b"\x00\x00", b"GET / HTTP/1.1\r\n\r\n",
                        struct.pack("!H", MAX_TCP_FRAME + 1) + b"z" * 100):
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(garbage)
                try:
                    assert await stream.receive_some(1) == b""
                except trio.BrokenResourceError:
                    pass  # reset: closed as well
                await stream.aclose()
    live.assert_intact()  # the other peers did not notice
    # "GE" = 0x4745 > the frame limit; 0xffff and one byte over it too; a zero length is
    # refused.
    assert _drops(server)["tcp_closed_framing"] == before["tcp_closed_framing"] + 4
    await _wait_for(lambda: server.media.counts()["tcp_connections"] == 0)


async def test_a_thousand_idle_connections_from_one_address(server: Server) -> None:
    """Each is refused (over the unproven-per-IP limit) or closed at the no-STUN deadline,
    and counted; a live stream in another room runs intact meanwhile."""
    port = server.media.port
    before = _drops(server)
    socks = []
    try:
        async with live_stream(server) as live:
            # In batches of 100 (the listen backlog stays short: no SYN retransmits).
            for batch in range(10):
                for _ in range(100):
                    s = socket.socket()
                    s.setblocking(False)
                    try:
                        s.connect(("127.0.0.1", port))
                    except BlockingIOError:
                        pass
                    socks.append(s)
                refused = 100 * (batch + 1) - MAX_TCP_UNPROVEN_PER_IP
                await _wait_for(lambda refused=refused: _drops(server)["tcp_refused_unproven_limit"]
                                >= before["tcp_refused_unproven_limit"] + refused, timeout=15)
            assert server.media.counts()["tcp_connections"] == MAX_TCP_UNPROVEN_PER_IP
            await _wait_for(lambda: server.media.counts()["tcp_connections"] == 0,
                            timeout=TCP_STUN_DEADLINE + 2)
        live.assert_intact()
        assert _drops(server)["tcp_closed_no_stun"] == (before["tcp_closed_no_stun"]
                                                         + MAX_TCP_UNPROVEN_PER_IP)
    finally:
        for s in socks:
            s.close()


@TWO_WORKERS
async def test_rtcp_both_ways_over_tcp(server: Server, client: Any) -> None:
    """Host and viewer on ICE-TCP only: the server's reports reach both over their
    connections; the viewer's NACK (SRTCP over TCP) is answered with the retransmission (RTX)
    over TCP, its PLI reaches the host over the host's connection, and the server counts both:
    RTCP over a connection works as over UDP."""
    room = "rtcptcp"
    async with client() as hc, client() as vc:
        await hc.join(room, "host", "h")
        host = await connected_peer(hc, room, "send", protocol="tcp")
        producer_id = await hc.produce(room, host.transport["id"], "video",
                                       vp8_producer(mid="0", ssrc=HOST_SSRC))
        await vc.join(room, "viewer", "v")
        viewer = await connected_peer(vc, room, "recv", protocol="tcp")
        try:
            caps = device_caps(await vc.router_rtp_capabilities(room))
            consumer = await vc.consume(room, viewer.transport["id"], producer_id, caps)
            await vc.resume_consumer(room, consumer["id"])
            assert server.media.counts()["tcp_connections"] == 2
            encoding = consumer["rtpParameters"]["encodings"][0]
            ssrc, rtx_ssrc = encoding["ssrc"], encoding["rtx"]["ssrc"]
            await trio.sleep(0.1)
            await send_frames(host, 1, 10)
            got = [await viewer.recv_rtp(timeout=3) for _ in range(10)]
            seqs = [p.seq for p in got if p is not None]
            assert len(seqs) == 10, got

            viewer_rtcp: list[dict[str, Any]] = []
            # NACK two of them: both come back as RTX on the viewer's connection.
            await viewer.send_rtcp(build_nack(0x5EE, ssrc, seqs[3:5]))
            resent: list[int] = []
            with trio.fail_after(3):
                while len(resent) < 2:
                    packet = await viewer.recv_packet(timeout=3)
                    assert packet is not None, resent
                    kind, value = packet
                    if kind == "rtp" and value.ssrc == rtx_ssrc:
                        resent.append(rtx_original(value)[0])
                    elif kind == "rtcp":
                        viewer_rtcp += parse_rtcp(value)
            assert resent == seqs[3:5]

            # The host's start-up key frame requests are behind us (at most one a second):
            # read them off, then the viewer's PLI reaches the host over its connection.
            await trio.sleep(1.2)
            host_rtcp: list[dict[str, Any]] = []
            while (rtcp := await host.recv_rtcp(timeout=0.3)) is not None:
                host_rtcp += parse_rtcp(rtcp)
            await viewer.send_rtcp(build_pli(0x5EE, ssrc))
            pli = False
            with trio.fail_after(3):
                while not pli:
                    rtcp = await host.recv_rtcp(timeout=3)
                    assert rtcp is not None, "no PLI reached the host over TCP"
                    items = parse_rtcp(rtcp)
                    host_rtcp += items
                    pli = any(i["pt"] == 206 and i["fmt"] == 1 and i["media_ssrc"] == HOST_SSRC
                              for i in items)
            # Reports went both ways over the connections: our receiver report about the
            # host's stream to the host, our sender report of the consumer to the viewer.
            assert any(i["pt"] == 201 and any(b["ssrc"] == HOST_SSRC for b in i["blocks"])
                       for i in host_rtcp), host_rtcp
            with trio.fail_after(3):
                while not any(i["pt"] == 200 and i["ssrc"] == ssrc for i in viewer_rtcp):
                    rtcp = await viewer.recv_rtcp(timeout=3)  # (what recv_rtp kept first)
                    assert rtcp is not None, viewer_rtcp
                    viewer_rtcp += parse_rtcp(rtcp)
            # The server counted what the viewer sent over TCP.
            [stats] = [s for s in await vc.get_stats(room, consumerId=consumer["id"])
                       if s["type"] == "outbound-rtp"]
            assert stats["nackCount"] == 1 and stats["pliCount"] == 1, stats
            assert stats["packetsRetransmitted"] == 2, stats
            # getStats says which protocol carries the media (mediasoup's iceSelectedTuple).
            for c, t in ((vc, viewer.transport["id"]), (hc, host.transport["id"])):
                [record] = await c.get_stats(room, transportId=t)
                assert record["iceSelectedTuple"]["protocol"] == "tcp", record
            assert server.media.counts()["tcp_connections"] == 2
        finally:
            host.close()
            viewer.close()


# A proven connection's idle timeout is the consent timeout: shortened here (the live stream
# keeps its consent every 2 s) so the test waits 6 s for it, not TCP_IDLE_TIMEOUT's 30.
IDLE_TIMEOUT = 6.0


@pytest.mark.parametrize("config_overrides", [{"consent_timeout": IDLE_TIMEOUT}])
async def test_half_open_connections_are_closed_and_counted(server: Server,
                                                            client: Any) -> None:
    """A connection that stops mid-frame, one that half-closes (its FIN after a partial frame)
    and a proven connection whose peer vanished without a FIN (no more consent checks, reads
    nothing): each is closed by its deadline (the proven one's: the consent timeout) and
    counted, while a live stream in another room runs intact."""
    port = server.media.port
    before = _drops(server)
    async with live_stream(server) as live, client() as c:
        await c.join("halfopen", "host", "h")
        transport = await c.create_transport("halfopen", "send")
        proven = WebRtcPeer(transport, protocol="tcp")
        await proven.bind()
        response = await proven.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
        proven_at = trio.current_time()
        # A length prefix of 100 and 10 bytes of its frame, then silence.
        partial = await trio.open_tcp_stream("127.0.0.1", port)
        await partial.send_all(struct.pack("!H", 100) + b"x" * 10)
        # The same, then its write side shut (FIN): nothing more can come.
        fin = socket.create_connection(("127.0.0.1", port))
        fin.sendall(struct.pack("!H", 100) + b"y" * 10)
        fin.shutdown(socket.SHUT_WR)
        await _wait_for(lambda: _drops(server)["tcp_closed_by_peer"]
                        == before["tcp_closed_by_peer"] + 1, timeout=3)
        fin.settimeout(3)
        assert fin.recv(1) == b""  # the server closed its side too
        fin.close()
        with trio.fail_after(TCP_STUN_DEADLINE + 3):
            assert await partial.receive_some(1) == b""
        assert _drops(server)["tcp_closed_no_stun"] == before["tcp_closed_no_stun"] + 1
        await partial.aclose()
        assert server.media.counts()["tcp_connections"] == 1  # the proven one stays...
        # ... until the consent timeout passes without a valid STUN request.
        await _wait_for(lambda: _drops(server)["tcp_closed_idle"]
                        == before["tcp_closed_idle"] + 1, timeout=IDLE_TIMEOUT + 5)
        assert trio.current_time() - proven_at >= IDLE_TIMEOUT - 0.5
        assert server.media.counts()["tcp_connections"] == 0
        proven.close()
    live.assert_intact()
    assert _drops(server)["tcp_closed_framing"] == before["tcp_closed_framing"]
