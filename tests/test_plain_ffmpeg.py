"""Plain transports with real ffmpeg (scripts/install-ffmpeg.sh, run by ``make test``):

- RTP in: ffmpeg encodes a VP8 test pattern and sends it into a comedia plain transport
  (``pysfu.plain.ffmpeg_send_command``); an independent WebRTC test peer (real ICE, DTLS,
  SRTP) consumes it and gets ffmpeg's key frames at the pattern's size.
- RTP out: a plain consumer connected to ffmpeg, which records from the SDP file
  ``pysfu.plain.consumer_sdp`` writes into a WebM; ffprobe reads frames of the host's size.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
from contextlib import AsyncExitStack
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
    plain_producer_parameters,
)
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps
from pysfu.testing.media_room import ROOM, add_viewer
from pysfu.testing.media_room import host as host  # noqa: F401  (fixture)
from pysfu.testing.webrtc_peer import build_rtp, vp8_payload

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg missing: run scripts/install-ffmpeg.sh")

WIDTH, HEIGHT = 320, 240
VIDEO_PT, VIDEO_SSRC = 101, 0x1234567


def vp8_key_frame_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 key frame's first packet (RFC 7741 descriptor + RFC 6386
    frame header), None for anything else."""
    if not payload:
        return None
    offset = 1
    if payload[0] & 0x80:  # X: extension byte(s)
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:
            offset += 1
        if ext & 0x30:
            offset += 1
    if not payload[0] & 0x10:  # S: start of a partition
        return None
    frame = payload[offset:]
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


def pattern(seconds: float) -> list[str]:
    return ["-re", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate=30",
            "-t", f"{seconds:g}"]


# Extra time an ffmpeg run may take beyond its content's length (s): its -re pace slips far
# behind on a loaded machine (3 s of VP8 took 15 s with the load average at 12 on 2 cores).
FFMPEG_SLACK = 90


async def run_ffmpeg(argv: list[str], seconds: float) -> None:
    """Run ffmpeg (bounded); its error output in the assertion if it fails."""
    with trio.fail_after(seconds + FFMPEG_SLACK):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                        check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]


def free_udp_port() -> int:
    """A port P where ffmpeg can listen: P and P + 1 (its RTCP port) are both free."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no pair of free UDP ports")


async def test_ffmpeg_into_plain_transport_reaches_a_webrtc_viewer(server: Server,
                                                                   client: Any) -> None:
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        plain = await c.create_plain_transport(ROOM, comedia=True)
        assert plain["tuple"]["protocol"] == "udp" and plain["rtcpMux"] is True
        port = plain["tuple"]["localPort"]
        lo, hi = server.ctx.config.plain_ports
        assert lo <= port <= hi
        await c.connect_plain_transport(ROOM, plain["transportId"])
        producer_id = await c.produce(ROOM, plain["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        viewer = await add_viewer(client, stack, "v1", producer_id)
        stack.callback(viewer.peer.close)
        argv = ffmpeg_send_command(pattern(6), video=RtpTarget(
            plain["tuple"]["localIp"], port, VIDEO_PT, VIDEO_SSRC), video_bitrate="300k")
        sizes: list[tuple[int, int]] = []
        packets = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ffmpeg, argv, 6)
            # Bounded as the other plain-transport tests: ffmpeg's start and -re pace slip on a
            # loaded machine (a CI run once saw no packet in the first 6 s). On a gap, what the
            # plain transport got says which side stalled.
            with trio.fail_after(6 + FFMPEG_SLACK):
                while packets < 40 or not sizes:
                    rtp = await viewer.peer.recv_rtp(timeout=20)
                    assert rtp is not None, ("the viewer got nothing from ffmpeg",
                                             server.ctx.media.stats(_handle(server, plain)))
                    assert rtp.ssrc == viewer.consumer["rtpParameters"]["encodings"][0]["ssrc"]
                    packets += 1
                    size = vp8_key_frame_size(rtp.payload)
                    if size is not None:
                        sizes.append(size)
        assert packets >= 40
        # ffmpeg's own key frame, decrypted by the viewer: the test pattern's size.
        assert sizes and set(sizes) == {(WIDTH, HEIGHT)}, sizes
        stats = server.ctx.media.stats(_handle(server, plain))
        assert stats is not None and stats["comedia"] is True
        # getStats of the plain transport (mediasoup's plain-rtp-transport record).
        answer = await c.request("getStats", {"roomId": ROOM, "transportId": plain["transportId"]})
        (record,) = answer["stats"]
        assert record["type"] == "plain-rtp-transport" and record["comedia"] is True
        assert record["tuple"]["localPort"] == port and record["tuple"]["remoteIp"] == "127.0.0.1"
        assert record["rtpPacketsReceived"] >= 40 and record["wrongSourceDropped"] == 0


def _handle(server: Server, plain: dict[str, Any]) -> int:
    assert server.rooms is not None
    room = server.rooms.get(ROOM)
    assert room is not None
    return room.plain_transports[plain["transportId"]].handle


@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
async def test_plain_consumer_recorded_by_ffmpeg(server: Server, client: Any,
                                                 tmp_path: Path, srtp: bool) -> None:
    """A host sends VP8 (ffmpeg into a plain transport); a second plain transport consumes
    it and ffmpeg records from the SDP file into a WebM that ffprobe reads. With SRTP the
    SDP carries our key (a=crypto) and ffmpeg decrypts."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        source = await c.create_plain_transport(ROOM, comedia=True)
        await c.connect_plain_transport(ROOM, source["transportId"])
        producer_id = await c.produce(ROOM, source["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        options: dict[str, Any] = {"enableSrtp": True} if srtp else {}
        out = await c.create_plain_transport(ROOM, **options)
        record_port = free_udp_port()
        connect: dict[str, Any] = {"ip": "127.0.0.1", "port": record_port}
        if srtp:  # ffmpeg sends nothing back; its key is required all the same
            connect["srtpParameters"] = {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                                         "keyBase64": base64.b64encode(os.urandom(30)).decode()}
        await c.connect_plain_transport(ROOM, out["transportId"], **connect)
        caps = device_caps(await c.router_rtp_capabilities(ROOM))
        consumer = await c.consume(ROOM, out["transportId"], producer_id, caps)
        sdp = tmp_path / "recording.sdp"
        sdp.write_text(consumer_sdp([consumer], ip="127.0.0.1", port=record_port,
                                    srtp_parameters=out.get("srtpParameters")))
        webm = tmp_path / "recording.webm"
        record = ffmpeg_record_command(str(sdp), str(webm), seconds=5)
        send = ffmpeg_send_command(pattern(9), video=RtpTarget(
            source["tuple"]["localIp"], source["tuple"]["localPort"], VIDEO_PT, VIDEO_SSRC),
            video_bitrate="300k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ffmpeg, send, 9)
            nursery.start_soon(run_ffmpeg, record, 9)
            await trio.sleep(1.0)  # ffmpeg's receiver is listening
            await c.resume_consumer(ROOM, consumer["id"])
            # ffmpeg sends no PLI: ask for the key frame it needs to start.
            await c.request_key_frame(ROOM, consumer["id"])
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json",
             str(webm)], capture_output=True, check=True, timeout=60)
        stream = json.loads(probe.stdout)["streams"][0]
        assert stream["codec_name"] == "vp8"
        assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)
        assert int(stream["nb_read_frames"]) >= 100, stream


async def test_abuse_wrong_source_dropped_and_comedia_not_stolen(server: Server,
                                                                 client: Any) -> None:
    """Packets to a plain port from another source than the connected one are dropped and
    counted; a comedia transport latches its first valid source and keeps it."""
    media = server.ctx.media
    async with client() as c:
        await c.join(ROOM, "host", "host")
        fixed = await c.create_plain_transport(ROOM)
        comedia = await c.create_plain_transport(ROOM, comedia=True)
        legit, attacker = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        with legit, attacker:
            legit.bind(("127.0.0.1", 0))
            attacker.bind(("127.0.0.1", 0))
            await c.connect_plain_transport(ROOM, fixed["transportId"], ip="127.0.0.1",
                                            port=legit.getsockname()[1])
            await c.connect_plain_transport(ROOM, comedia["transportId"])
            for t in (fixed, comedia):
                await c.produce(ROOM, t["transportId"], "video", plain_producer_parameters(
                    "video", payload_type=VIDEO_PT, ssrc=VIDEO_SSRC))
            before = media.drops()["plain_wrong_source"]
            packet = build_rtp(VIDEO_PT, 1, 0, VIDEO_SSRC, b"\x10" + bytes(50))
            for _ in range(5):
                attacker.sendto(packet, ("127.0.0.1", fixed["tuple"]["localPort"]))
            # Comedia: the legit source's valid packet latches first; the attacker's after.
            legit.sendto(packet, ("127.0.0.1", comedia["tuple"]["localPort"]))
            await trio.sleep(0.2)
            for i in range(5):
                attacker.sendto(build_rtp(VIDEO_PT, 2 + i, 0, VIDEO_SSRC, b"\x10" + bytes(50)),
                                ("127.0.0.1", comedia["tuple"]["localPort"]))
            await trio.sleep(0.3)
            assert media.drops()["plain_wrong_source"] - before == 10
            assert server.rooms is not None
            room = server.rooms.get(ROOM)
            assert room is not None
            fixed_stats = media.stats(room.plain_transports[fixed["transportId"]].handle)
            comedia_stats = media.stats(room.plain_transports[comedia["transportId"]].handle)
            assert fixed_stats is not None and comedia_stats is not None
            assert fixed_stats["wrongSourceDropped"] == 5
            assert comedia_stats["wrongSourceDropped"] == 5
            assert comedia_stats["selectedTuple"] == f"127.0.0.1:{legit.getsockname()[1]}"


async def test_close_frees_port_and_room_close_frees_everything(server: Server,
                                                                client: Any) -> None:
    media = server.ctx.media
    async with client() as c:
        await c.join(ROOM, "host", "host")
        plain = await c.create_plain_transport(ROOM, comedia=True)
        port = plain["tuple"]["localPort"]
        assert media.plain_sockets() == 1
        await c.close_plain_transport(ROOM, plain["transportId"])
        assert media.plain_sockets() == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))  # free again
        for _ in range(3):
            await c.create_plain_transport(ROOM)
        assert media.plain_sockets() == 3
        await c.leave(ROOM)  # the host leaves: the room closes
        await trio.sleep(0.1)
        assert media.plain_sockets() == 0
        assert all(v == 0 for v in media.counts().values()), media.counts()


async def test_plain_requests_host_only_owned_and_limited(server: Server, client: Any) -> None:
    from pysfu.plain import MAX_PLAIN_TRANSPORTS_PER_PEER

    async with client() as h, client() as v:
        await h.join(ROOM, "host", "host")
        await v.join(ROOM, "viewer", "v1")
        with pytest.raises(Exception, match="forbidden"):
            await v.create_plain_transport(ROOM)
        plain = await h.create_plain_transport(ROOM)
        with pytest.raises(Exception, match="forbidden|transport_not_found"):
            await v.connect_plain_transport(ROOM, plain["transportId"], ip="127.0.0.1",
                                            port=9)
        with pytest.raises(Exception, match="invalid_field"):
            await h.connect_plain_transport(ROOM, plain["transportId"])  # no ip/port
        with pytest.raises(Exception, match="invalid_field"):
            await h.connect_plain_transport(ROOM, plain["transportId"], ip="not-an-ip",
                                            port=9)
        with pytest.raises(Exception, match="invalid_field"):
            await h.create_plain_transport(ROOM, rtcpMux="false")
        for _ in range(MAX_PLAIN_TRANSPORTS_PER_PEER - 1):
            await h.create_plain_transport(ROOM)
        with pytest.raises(Exception, match="limit_exceeded"):
            await h.create_plain_transport(ROOM)
        with pytest.raises(Exception, match="consumer_not_found"):
            await h.request_key_frame(ROOM, "nope")


async def test_srtp_plain_transport_round_trip(server: Server, client: Any) -> None:
    """enableSrtp: our key in plainTransportCreated, theirs in connect; SRTP from the
    remote is taken (a WebRTC viewer gets it), plain RTP is refused."""
    async with AsyncExitStack() as stack:
        c = await stack.enter_async_context(client())
        await c.join(ROOM, "host", "host")
        plain = await c.create_plain_transport(ROOM, enableSrtp=True,
                                               srtpCryptoSuite="AEAD_AES_128_GCM")
        params = plain["srtpParameters"]
        assert params["cryptoSuite"] == "AEAD_AES_128_GCM"
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(sender.close)
        sender.bind(("127.0.0.1", 0))
        remote_key = os.urandom(28)
        await c.connect_plain_transport(ROOM, plain["transportId"], ip="127.0.0.1",
                                        port=sender.getsockname()[1], srtpParameters={
                                            "cryptoSuite": "AEAD_AES_128_GCM",
                                            "keyBase64": base64.b64encode(remote_key).decode()})
        producer_id = await c.produce(ROOM, plain["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        viewer = await add_viewer(client, stack, "v1", producer_id)
        stack.callback(viewer.peer.close)
        srtp = pylibsrtp.Session(pylibsrtp.Policy(
            key=remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        dest = ("127.0.0.1", plain["tuple"]["localPort"])
        drops = server.ctx.media.drops()
        sender.sendto(build_rtp(VIDEO_PT, 1, 0, VIDEO_SSRC, vp8_payload(True)), dest)  # plain
        await trio.sleep(0.2)
        assert server.ctx.media.drops()["srtp_auth"] + server.ctx.media.drops()[
            "srtp_malformed"] > drops["srtp_auth"] + drops["srtp_malformed"]
        for seq in range(2, 7):
            sender.sendto(srtp.protect(build_rtp(VIDEO_PT, seq, seq * 3000, VIDEO_SSRC,
                                                 vp8_payload(True), marker=True)), dest)
            await trio.sleep(0.01)
        got = [await viewer.peer.recv_rtp() for _ in range(3)]
        assert all(got), got
        assert {p.ssrc for p in got if p is not None} == {
            viewer.consumer["rtpParameters"]["encodings"][0]["ssrc"]}


async def test_admin_api_records_a_room_without_being_its_host(server: Server, client: Any,
                                                               tmp_path: Path) -> None:
    """An operator (admin API, loopback) opens a plain transport in a room, consumes the
    host's producer and gets the SDP; ffmpeg records it; closing frees everything."""
    import urllib.request

    base = f"http://127.0.0.1:{server.port}/admin/rooms/{ROOM}/plain"

    def post(path: str) -> dict[str, Any]:
        req = urllib.request.Request(base + path, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    async with client() as c:
        await c.join(ROOM, "host", "host")
        source = await c.create_plain_transport(ROOM, comedia=True)
        await c.connect_plain_transport(ROOM, source["transportId"])
        producer_id = await c.produce(ROOM, source["transportId"], "video",
                                      plain_producer_parameters("video", payload_type=VIDEO_PT,
                                                                ssrc=VIDEO_SSRC))
        record_port = free_udp_port()
        out = await trio.to_thread.run_sync(post, "")
        tid = out["transportId"]
        await trio.to_thread.run_sync(post, f"/{tid}/connect?ip=127.0.0.1&port={record_port}")
        answer = await trio.to_thread.run_sync(post, f"/{tid}/consume?producerId={producer_id}")
        sdp = tmp_path / "admin.sdp"
        sdp.write_text(answer["sdp"])
        webm = tmp_path / "admin.webm"
        send = ffmpeg_send_command(pattern(7), video=RtpTarget(
            source["tuple"]["localIp"], source["tuple"]["localPort"], VIDEO_PT, VIDEO_SSRC),
            video_bitrate="300k")
        cid = answer["consumer"]["id"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ffmpeg, send, 7)
            nursery.start_soon(run_ffmpeg, ffmpeg_record_command(str(sdp), str(webm),
                                                                 seconds=3), 7)
            await trio.sleep(1.0)
            await trio.to_thread.run_sync(post, f"/consumers/{cid}/resume")
            await trio.to_thread.run_sync(post, f"/consumers/{cid}/keyframe")
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
             "-show_entries", "stream=width,height,nb_read_frames", "-of", "json", str(webm)],
            capture_output=True, check=True, timeout=60)
        stream = json.loads(probe.stdout)["streams"][0]
        assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)
        assert int(stream["nb_read_frames"]) >= 50, stream
        # The host cannot touch the operator's transport; the operator closes it.
        with pytest.raises(Exception, match="forbidden"):
            await c.close_plain_transport(ROOM, tid)
        await trio.to_thread.run_sync(post, f"/{tid}/close")
        assert server.ctx.media.plain_sockets() == 1


async def test_plain_srtp_parameters_are_checked(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "host")
        with pytest.raises(Exception, match="invalid_field"):
            await c.create_plain_transport(ROOM, enableSrtp=True, srtpCryptoSuite="NULL")
        with pytest.raises(Exception, match="invalid_field"):  # any JSON: a clear error
            await c.create_plain_transport(ROOM, enableSrtp=True, srtpCryptoSuite=[])
        with pytest.raises(Exception, match="invalid_field"):
            await c.create_plain_transport(ROOM, comedia="yes")
        srtp = await c.create_plain_transport(ROOM, enableSrtp=True)
        assert len(base64.b64decode(srtp["srtpParameters"]["keyBase64"])) == 30
        plain = await c.create_plain_transport(ROOM)
        assert "srtpParameters" not in plain
        tid = srtp["transportId"]
        for bad in ({"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": "c2hvcnQ="},
                    {"cryptoSuite": "AEAD_AES_256_GCM",
                     "keyBase64": base64.b64encode(bytes(44)).decode()},  # not our suite
                    {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": "!!"},
                    {"cryptoSuite": [], "keyBase64": "!!"}, {"cryptoSuite": {"a": 1}},
                    None):
            with pytest.raises(Exception, match="invalid_field"):
                await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9,
                                                srtpParameters=bad)
        with pytest.raises(Exception, match="invalid_field"):  # SRTP off on that one
            await c.connect_plain_transport(ROOM, plain["transportId"], ip="127.0.0.1", port=9,
                                            srtpParameters={"cryptoSuite": "x"})
        good = {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                "keyBase64": base64.b64encode(bytes(range(30))).decode()}
        await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9, srtpParameters=good)
        with pytest.raises(Exception, match="already_connected"):
            await c.connect_plain_transport(ROOM, tid, ip="127.0.0.1", port=9,
                                            srtpParameters=good)


async def test_plain_transports_per_address_are_limited_across_rooms(server: Server,
                                                                     client: Any) -> None:
    """One address cannot hold the shared plain port range: at most
    MAX_PLAIN_TRANSPORTS_PER_ADDRESS open plain transports over all its rooms; closing one
    gives its slot back."""
    from pysfu.plain import MAX_PLAIN_TRANSPORTS_PER_ADDRESS, MAX_PLAIN_TRANSPORTS_PER_PEER

    rooms = -(-MAX_PLAIN_TRANSPORTS_PER_ADDRESS // MAX_PLAIN_TRANSPORTS_PER_PEER)
    async with AsyncExitStack() as stack:
        hosts = []
        for i in range(rooms + 1):
            c = await stack.enter_async_context(client())
            await c.join(f"plain-{i}", "host", "host")
            hosts.append(c)
        opened: list[tuple[Any, str, str]] = []
        for i, c in enumerate(hosts[:rooms]):
            for _ in range(MAX_PLAIN_TRANSPORTS_PER_PEER):
                if len(opened) < MAX_PLAIN_TRANSPORTS_PER_ADDRESS:
                    t = await c.create_plain_transport(f"plain-{i}")
                    opened.append((c, f"plain-{i}", t["transportId"]))
        last = hosts[rooms]
        with pytest.raises(Exception, match="limit_exceeded"):
            await last.create_plain_transport(f"plain-{rooms}")
        c, room, tid = opened[0]
        await c.close_plain_transport(room, tid)
        await last.create_plain_transport(f"plain-{rooms}")
        assert server.ctx.media.plain_sockets() == MAX_PLAIN_TRANSPORTS_PER_ADDRESS


def _one_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ONE_PORT = _one_free_port()


@pytest.mark.parametrize("config_overrides", [{"plain_port_range": f"{ONE_PORT}-{ONE_PORT}"}])
async def test_plain_port_range_exhausted_is_limit_exceeded(server: Server,
                                                            client: Any) -> None:
    """plain_port_range is where plain transports bind; a range with no free port left is
    refused as limit_exceeded (so is a split transport that needs two), and the port of a
    closed transport serves the next one."""
    async with client() as c:
        await c.join(ROOM, "host", "host")
        first = await c.create_plain_transport(ROOM)
        assert first["tuple"]["localPort"] == ONE_PORT
        with pytest.raises(Exception, match="limit_exceeded"):
            await c.create_plain_transport(ROOM)
        await c.close_plain_transport(ROOM, first["transportId"])
        with pytest.raises(Exception, match="limit_exceeded"):
            await c.create_plain_transport(ROOM, rtcpMux=False)  # two ports, the range has one
        again = await c.create_plain_transport(ROOM)
        assert again["tuple"]["localPort"] == ONE_PORT
        assert server.ctx.media.plain_sockets() == 1


async def test_room_plain_limit_counts_host_and_operator_transports_not_pipes(
        server: Server, client: Any) -> None:
    """MAX_PLAIN_TRANSPORTS_PER_ROOM counts the host's and the operator's plain transports of
    a room (the host alone stops at its own limit first); the room's pipes have their own
    limit (MAX_PIPES_PER_ROOM) and take none of these slots."""
    from pysfu.plain import (
        DEFAULT_SRTP_SUITE,
        MAX_PLAIN_TRANSPORTS_PER_PEER,
        MAX_PLAIN_TRANSPORTS_PER_ROOM,
    )
    from pysfu.room import LimitExceeded

    async with client() as c:
        await c.join(ROOM, "host", "host")
        room = _room_of(server)
        for _ in range(MAX_PLAIN_TRANSPORTS_PER_ROOM):
            room.open_pipe()
        for _ in range(MAX_PLAIN_TRANSPORTS_PER_PEER):
            await c.create_plain_transport(ROOM)

        def operator() -> Any:
            return room.create_plain_transport(None, comedia=False, enable_srtp=False,
                                               srtp_suite=DEFAULT_SRTP_SUITE)

        for _ in range(MAX_PLAIN_TRANSPORTS_PER_ROOM - MAX_PLAIN_TRANSPORTS_PER_PEER):
            operator()
        with pytest.raises(LimitExceeded, match="in this room"):
            operator()
        assert server.ctx.media.plain_sockets() == 2 * MAX_PLAIN_TRANSPORTS_PER_ROOM


def _room_of(server: Server) -> Any:
    assert server.rooms is not None
    room = server.rooms.get(ROOM)
    assert room is not None
    return room
