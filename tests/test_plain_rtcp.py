"""Plain transports with ``rtcpMux: false`` (mediasoup's option): a second UDP port for
RTCP (``rtcpTuple``, the RTP port + 1 where the range allows), the remote RTCP port given by
``connectPlainTransport {rtcpPort}`` or latched (comedia) from the first valid RTCP packet
on that port; our RTCP leaves by it; RTP on it and RTCP on the RTP port from elsewhere than
the remote RTCP address are dropped and counted. With real ffmpeg (VP8 and Opus in, its
sender reports on the RTCP port; a recording out, our sender reports to ffmpeg's RTCP port)
and real sockets (abuse, PLI and receiver reports toward the sender, ports freed).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
import trio

from pysfu.plain import (
    RtpTarget,
    consumer_sdp,
    ffmpeg_record_command,
    ffmpeg_send_command,
    gst_send_command,
    plain_producer_parameters,
    shell,
)
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps
from pysfu.testing.media_room import ROOM, add_viewer, rtcp_types
from pysfu.testing.webrtc_peer import build_pli, build_rtp, parse_rtp, vp8_payload
from tests.test_plain_ffmpeg import free_udp_port, run_ffmpeg, vp8_key_frame_size

FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not FFMPEG,
                                  reason="ffmpeg missing: run scripts/install-ffmpeg.sh")

WIDTH, HEIGHT = 320, 240
VIDEO_PT, VIDEO_SSRC = 101, 0x1234567
AUDIO_PT, AUDIO_SSRC = 100, 0x7654321
SR, RR, PSFB, PLI = 200, 201, 206, 1
# How long the viewers may wait for ffmpeg's packets (s): on a loaded machine its -re pace
# slips far behind (run_ffmpeg's own bound allows for that too).
RECEIVE_BOUND = 60


def _room(server: Server) -> Any:
    assert server.rooms is not None
    room = server.rooms.get(ROOM)
    assert room is not None
    return room


def _state(server: Server, plain: dict[str, Any]) -> dict[str, Any]:
    state = server.ctx.media.stats(_room(server).plain_transports[plain["transportId"]].handle)
    assert state is not None
    return state


async def _record(c: Any, plain: dict[str, Any]) -> dict[str, Any]:
    answer = await c.request("getStats", {"roomId": ROOM, "transportId": plain["transportId"]})
    (record,) = answer["stats"]
    assert isinstance(record, dict)
    return record


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    """Two loopback UDP sockets: a sender's RTP and RTCP."""
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    return a, b


def _port(s: socket.socket) -> int:
    return int(s.getsockname()[1])


def _rtcp_rr(ssrc: int) -> bytes:
    """A plain RTCP RR without report blocks (what a sender's RTCP port may send)."""
    return bytes([0x80, RR, 0, 1]) + ssrc.to_bytes(4, "big")


async def _drain(s: socket.socket, seconds: float) -> list[bytes]:
    """Datagrams that reach ``s`` within ``seconds``."""
    s.setblocking(False)
    got: list[bytes] = []
    with trio.move_on_after(seconds):
        while True:
            await trio.lowlevel.wait_readable(s)
            got.append(s.recv(2048))
    return got


# ---- the helpers' output for the non-mux case -----------------------------------------------


def test_helpers_write_rtcp_port_instead_of_rtcp_mux() -> None:
    consumer = {"kind": "video", "rtpParameters": {
        "codecs": [{"mimeType": "video/VP8", "payloadType": 101, "clockRate": 90000}],
        "encodings": [{"ssrc": 1234}], "rtcp": {"cname": "x"}}}
    split = consumer_sdp([consumer], ip="127.0.0.1", port=5000, rtcp_port=5001)
    assert "m=video 5000 RTP/AVP 101\r\na=rtcp:5001\r\n" in split
    assert "a=rtcp-mux" not in split
    muxed = consumer_sdp([consumer], ip="127.0.0.1", port=5000)
    assert "a=rtcp-mux" in muxed and "a=rtcp:" not in muxed
    per_entry = consumer_sdp([{**consumer, "port": 6000, "rtcpPort": 6003}], ip="::1")
    assert "m=video 6000 RTP/AVP 101\r\na=rtcp:6003\r\n" in per_entry

    argv = ffmpeg_send_command(["-i", "x.mp4"], video=RtpTarget("127.0.0.1", 5000, 101, 7,
                                                                rtcp_port=5001),
                               audio=RtpTarget("::1", 5002, 100, 8))
    urls = [a for a in argv if a.startswith("rtp://")]
    assert urls == ["rtp://127.0.0.1:5000?pkt_size=1200&rtcpport=5001",
                    "rtp://[::1]:5002?pkt_size=1200"]
    # ffmpeg's RTCP: on for the split target, off (skip_rtcp) for the rtcp-mux one only.
    assert argv.count("skip_rtcp") == 1
    assert argv.index("skip_rtcp") > argv.index(urls[0])


def _readme_block(after: str, fence: str) -> str:
    """The first ``fence`` code block of README.md after the line ``after``, its shell
    continuation lines joined."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rest = readme[readme.index(after):]
    start = rest.index(f"```{fence}\n") + len(fence) + 4
    block = rest[start:rest.index("```", start)]
    return " ".join(line.strip() for line in block.replace("\\\n", " ").splitlines())


def test_readme_send_examples_are_what_the_helpers_print() -> None:
    """README's copy-paste command lines are the helpers' output, word for word."""
    target = RtpTarget("127.0.0.1", 41000, 101, 1111)
    printed = shell(ffmpeg_send_command(["-re", "-i", "movie.mp4"], video=target))
    assert " ".join(_readme_block("which prints a command like", "sh").split()) == printed
    split = RtpTarget("127.0.0.1", 41000, 101, 1111, rtcp_port=41001)
    gst = shell(gst_send_command(split, source="videotestsrc is-live=true"))
    assert " ".join(_readme_block("print(shell(gst_send_command(", "sh").split()) == gst
    tail = shell(ffmpeg_send_command(["-re", "-i", "movie.mp4"], video=split)).split(" -ssrc ")[1]
    assert f"# ... -ssrc {tail}" in _readme_block("has a port of its own both ways", "python")


# ---- signaling -----------------------------------------------------------------------------


async def test_rtcp_mux_false_signaling_fields_and_errors(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "host")
        muxed = await c.create_plain_transport(ROOM)
        assert muxed["rtcpMux"] is True and "rtcpTuple" not in muxed
        split = await c.create_plain_transport(ROOM, rtcpMux=False)
        assert split["rtcpMux"] is False
        rtp, rtcp = split["tuple"], split["rtcpTuple"]
        assert set(rtcp) == {"localIp", "localPort", "protocol"}
        assert rtcp["protocol"] == "udp" and rtcp["localIp"] == rtp["localIp"]
        # An even RTP port and RTCP on the next one (the range has free pairs).
        lo, hi = server.ctx.config.plain_ports
        assert rtcp["localPort"] == rtp["localPort"] + 1 and rtp["localPort"] % 2 == 0
        assert lo <= rtp["localPort"] < rtcp["localPort"] <= hi
        assert server.ctx.media.plain_sockets() == 3
        with pytest.raises(Exception, match="invalid_field"):
            await c.create_plain_transport(ROOM, rtcpMux="no")
        tid = split["transportId"]
        # mediasoup's rules: rtcpPort required without rtcp-mux ...
        with pytest.raises(Exception, match="invalid_field.*rtcpPort"):
            await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9)
        for bad in (0, 70000, "9", True):
            with pytest.raises(Exception, match="invalid_field"):
                await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9, rtcpPort=bad)
        # ... and refused with it.
        with pytest.raises(Exception, match="invalid_field.*rtcpPort"):
            await c.connect_plain_transport(ROOM, muxed["transportId"], ip="127.0.0.1", port=9,
                                            rtcpPort=10)
        await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9, rtcpPort=11)
        with pytest.raises(Exception, match="already_connected"):
            await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9, rtcpPort=11)
        state = _state(server, split)
        assert state["rtcpMux"] is False and state["rtcpTuple"] == "127.0.0.1:11"
        assert state["selectedTuple"] == "127.0.0.1:9"
        # Comedia learns both: no addresses at connect.
        comedia = await c.create_plain_transport(ROOM, rtcpMux=False, comedia=True)
        with pytest.raises(Exception, match="invalid_field"):
            await c.connect_plain_transport(ROOM, comedia["transportId"], rtcpPort=11)
        await c.connect_plain_transport(ROOM, comedia["transportId"])
        record = await _record(c, comedia)
        assert record["rtcpMux"] is False
        assert record["rtcpTuple"]["localPort"] == comedia["rtcpTuple"]["localPort"]
        assert record["rtcpTuple"]["remotePort"] is None


async def test_close_frees_both_ports_and_limits_count_transports(server: Server,
                                                                   client: Any) -> None:
    from pysfu.plain import MAX_PLAIN_TRANSPORTS_PER_PEER

    media = server.ctx.media
    async with client() as c:
        await c.join(ROOM, "host", "host")
        plain = await c.create_plain_transport(ROOM, rtcpMux=False, comedia=True)
        ports = (plain["tuple"]["localPort"], plain["rtcpTuple"]["localPort"])
        assert media.plain_sockets() == 2
        await c.close_plain_transport(ROOM, plain["transportId"])
        assert media.plain_sockets() == 0
        with ExitStack() as stack:
            for port in ports:  # both free again
                s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                s.bind(("127.0.0.1", port))
        # A split transport holds two ports but counts once against the transport limits.
        for _ in range(MAX_PLAIN_TRANSPORTS_PER_PEER):
            await c.create_plain_transport(ROOM, rtcpMux=False)
        assert media.plain_sockets() == 2 * MAX_PLAIN_TRANSPORTS_PER_PEER
        with pytest.raises(Exception, match="limit_exceeded"):
            await c.create_plain_transport(ROOM, rtcpMux=False)
        await c.leave(ROOM)
        await trio.sleep(0.1)
        assert media.plain_sockets() == 0
        assert all(v == 0 for v in media.counts().values()), media.counts()


# ---- real sockets: where our RTCP goes, what is dropped ----------------------------------------


async def test_rtcp_toward_the_sender_leaves_by_the_rtcp_port(server: Server,
                                                              client: Any) -> None:
    """A fixed non-mux plain producer: the sender's RTCP socket gets our receiver reports
    and the PLI a key frame request makes, from our RTCP port; its RTP socket gets none."""
    with ExitStack() as sockets:
        rtp_sock, rtcp_sock = (sockets.enter_context(s) for s in _udp_pair())
        async with client() as c:
            await c.join(ROOM, "host", "host")
            plain = await c.create_plain_transport(ROOM, rtcpMux=False)
            await c.connect_plain_transport(ROOM, plain["transportId"], ip="127.0.0.1",
                                            port=_port(rtp_sock), rtcpPort=_port(rtcp_sock))
            producer_id = await c.produce(ROOM, plain["transportId"], "video",
                                          plain_producer_parameters(
                                              "video", payload_type=VIDEO_PT, ssrc=VIDEO_SSRC))
            dest = ("127.0.0.1", plain["tuple"]["localPort"])
            for seq in range(1, 6):
                rtp_sock.sendto(build_rtp(VIDEO_PT, seq, seq * 3000, VIDEO_SSRC,
                                          vp8_payload(seq == 1), marker=True), dest)
            # A recorder-like consumer (plain, no RTCP) asks for a key frame.
            out = await c.create_plain_transport(ROOM)
            await c.connect_plain_transport(ROOM, out["transportId"], ip="127.0.0.1", port=9)
            caps = device_caps(await c.router_rtp_capabilities(ROOM))
            consumer = await c.consume(ROOM, out["transportId"], producer_id, caps)
            await c.resume_consumer(ROOM, consumer["id"])
            await trio.sleep(1.1)  # past the key frame request interval
            await c.request_key_frame(ROOM, consumer["id"])
            rtcp_in = await _drain(rtcp_sock, 2.5)
            rtp_in = await _drain(rtp_sock, 0.1)
        types = [t for packet in rtcp_in for t in rtcp_types(packet)]
        assert (PSFB, PLI, VIDEO_SSRC) in types, types
        assert any(t[0] == RR for t in types), types
        assert rtp_in == []


async def test_abuse_wrong_port_and_wrong_source_dropped_and_counted(server: Server,
                                                                     client: Any) -> None:
    media = server.ctx.media
    with ExitStack() as sockets:
        rtp_sock, rtcp_sock = (sockets.enter_context(s) for s in _udp_pair())
        (attacker, attacker_rtcp) = (sockets.enter_context(s) for s in _udp_pair())
        async with client() as c:
            await c.join(ROOM, "host", "host")
            fixed = await c.create_plain_transport(ROOM, rtcpMux=False)
            comedia = await c.create_plain_transport(ROOM, rtcpMux=False, comedia=True)
            await c.connect_plain_transport(ROOM, fixed["transportId"], ip="127.0.0.1",
                                            port=_port(rtp_sock), rtcpPort=_port(rtcp_sock))
            await c.connect_plain_transport(ROOM, comedia["transportId"])
            for t in (fixed, comedia):
                await c.produce(ROOM, t["transportId"], "video", plain_producer_parameters(
                    "video", payload_type=VIDEO_PT, ssrc=VIDEO_SSRC))
            before = media.drops()
            rtp = build_rtp(VIDEO_PT, 1, 0, VIDEO_SSRC, vp8_payload(True))
            f_rtp = ("127.0.0.1", fixed["tuple"]["localPort"])
            f_rtcp = ("127.0.0.1", fixed["rtcpTuple"]["localPort"])
            # Fixed: RTP to the RTCP port (from anyone, the RTP remote included) and RTCP to
            # the RTP port from the RTP remote: wrong port; the attacker's RTCP to either port
            # and its RTP to the RTP port: wrong source.
            rtp_sock.sendto(rtp, f_rtcp)
            rtcp_sock.sendto(rtp, f_rtcp)
            rtp_sock.sendto(_rtcp_rr(VIDEO_SSRC), f_rtp)
            for dest in (f_rtp, f_rtcp):
                attacker.sendto(rtp, dest)
                attacker_rtcp.sendto(_rtcp_rr(1), dest)
            # RTCP on the RTP port from the remote RTCP address: taken (mediasoup's rule).
            rtcp_sock.sendto(_rtcp_rr(VIDEO_SSRC), f_rtp)
            rtcp_sock.sendto(_rtcp_rr(VIDEO_SSRC), f_rtcp)
            # Comedia: the legit RTCP source latches the RTCP port first; not stolen after.
            c_rtcp = ("127.0.0.1", comedia["rtcpTuple"]["localPort"])
            rtcp_sock.sendto(_rtcp_rr(VIDEO_SSRC), c_rtcp)
            await trio.sleep(0.2)
            for _ in range(3):
                attacker_rtcp.sendto(_rtcp_rr(1), c_rtcp)
            await trio.sleep(0.3)
            after = media.drops()
            assert after["plain_wrong_port"] - before["plain_wrong_port"] == 4
            assert after["plain_wrong_source"] - before["plain_wrong_source"] == 6
            f_state, c_state = _state(server, fixed), _state(server, comedia)
            assert f_state["rtpOnRtcpPortDropped"] == 3
            assert f_state["rtcpOnRtpPortDropped"] == 1
            assert f_state["wrongSourceDropped"] == 3
            assert f_state["rtcpPacketsReceived"] == 2
            assert f_state["rtpPacketsReceived"] == 0
            assert c_state["wrongSourceDropped"] == 3
            assert c_state["rtcpTuple"] == f"127.0.0.1:{_port(rtcp_sock)}"
            assert c_state["selectedTuple"] == ""  # RTCP latches only the RTCP side
            record = await _record(c, fixed)
            assert record["rtpOnRtcpPortDropped"] == 3 and record["rtcpOnRtpPortDropped"] == 1
            assert record["rtcpTuple"]["remotePort"] == _port(rtcp_sock)


async def test_srtp_on_both_ports(server: Server, client: Any) -> None:
    """enableSrtp without rtcp-mux: SRTCP from the remote's RTCP socket is taken on the RTCP
    port (plain RTCP there is refused by authentication), SRTP on the RTP port reaches a
    viewer, and our receiver reports reach the remote's RTCP socket as SRTCP with our key."""
    async with AsyncExitStack() as stack:
        rtp_sock, rtcp_sock = (stack.enter_context(s) for s in _udp_pair())
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        plain = await c.create_plain_transport(ROOM, rtcpMux=False, enableSrtp=True)
        remote_key = os.urandom(30)
        await c.connect_plain_transport(ROOM, plain["transportId"], ip="127.0.0.1",
                                        port=_port(rtp_sock), rtcpPort=_port(rtcp_sock),
                                        srtpParameters={
                                            "cryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                                            "keyBase64": base64.b64encode(remote_key).decode()})
        producer_id = await c.produce(ROOM, plain["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        viewer = await add_viewer(client, stack, "v1", producer_id)
        stack.callback(viewer.peer.close)
        tx = pylibsrtp.Session(pylibsrtp.Policy(
            key=remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=base64.b64decode(plain["srtpParameters"]["keyBase64"]),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        rtp_port = ("127.0.0.1", plain["tuple"]["localPort"])
        rtcp_port = ("127.0.0.1", plain["rtcpTuple"]["localPort"])
        before = server.ctx.media.drops()
        rtcp_sock.sendto(_rtcp_rr(VIDEO_SSRC), rtcp_port)  # not SRTCP: refused
        rtcp_sock.sendto(tx.protect_rtcp(_rtcp_rr(VIDEO_SSRC)), rtcp_port)
        for seq in range(1, 6):
            rtp_sock.sendto(tx.protect(build_rtp(VIDEO_PT, seq, seq * 3000, VIDEO_SSRC,
                                                 vp8_payload(True), marker=True)), rtp_port)
            await trio.sleep(0.01)
        got = [await viewer.peer.recv_rtp() for _ in range(3)]
        assert all(got), got
        ours = await _drain(rtcp_sock, 2.5)
        after = server.ctx.media.drops()
        assert after["srtcp_auth"] + after["srtcp_malformed"] == (
            before["srtcp_auth"] + before["srtcp_malformed"] + 1)
        state = _state(server, plain)
        assert state["rtcpPacketsReceived"] == 2 and state["wrongSourceDropped"] == 0
        types = [t for packet in ours for t in rtcp_types(rx.unprotect_rtcp(packet))]
        assert any(t[0] == RR for t in types), types


async def test_plain_consumer_starts_paused_until_resume_consumer(server: Server,
                                                                  client: Any) -> None:
    """A plain consumer starts paused like any consumer: its receiver gets nothing while the
    source sends, and the stream from the first key frame once ``resumeConsumer`` came."""
    with ExitStack() as sockets:
        src, rx = (sockets.enter_context(s) for s in _udp_pair())
        async with client() as c:
            await c.join(ROOM, "host", "host")
            source = await c.create_plain_transport(ROOM, comedia=True)
            await c.connect_plain_transport(ROOM, source["transportId"])
            producer_id = await c.produce(ROOM, source["transportId"], "video",
                                          plain_producer_parameters(
                                              "video", payload_type=VIDEO_PT, ssrc=VIDEO_SSRC))
            out = await c.create_plain_transport(ROOM)
            await c.connect_plain_transport(ROOM, out["transportId"], ip="127.0.0.1",
                                            port=_port(rx))
            consumer = await c.consume(ROOM, out["transportId"], producer_id,
                                       device_caps(await c.router_rtp_capabilities(ROOM)))
            dest = ("127.0.0.1", source["tuple"]["localPort"])

            async def send(first: int, count: int) -> None:
                for seq in range(first, first + count):
                    src.sendto(build_rtp(VIDEO_PT, seq, seq * 3000, VIDEO_SSRC,
                                         vp8_payload(True), marker=True), dest)
                    await trio.sleep(0.02)

            await send(1, 10)
            before = await _drain(rx, 0.3)
            await c.resume_consumer(ROOM, consumer["id"])
            await send(11, 10)
            after = await _drain(rx, 0.5)
        assert before == []
        ssrc = consumer["rtpParameters"]["encodings"][0]["ssrc"]
        rtp = [parse_rtp(d) for d in after if not 192 <= d[1] <= 223]
        assert len(rtp) >= 5 and {p.ssrc for p in rtp} == {ssrc}, rtp
        assert vp8_key_frame_size(rtp[0].payload) is not None


def _fir(sender_ssrc: int, media_ssrc: int, seq: int) -> bytes:
    """PSFB FIR (RFC 5104): one FCI entry asking ``media_ssrc`` for a key frame."""
    return struct.pack("!BBHIIIB3x", 0x80 | 4, PSFB, 4, sender_ssrc, 0, media_ssrc, seq)


def _key_frame_requests(packets: list[bytes]) -> list[tuple[int, int, int]]:
    """PLI (with its media SSRC) and FIR (with its first FCI SSRC) in compound packets."""
    found = []
    for packet in packets:
        for ptype, fmt, media in rtcp_types(packet):
            if ptype == PSFB and fmt == PLI:
                found.append((ptype, fmt, media))
            elif ptype == PSFB and fmt == 4:
                found.append((ptype, fmt, struct.unpack_from("!I", packet, 12)[0]))
    return found


@pytest.mark.parametrize("rtcp_mux", [True, False], ids=["mux", "split"])
async def test_plain_consumer_receiver_asks_key_frames_with_pli_and_fir(
        server: Server, client: Any, rtcp_mux: bool) -> None:
    """A plain consumer's receiver that has RTCP asks for key frames itself: its PLI, then
    its FIR (to our RTCP port: the RTP port with rtcp-mux) reach the plain producer's
    source as key frame requests for its SSRC; nothing asks the source while it is quiet."""
    with ExitStack() as sockets:
        src = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        src.bind(("127.0.0.1", 0))
        rx_rtp, rx_rtcp = (sockets.enter_context(s) for s in _udp_pair())
        async with client() as c:
            await c.join(ROOM, "host", "host")
            source = await c.create_plain_transport(ROOM)
            await c.connect_plain_transport(ROOM, source["transportId"], ip="127.0.0.1",
                                            port=_port(src))
            producer_id = await c.produce(ROOM, source["transportId"], "video",
                                          plain_producer_parameters(
                                              "video", payload_type=VIDEO_PT, ssrc=VIDEO_SSRC))
            dest = ("127.0.0.1", source["tuple"]["localPort"])
            seqs = iter(range(1, 100))

            def send_key_frame() -> None:  # what the source's encoder does on a request
                seq = next(seqs)
                src.sendto(build_rtp(VIDEO_PT, seq, seq * 3000, VIDEO_SSRC, vp8_payload(True),
                                     marker=True), dest)

            send_key_frame()
            out = await c.create_plain_transport(ROOM, rtcpMux=rtcp_mux)
            connect: dict[str, Any] = {"ip": "127.0.0.1", "port": _port(rx_rtp)}
            if not rtcp_mux:
                connect["rtcpPort"] = _port(rx_rtcp)
            await c.connect_plain_transport(ROOM, out["transportId"], **connect)
            caps = device_caps(await c.router_rtp_capabilities(ROOM))
            consumer = await c.consume(ROOM, out["transportId"], producer_id, caps)
            await c.resume_consumer(ROOM, consumer["id"])
            ssrc = consumer["rtpParameters"]["encodings"][0]["ssrc"]
            # The resume's own key frame request first (answered: the consumer then has its
            # key frame and wants none).
            await _drain(src, 1.2)
            send_key_frame()
            quiet = _key_frame_requests(await _drain(src, 0.3))
            assert quiet == [], quiet
            our_rtcp = ("127.0.0.1", (out["tuple"] if rtcp_mux else out["rtcpTuple"])
                        ["localPort"])
            rx = rx_rtp if rtcp_mux else rx_rtcp
            rx.sendto(build_pli(0xABCD, ssrc), our_rtcp)
            after_pli = _key_frame_requests(await _drain(src, 0.8))
            send_key_frame()
            await trio.sleep(0.1)
            rx.sendto(_fir(0xABCD, ssrc, 1), our_rtcp)
            after_fir = _key_frame_requests(await _drain(src, 0.8))
            records = server.ctx.media.rtp_stats(_room(server).consumers[consumer["id"]].handle)
        assert [media for _, _, media in after_pli] == [VIDEO_SSRC], after_pli
        assert [media for _, _, media in after_fir] == [VIDEO_SSRC], after_fir
        assert records is not None
        (record,) = (r for r in records if r["type"] == "outbound-rtp")
        assert (record["pliCount"], record["firCount"]) == (1, 1), record


# ---- real ffmpeg -----------------------------------------------------------------------------


def _sources(seconds: float) -> list[str]:
    """A VP8-able test pattern (input 0) and a tone (input 1), each ``seconds`` long."""
    return ["-re", "-t", f"{seconds:g}", "-f", "lavfi", "-i",
            f"testsrc=size={WIDTH}x{HEIGHT}:rate=30",
            "-re", "-t", f"{seconds:g}", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000"]


@needs_ffmpeg
async def test_ffmpeg_vp8_and_opus_into_split_plain_transports(server: Server,
                                                               client: Any) -> None:
    """ffmpeg sends VP8 and Opus, each into a comedia plain transport without rtcp-mux, with
    its sender reports to their RTCP ports (``?rtcpport=``); WebRTC viewers get both (the
    video's key frames at the pattern's size); the RTCP ports latched ffmpeg's RTCP source
    and took its reports; nothing came to a wrong port."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        targets: dict[str, RtpTarget] = {}
        plains: dict[str, dict[str, Any]] = {}
        producers: dict[str, str] = {}
        for kind, pt, ssrc in (("video", VIDEO_PT, VIDEO_SSRC), ("audio", AUDIO_PT, AUDIO_SSRC)):
            plain = await c.create_plain_transport(ROOM, comedia=True, rtcpMux=False)
            await c.connect_plain_transport(ROOM, plain["transportId"])
            producers[kind] = await c.produce(ROOM, plain["transportId"], kind,
                                              plain_producer_parameters(kind, payload_type=pt,
                                                                        ssrc=ssrc))
            plains[kind] = plain
            targets[kind] = RtpTarget(plain["tuple"]["localIp"], plain["tuple"]["localPort"],
                                      pt, ssrc, rtcp_port=plain["rtcpTuple"]["localPort"])
        video = await add_viewer(client, stack, "v1", producers["video"])
        stack.callback(video.peer.close)
        audio = await add_viewer(client, stack, "v2", producers["audio"])
        stack.callback(audio.peer.close)
        argv = ffmpeg_send_command(_sources(7), video=targets["video"], audio=targets["audio"],
                                   video_bitrate="300k", audio_stream="1:a:0")
        assert "skip_rtcp" not in argv
        sizes: list[tuple[int, int]] = []
        counts = {"video": 0, "audio": 0}

        async def receive(kind: str, viewer: Any) -> None:
            ssrc = viewer.consumer["rtpParameters"]["encodings"][0]["ssrc"]
            while counts[kind] < 40 or (kind == "video" and not sizes):
                rtp = await viewer.peer.recv_rtp(timeout=20)
                assert rtp is not None, f"the {kind} viewer got nothing from ffmpeg"
                assert rtp.ssrc == ssrc
                counts[kind] += 1
                size = vp8_key_frame_size(rtp.payload) if kind == "video" else None
                if size is not None:
                    sizes.append(size)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ffmpeg, argv, 7)
            with trio.fail_after(RECEIVE_BOUND):
                async with trio.open_nursery() as readers:
                    readers.start_soon(receive, "video", video)
                    readers.start_soon(receive, "audio", audio)
            await trio.sleep(1.5)  # a receiver report's interval
            records = {kind: await _record(c, plain) for kind, plain in plains.items()}
            nursery.cancel_scope.cancel()
        assert counts["video"] >= 40 and counts["audio"] >= 40
        assert sizes and set(sizes) == {(WIDTH, HEIGHT)}, sizes
        for kind, record in records.items():
            rtp_tuple, rtcp_tuple = record["tuple"], record["rtcpTuple"]
            # ffmpeg's RTCP comes from its own RTCP socket (its RTP port + 1).
            assert rtcp_tuple["remoteIp"] == "127.0.0.1", (kind, record)
            assert rtcp_tuple["remotePort"] == rtp_tuple["remotePort"] + 1, (kind, record)
            assert record["rtcpPacketsReceived"] >= 1, (kind, record)
            assert record["rtpPacketsReceived"] >= 40, (kind, record)
            assert record["rtpOnRtcpPortDropped"] == 0 and record["rtcpOnRtpPortDropped"] == 0
            assert record["wrongSourceDropped"] == 0, (kind, record)
            # Our receiver reports went back to ffmpeg's RTCP port.
            assert record["rtcpPacketsSent"] >= 1, (kind, record)


@needs_ffmpeg
async def test_split_plain_consumer_recorded_by_ffmpeg(server: Server, client: Any,
                                                       tmp_path: Path) -> None:
    """A plain consumer on a transport without rtcp-mux, connected to ffmpeg's RTP port and
    its RTCP port (port + 1): ffmpeg records from the SDP (``a=rtcp:``) into a WebM that
    ffprobe reads; our sender reports leave for ffmpeg's RTCP port. (ffmpeg's receiver
    sends a report only once ~280 kB came since its last one: too rare to wait for here.)"""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        source = await c.create_plain_transport(ROOM, comedia=True)
        await c.connect_plain_transport(ROOM, source["transportId"])
        producer_id = await c.produce(ROOM, source["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        out = await c.create_plain_transport(ROOM, rtcpMux=False)
        record_port = free_udp_port()
        await c.connect_plain_transport(ROOM, out["transportId"], ip="127.0.0.1",
                                        port=record_port, rtcpPort=record_port + 1)
        caps = device_caps(await c.router_rtp_capabilities(ROOM))
        consumer = await c.consume(ROOM, out["transportId"], producer_id, caps)
        sdp = tmp_path / "split.sdp"
        sdp.write_text(consumer_sdp([consumer], ip="127.0.0.1", port=record_port,
                                    rtcp_port=record_port + 1))
        assert f"a=rtcp:{record_port + 1}" in sdp.read_text()
        webm = tmp_path / "split.webm"
        record = ffmpeg_record_command(str(sdp), str(webm), seconds=5)
        send = ffmpeg_send_command(_sources(9)[:7], video=RtpTarget(
            source["tuple"]["localIp"], source["tuple"]["localPort"], VIDEO_PT, VIDEO_SSRC),
            video_bitrate="300k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ffmpeg, send, 9)
            nursery.start_soon(run_ffmpeg, record, 9)
            await trio.sleep(1.0)  # ffmpeg's receiver is listening
            await c.resume_consumer(ROOM, consumer["id"])
            await c.request_key_frame(ROOM, consumer["id"])
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json",
             str(webm)], capture_output=True, check=True, timeout=60)
        stream = json.loads(probe.stdout)["streams"][0]
        assert stream["codec_name"] == "vp8"
        assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)
        assert int(stream["nb_read_frames"]) >= 100, stream
        stats = await _record(c, out)
        assert stats["rtcpTuple"]["remotePort"] == record_port + 1
        assert stats["rtcpPacketsSent"] >= 2, stats  # sender reports, once a second
        assert stats["rtpPacketsReceived"] == 0 and stats["wrongSourceDropped"] == 0, stats
