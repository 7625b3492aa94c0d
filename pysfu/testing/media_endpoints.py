"""Test endpoints that behave like browsers on a lossy network, for loss-repair tests and the
loss-recovery benchmark: a host that keeps what it sent and answers NACKs with RTX and PLIs
with a key frame; a viewer that NACKs the gaps it sees, answers sender reports with receiver
reports and records what arrived (and how late). Both run over real UDP through
pysfu/testing/lossy_relay.py, with libsrtp (pysfu/testing/webrtc_peer.py).
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from pysfu.client import SignalingClient, connect
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.lossy_relay import Impairment, LossyRelay
from pysfu.testing.webrtc_peer import (
    WebRtcPeer,
    build_nack,
    build_pli,
    build_rr,
    build_rtp,
    build_rtx,
    parse_rtcp,
    rtx_original,
    vp8_payload,
)

VP8_PT = 96  # the host's (Chrome's) PTs and MID extension id, as in fixtures.vp8_producer
RTX_PT = 97
MID_EXT = 4
HOST_SSRC = 0x2233_4455
VIEWER_RTCP_SSRC = 0x5EED


class HostSender:
    """The producing browser: numbered VP8 packets with unique payloads; NACK → RTX (PT 97,
    SSRC + 1, its own sequence numbers); PLI → the next packet is a key frame."""

    def __init__(self, peer: WebRtcPeer, ssrc: int = HOST_SSRC) -> None:
        self.peer = peer
        self.ssrc, self.rtx_ssrc = ssrc, ssrc + 1
        self.next_seq = 1000
        self.rtx_seq = 0
        self.sent: dict[int, bytes] = {}  # seq → plain RTP packet
        self.payloads: list[bytes] = []  # in sending order
        self.nacked: list[int] = []
        self.plis = 0
        self.key_frame_wanted = False
        self.rtcp: list[dict[str, Any]] = []

    async def send(self, count: int, *, key_frame_first: bool = False,
                   interval: float = 0.003) -> list[int]:
        seqs = []
        for i in range(count):
            key = (key_frame_first and i == 0) or self.key_frame_wanted
            self.key_frame_wanted = False
            seq = self.next_seq
            self.next_seq = (seq + 1) & 0xFFFF
            payload = vp8_payload(key, size=600)
            rtp = build_rtp(VP8_PT, seq, 3000 * seq, self.ssrc, payload, marker=True,
                            extensions={MID_EXT: b"0"})
            self.sent[seq] = rtp
            self.payloads.append(payload)
            seqs.append(seq)
            await self.peer.send_rtp(rtp)
            await trio.sleep(interval)
        return seqs

    async def run(self) -> None:
        while True:
            got = await self.peer.recv_packet(timeout=3600)
            if got is None or got[0] != "rtcp":
                continue
            for item in parse_rtcp(got[1]):
                self.rtcp.append(item)
                if item["pt"] == 205 and item["fmt"] == 1 and item["media_ssrc"] == self.ssrc:
                    for seq in item["seqs"]:
                        self.nacked.append(seq)
                        if seq in self.sent:
                            rtx = build_rtx(self.sent[seq], RTX_PT, self.rtx_ssrc, self.rtx_seq)
                            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
                            await self.peer.send_rtp(rtx)
                elif item["pt"] == 206 and item["fmt"] == 1 and item["media_ssrc"] == self.ssrc:
                    self.plis += 1
                    self.key_frame_wanted = True


@dataclass
class _Missing:
    detected: float
    last_nack: float | None = None
    tries: int = 0


@dataclass
class NackingViewer:
    """The viewing browser: reassembles the consumer stream by (extended) sequence number,
    NACKs gaps 10 ms after seeing them and again every ``retry`` s (at most ``max_tries``),
    takes RTX, answers SRs with RRs (LSR/DLSR) so the server can measure the RTT."""

    peer: WebRtcPeer
    ssrc: int
    rtx_ssrc: int | None
    retry: float = 0.12
    max_tries: int = 10
    nack: bool = True
    received: dict[int, bytes] = field(default_factory=dict)  # extended seq → payload
    first: int | None = None
    highest: int | None = None
    missing: dict[int, _Missing] = field(default_factory=dict)
    recovery_times: list[float] = field(default_factory=list)
    via_rtx: int = 0
    duplicates: int = 0
    nacks_sent: int = 0
    srs: list[dict[str, Any]] = field(default_factory=list)
    rtcp: list[dict[str, Any]] = field(default_factory=list)
    rtx_headers: list[tuple[int, int]] = field(default_factory=list)  # (ssrc, pt) of RTX

    def _extend(self, seq: int) -> int:
        if self.highest is None:
            return seq
        d = (seq - self.highest) & 0xFFFF
        return self.highest + d if d < 0x8000 else self.highest + d - 0x10000

    def _arrived(self, seq: int, payload: bytes, now: float, rtx: bool) -> None:
        ext = self._extend(seq)
        if ext in self.received:
            self.duplicates += 1
            return
        if self.first is not None and ext < self.first:
            return  # before our start: not ours to repair
        self.received[ext] = payload
        gap = self.missing.pop(ext, None)
        if gap is not None:
            self.recovery_times.append(now - gap.detected)
            self.via_rtx += rtx
        if self.first is None:
            self.first = ext
        if self.highest is None or ext > self.highest:
            if self.highest is not None:
                for e in range(self.highest + 1, ext):
                    self.missing[e] = _Missing(now)
            self.highest = ext

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._nack_loop)
            while True:
                got = await self.peer.recv_packet(timeout=3600)
                if got is None:
                    continue
                now = trio.current_time()
                kind, value = got
                if kind == "rtp":
                    if value.ssrc == self.ssrc:
                        self._arrived(value.seq, value.payload, now, False)
                    elif value.ssrc == self.rtx_ssrc:
                        self.rtx_headers.append((value.ssrc, value.pt))
                        osn, payload = rtx_original(value)
                        self._arrived(osn, payload, now, True)
                    continue
                for item in parse_rtcp(value):
                    self.rtcp.append(item)
                    if item["pt"] == 200 and item["ssrc"] == self.ssrc:
                        self.srs.append(item)
                        rr = build_rr(VIEWER_RTCP_SSRC, [{
                            "ssrc": self.ssrc, "highest_seq": (self.highest or 0) & 0xFFFFFFFF,
                            "lost": len(self.missing), "lsr": (item["ntp"] >> 16) & 0xFFFFFFFF,
                            "dlsr": 0}])
                        await self.peer.send_rtcp(rr)

    async def _nack_loop(self) -> None:
        while True:
            await trio.sleep(0.01)
            if not self.nack:
                continue
            now = trio.current_time()
            due = []
            for ext, m in list(self.missing.items()):
                if m.tries >= self.max_tries:
                    continue
                if (m.last_nack is None and now - m.detected >= 0.01) or (
                        m.last_nack is not None and now - m.last_nack >= self.retry):
                    due.append(ext)
                    m.last_nack, m.tries = now, m.tries + 1
            for i in range(0, len(due), 100):
                await self.peer.send_rtcp(build_nack(VIEWER_RTCP_SSRC, self.ssrc,
                                                     [e & 0xFFFF for e in due[i:i + 100]]))
                self.nacks_sent += 1

    async def send_pli(self) -> None:
        await self.peer.send_rtcp(build_pli(VIEWER_RTCP_SSRC, self.ssrc))

    def stream(self) -> list[bytes]:
        """Payloads from the first to the highest sequence number (b"" where missing)."""
        if self.first is None or self.highest is None:
            return []
        return [self.received.get(e, b"") for e in range(self.first, self.highest + 1)]

    def recovery_summary(self) -> dict[str, float]:
        times = sorted(self.recovery_times)
        if not times:
            return {"count": 0, "median_ms": 0.0, "p99_ms": 0.0}
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        return {"count": len(times), "median_ms": round(statistics.median(times) * 1000, 1),
                "p99_ms": round(p99 * 1000, 1)}


@dataclass
class LossyRoom:
    host_client: SignalingClient
    viewer_client: SignalingClient
    host: HostSender
    viewer: NackingViewer
    host_relay: LossyRelay
    viewer_relay: LossyRelay
    producer_id: str
    consumer: dict[str, Any]
    nursery: trio.Nursery

    def impair(self, on: bool) -> None:
        self.host_relay.impair = on
        self.viewer_relay.impair = on


async def _relayed_peer(client: SignalingClient, nursery: trio.Nursery, room: str,
                        direction: str, up: Impairment | None, down: Impairment | None,
                        seed: int) -> tuple[WebRtcPeer, LossyRelay]:
    transport = await client.create_transport(room, direction)
    cand = transport["iceCandidates"][0]
    relay = LossyRelay((cand["address"], cand["port"]), up=up, down=down, seed=seed)
    await nursery.start(relay.run)
    peer = WebRtcPeer(transport)
    peer.server = relay.address
    await peer.bind()
    await client.connect_transport(room, transport["id"], peer.dtls_parameters())
    await peer.connect()
    return peer, relay


@asynccontextmanager
async def lossy_room(url: str, room: str = "lossy", *, host_up: Impairment | None = None,
                     host_down: Impairment | None = None, viewer_up: Impairment | None = None,
                     viewer_down: Impairment | None = None, seed: int = 1,
                     viewer_nacks: bool = True) -> AsyncIterator[LossyRoom]:
    """A host producing VP8 and one viewer consuming it, each behind its own relay
    (impairment off until ``impair(True)``); the endpoint tasks run until the context ends."""
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        host_client = await stack.enter_async_context(connect(url))
        await host_client.join(room, "host", "host")
        host_peer, host_relay = await _relayed_peer(host_client, nursery, room, "send",
                                                    host_up, host_down, seed)
        stack.callback(host_peer.close)
        producer_id = await host_client.produce(room, host_peer.transport["id"], "video",
                                                vp8_producer(mid="0", ssrc=HOST_SSRC))
        viewer_client = await stack.enter_async_context(connect(url))
        await viewer_client.join(room, "viewer", "viewer")
        viewer_peer, viewer_relay = await _relayed_peer(viewer_client, nursery, room, "recv",
                                                        viewer_up, viewer_down, seed + 1)
        stack.callback(viewer_peer.close)
        caps = device_caps(await viewer_client.router_rtp_capabilities(room))
        consumer = await viewer_client.consume(room, viewer_peer.transport["id"], producer_id,
                                               caps)
        enc = consumer["rtpParameters"]["encodings"][0]
        host = HostSender(host_peer)
        viewer = NackingViewer(viewer_peer, enc["ssrc"], (enc.get("rtx") or {}).get("ssrc"),
                               nack=viewer_nacks)
        nursery.start_soon(host.run)
        nursery.start_soon(viewer.run)
        await viewer_client.resume_consumer(room, consumer["id"])
        # Runs first on exit: the tasks stop before their sockets close.
        stack.callback(nursery.cancel_scope.cancel)
        yield LossyRoom(host_client, viewer_client, host, viewer, host_relay, viewer_relay,
                        producer_id, consumer, nursery)
