"""Issue 10, data plane: the server must not become a reflector or an amplifier, and one
transport's STUN flood must not delay another's handshake. Real UDP on loopback, the server in
process; a live host -> viewer stream in another room (pysfu/testing/live_stream.py) shows that
nobody else was harmed.

(a) A viewer nominates a victim's address with a spoofed-source Binding request (its own valid
    credentials, raw socket): the victim gets the STUN answers and nothing else.
(b) A viewer NACKs every packet of the buffer, again and again: what it gets back is bounded
    by its retransmission budget (<= 1.5x what it is forwarded), and a legitimate viewer loses
    nothing, its latency unchanged.
(c) STUN with a real ufrag and bad integrity, flooding: dropped in the engine, counted, and a
    newcomer's ICE + DTLS takes about as long as without the flood.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import textwrap
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu.server import Server
from pysfu.testing.live_stream import live_stream
from pysfu.testing.media_room import (
    CHROME_MID_EXT,
    CHROME_VP8_PT,
    HOST_SSRC,
    ROOM,
    Viewer,
    add_viewer,
    connect_time,
    connect_times_under_load,
    host,  # noqa: F401  (fixture)
)
from pysfu.testing.webrtc_peer import (
    WebRtcPeer,
    build_nack,
    build_rtp,
    parse_rtp,
    stun_binding_request,
    vp8_payload,
)

VICTIM_IP = "127.0.0.2"


# ---- helpers ------------------------------------------------------------------------------


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def spoofed_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 + UDP datagram with a source address of our choosing (IP_HDRINCL)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), os.getpid() & 0xFFFF, 0, 64,
                     socket.IPPROTO_UDP, 0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return ip + udp


class Streamer:
    """The host sends VP8 packets (a key frame first) every ``interval`` until stopped."""

    def __init__(self, peer: WebRtcPeer, *, interval: float, size: int) -> None:
        self.peer, self.interval, self.size = peer, interval, size
        self.sent = 0
        self.seq = 1
        self.stopped = False
        self.done = trio.Event()

    async def run(self) -> None:
        first = self.seq  # each run starts with a key frame (new viewers decode from it)
        self.stopped = False
        self.done = trio.Event()
        while not self.stopped:
            rtp = build_rtp(CHROME_VP8_PT, self.seq, 90 * self.seq, HOST_SSRC,
                            vp8_payload(keyframe=self.seq == first, size=self.size),
                            marker=True, extensions={CHROME_MID_EXT: b"0"})
            await self.peer.send_rtp(rtp)
            self.seq += 1
            self.sent += 1
            await trio.sleep(self.interval)
        self.done.set()


class Receiver:
    """Reads a viewer's socket: RTP bytes per SSRC, output sequence numbers seen."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        rtp = viewer.consumer["rtpParameters"]["encodings"][0]
        self.media_ssrc = rtp["ssrc"]
        self.rtx_ssrc = (rtp.get("rtx") or {}).get("ssrc")
        self.bytes: dict[int, int] = {}
        self.packets: dict[int, int] = {}
        self.seqs: set[int] = set()

    async def run(self) -> None:
        peer = self.viewer.peer
        assert peer.rx is not None
        while True:
            data = await peer.sock.recv(4096)
            if not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
                continue
            ssrc = struct.unpack_from("!I", data, 8)[0]
            self.bytes[ssrc] = self.bytes.get(ssrc, 0) + len(data)
            self.packets[ssrc] = self.packets.get(ssrc, 0) + 1
            if ssrc == self.media_ssrc:
                self.seqs.add(parse_rtp(peer.rx.unprotect(data)).seq)

    def snapshot(self) -> tuple[int, int]:
        """(media bytes, retransmitted bytes) received so far."""
        media = self.bytes.get(self.media_ssrc, 0)
        return media, sum(v for k, v in self.bytes.items() if k != self.media_ssrc)


def attacker_transport(server: Server, viewer: Viewer) -> Any:
    return server.rooms.get(ROOM).transports[viewer.peer.transport["id"]]


# ---- (a) spoofed-source nomination ----------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket (spoofed source) needs root")
async def test_spoofed_source_nomination_sends_the_victim_nothing_but_stun_answers(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    _, host_peer, producer_id = host
    victim = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await victim.bind((VICTIM_IP, 0))
    victim_addr = victim.getsockname()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    to_victim: list[bytes] = []

    async def victim_listens() -> None:
        while True:
            to_victim.append(await victim.recv(4096))

    async with AsyncExitStack() as stack:
        stack.callback(victim.close)
        stack.callback(raw.close)
        live = await stack.enter_async_context(live_stream(server))
        attacker = await add_viewer(client, stack, "attacker", producer_id)
        transport = attacker_transport(server, attacker)
        receiver = Receiver(attacker)
        streamer = Streamer(host_peer, interval=0.01, size=1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim_listens)
            nursery.start_soon(receiver.run)
            nursery.start_soon(streamer.run)
            await trio.sleep(0.5)
            before_spoof = len(receiver.seqs)
            assert before_spoof > 20, "the attacker's own stream flows"
            # The attacker's valid credentials, USE-CANDIDATE, from the victim's address.
            ice = attacker.peer.ice
            spoofs = 3
            for _ in range(spoofs):
                request = stun_binding_request(f"{ice['usernameFragment']}:{attacker.peer.ufrag}",
                                               ice["password"], use_candidate=True)
                raw.sendto(spoofed_udp(victim_addr, attacker.peer.server, request),
                           (attacker.peer.server[0], 0))
                await trio.sleep(0.1)
            # ICE believed it (that is the point): the nomination reached the engine.
            assert transport.ice.nominated == victim_addr
            stats = server.media.stats(transport.handle)
            assert stats["nominatedTuple"] == f"{VICTIM_IP}:{victim_addr[1]}"
            assert stats["selectedTuple"] == f"127.0.0.1:{attacker.peer.sock.getsockname()[1]}"
            # The attacker NACKs everything it had, from its real address, for 2 s.
            seqs_at_spoof = len(receiver.seqs)
            for _ in range(40):
                seqs = sorted(receiver.seqs)[-1000:]
                await attacker.peer.send_rtcp(build_nack(1, receiver.media_ssrc, seqs))
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        after_spoof = len(receiver.seqs) - seqs_at_spoof
    summary = live.assert_intact()
    media_to_victim = [d for d in to_victim if not d[0] < 4]
    print(f"\nspoof: victim got {len(to_victim)} datagrams ({sum(map(len, to_victim))} bytes), "
          f"{len(media_to_victim)} not STUN; the attacker kept receiving {after_spoof} packets "
          f"({streamer.sent} sent); live stream {summary}")
    assert media_to_victim == []
    # Only the Binding success answers (one per spoofed request).
    assert len(to_victim) <= spoofs
    assert all(d[:2] == b"\x01\x01" for d in to_victim)
    # The media kept going to the attacker's real (proven) address.
    assert after_spoof >= 150


# ---- (b) NACKing everything ----------------------------------------------------------------


STREAM_INTERVAL = 0.01  # 100 packets/s of ~1 kB: ~0.85 Mbit/s forwarded to each viewer
NACK_INTERVAL = 0.02
WARM_UP = 1.0
WINDOW = 4.0
MTU = 1500


async def nack_scenario(server: Server, client: Any, streamer: Streamer, producer_id: str,
                        name: str, *, send_nacks: bool) -> dict[str, Any]:
    """A live stream in another room, and in this room a streaming host with an "attacker"
    viewer and a legitimate viewer, all in this process. The attacker builds (and, when
    ``send_nacks``, sends) NACKs of every sequence number of the buffer every NACK_INTERVAL:
    building them costs this process as much as sending them (measured: the live stream's
    p99 went from ~5 to ~11 ms with NACKs built and never sent), so the control builds them
    too, and the difference is the server's."""
    async with AsyncExitStack() as stack:
        live = await stack.enter_async_context(live_stream(server))
        attacker = await add_viewer(client, stack, f"{name}-attacker", producer_id)
        legit = await add_viewer(client, stack, f"{name}-legit", producer_id)
        consumer_handle = server.rooms.get(ROOM).consumers[attacker.consumer["id"]].handle
        bad, good = Receiver(attacker), Receiver(legit)
        drops0 = server.media.drops()
        start = streamer.sent

        async def nack_everything() -> None:
            # Every output sequence number the buffer can hold (2048 back from the newest),
            # in two compounds (the engine reads at most 1024 per compound).
            while True:
                if bad.seqs:
                    newest = max(bad.seqs)
                    seqs = [(newest - i) & 0xFFFF for i in range(2048)]
                    for part in (seqs[:1024], seqs[1024:]):
                        packet = attacker.peer.tx.protect_rtcp(
                            build_nack(1, bad.media_ssrc, part))
                        if send_nacks:
                            await attacker.peer.sock.sendto(packet, attacker.peer.server)
                await trio.sleep(NACK_INTERVAL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bad.run)
            nursery.start_soon(good.run)
            nursery.start_soon(streamer.run)
            nursery.start_soon(nack_everything)
            await trio.sleep(WARM_UP)
            media0, rtx0 = bad.snapshot()
            stats0 = server.media.rtp_stats(consumer_handle)[0]
            sent0 = streamer.sent
            await trio.sleep(WINDOW)
            media1, rtx1 = bad.snapshot()
            stats1 = server.media.rtp_stats(consumer_handle)[0]
            sent = streamer.sent - sent0
            # Stop sending (and wait until the streamer has: its count is final then), let the
            # last packets arrive (bounded), then stop reading.
            streamer.stopped = True
            with trio.move_on_after(2):
                await streamer.done.wait()
                while len(good.seqs) < streamer.sent - start:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        await trio.sleep(0.3)
    # The legitimate viewer in the same room: everything the host sent, in order.
    want = streamer.sent - start
    first = min(good.seqs, default=0)
    missing = sorted(set(range(first, first + want)) - good.seqs)
    assert len(good.seqs) == want, (f"{name}: the legitimate viewer got {len(good.seqs)} of "
                                    f"{want}; first {first}, missing {missing[:5]}")
    return {
        "live": live.assert_intact(), "sent": sent,
        "media": media1 - media0, "rtx": rtx1 - rtx0,
        "engine_media": stats1["byteCount"] - stats0["byteCount"],
        "engine_rtx": stats1["bytesRetransmitted"] - stats0["bytesRetransmitted"],
        "drops": {k: v - drops0.get(k, 0) for k, v in server.media.drops().items()
                  if v != drops0.get(k, 0)},
    }


# How late the bucket may learn of what was forwarded: it is refilled when a NACK is
# answered (native/src/budget.rs), so the first NACK inside the window can spend the share of
# the media forwarded since the last one before it (NACK_INTERVAL apart, later on a loaded
# machine: the attacker's loop runs in this process).
REFILL_LAG = 5 * NACK_INTERVAL


def refill_slack(media: int) -> float:
    """Retransmitted bytes a window may hold beyond half its media: one packet's worth the
    bucket held when the window opened, and the share of the media forwarded in the
    REFILL_LAG before it (at the window's rate)."""
    return MTU + 0.5 * media / WINDOW * REFILL_LAG


async def test_nacking_everything_is_bounded_by_the_retransmission_budget(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    _, host_peer, producer_id = host
    streamer = Streamer(host_peer, interval=STREAM_INTERVAL, size=1000)
    control = await nack_scenario(server, client, streamer, producer_id, "ctl", send_nacks=False)
    attack = await nack_scenario(server, client, streamer, producer_id, "atk", send_nacks=True)
    media, rtx = attack["media"], attack["rtx"]
    print(f"\nnack flood: in {WINDOW:.0f} s the host sent {attack['sent']} packets; the attacker "
          f"got {media} media + {rtx} retransmitted bytes (x{(media + rtx) / media:.2f}; "
          f"engine: {attack['engine_media']} + {attack['engine_rtx']}); drops "
          f"{attack['drops']}; live stream p50/p99 {attack['live']['p50_ms']:.2f}/"
          f"{attack['live']['p99_ms']:.2f} ms, same load with NACKs built, not sent "
          f"{control['live']['p50_ms']:.2f}/{control['live']['p99_ms']:.2f} ms")
    # At most half of what was forwarded in the window: bytes out <= 1.5x the stream for
    # this viewer, plus what the bucket could bring into the window (`refill_slack`).
    assert rtx <= 0.5 * media + refill_slack(media), (media, rtx)
    assert attack["engine_rtx"] <= (0.5 * attack["engine_media"]
                                    + refill_slack(attack["engine_media"])), attack
    assert attack["drops"].get("nack_budget", 0) > 0
    assert control["rtx"] == 0 and "nack_budget" not in control["drops"]
    # Latency of the viewer in the other room: within noise of the same load, NACKs unsent.
    # (The p99 of ~700 packets on a shared 2-core machine moves by several ms between runs
    # of the same load; before the budget the same attack put it at ~600 ms.)
    ctl = control["live"]["p99_ms"]
    assert attack["live"]["p99_ms"] <= max(2.5 * ctl, ctl + 10), (attack["live"],
                                                                   control["live"])


# ---- (c) STUN flood with a real ufrag -------------------------------------------------------


FLOOD = textwrap.dedent("""
    import os, socket, struct, sys, time
    from pysfu.testing.webrtc_peer import stun_binding_request
    ufrag, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    requests = [stun_binding_request(f"{ufrag}:x{i}", "not-the-password") for i in range(512)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent, end, burst = 0, time.monotonic() + seconds, max(1, rate // 100)
    while time.monotonic() < end:
        for _ in range(burst):
            s.sendto(requests[sent % 512], ("127.0.0.1", port))
            sent += 1
        time.sleep(0.01)
    print(sent)
""")
FLOOD_RATE = 20_000  # requests/s


async def test_stun_flood_with_a_real_ufrag_is_dropped_in_the_engine(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    _, host_peer, _ = host
    ufrag = host_peer.ice["usernameFragment"]
    host_transport = server.rooms.get(ROOM).transports[host_peer.transport["id"]]
    baseline = [await connect_time(client, ROOM, f"b{i}") for i in range(3)]
    drops0 = server.media.drops()
    async with live_stream(server) as live:
        flooded, printed = await connect_times_under_load(
            client, ROOM, FLOOD, ufrag, str(server.media.port), "4", str(FLOOD_RATE))
        sent = int(printed or 0)
    summary = live.assert_intact()
    dropped = server.media.drops()["stun_integrity"] - drops0["stun_integrity"]
    b, f = statistics.median(baseline), statistics.median(flooded)
    print(f"\nstun flood: {sent} requests with {ufrag[:6]}…'s ufrag, {dropped} dropped as "
          f"stun_integrity; newcomer ICE+DTLS median {1000 * b:.1f} ms without, "
          f"{1000 * f:.1f} ms with the flood ({[round(1000 * x, 1) for x in flooded]}); "
          f"the host's transport saw {host_transport.ice.requests_rejected} of them; "
          f"live stream {summary}")
    assert sent > 10_000
    assert dropped >= 0.99 * sent, (dropped, sent)
    assert host_transport.ice.requests_rejected == 0, "Python never saw the flood"
    assert server.media.stats(host_transport.handle)["stunRejected"] >= dropped
    assert f <= 2 * b + 0.05, (baseline, flooded)
