"""A live host -> viewer stream in a room of its own, to show that an attack elsewhere harmed
no one: ``async with live_stream(server) as live: <attack>`` then ``live.assert_intact()``.

The host sends one numbered VP8 packet every ``interval`` over real UDP, SRTP and the engine;
the viewer records what arrived and how late. Both keep ICE consent alive, so the stream
survives tests longer than ``consent_timeout``.

Against a server that requires join tokens, pass ``token_for(room, identity, role)`` (a
callable returning a token); ``local_host`` connects the stream's peers from another local
address (e.g. 127.0.0.2, for per-address limits).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from pysfu.client import connect
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, stun_binding_request, vp8_payload

if TYPE_CHECKING:
    from pysfu.server import Server

VP8_PT = 96  # the host's PT and MID extension id, as in fixtures.vp8_producer
MID_EXT = 4
HOST_SSRC = 0x4C49_5645
CONSENT_INTERVAL = 2.0  # seconds between the peers' consent checks
TAIL = 1.0  # seconds the viewer waits for the last packets after the host stops
MIN_PACKETS = 50  # the stream runs at least this long, however short the block was


@dataclass
class LiveStream:
    room: str
    producer_id: str = ""
    sent: dict[int, float] = field(default_factory=dict)  # seq -> time sent (trio clock)
    received: dict[int, float] = field(default_factory=dict)  # seq -> time received
    duplicates: int = 0

    @property
    def latencies_ms(self) -> list[float]:
        return sorted(1000 * (self.received[s] - t) for s, t in self.sent.items()
                      if s in self.received)

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms
        return {
            "sent": len(self.sent),
            "received": len(self.received),
            "lost": len(set(self.sent) - set(self.received)),
            "p50_ms": statistics.median(lat) if lat else float("nan"),
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        }

    def assert_intact(self, *, min_packets: int = MIN_PACKETS) -> dict[str, float]:
        """Every packet the host sent arrived once; returns the summary (for figures)."""
        summary = self.summary()
        assert len(self.sent) >= min_packets, f"the live stream barely ran: {summary}"
        missing = sorted(set(self.sent) - set(self.received))
        assert not missing, f"live stream lost {len(missing)} packets (first {missing[:5]}): " \
                            f"{summary}"
        assert self.duplicates == 0, f"{self.duplicates} duplicates: {summary}"
        return summary


async def _open_peer(client: object, room: str, direction: str,
                     protocol: str = "udp") -> WebRtcPeer:
    transport = await client.create_transport(room, direction)  # type: ignore[attr-defined]
    peer = WebRtcPeer(transport, protocol=protocol)
    await peer.bind()
    await client.connect_transport(  # type: ignore[attr-defined]
        room, transport["id"], peer.dtls_parameters())
    await peer.connect()
    return peer


async def _keep_consent(peer: WebRtcPeer) -> None:
    request = stun_binding_request(f"{peer.ice['usernameFragment']}:{peer.ufrag}",
                                   peer.ice["password"])
    while True:
        await trio.sleep(CONSENT_INTERVAL)
        await peer.send_raw(request)


@asynccontextmanager
async def live_stream(server: Server, *, interval: float = 0.005, room: str | None = None,
                      token_for: Callable[[str, str, str], str] | None = None,
                      local_host: str | None = None, viewer_protocol: str = "udp",
                      host_protocol: str = "udp", payload_size: int = 200,
                      key_frame_every: int = 0) -> AsyncIterator[LiveStream]:
    """Run a host -> viewer stream in its own room for the duration of the block (the
    viewer and the host over UDP, or over ICE-TCP with ``viewer_protocol`` /
    ``host_protocol`` "tcp"). ``key_frame_every``: a key frame every that many packets (for
    viewers that join later), besides the first one."""
    room = room or "live-" + os.urandom(4).hex()
    live = LiveStream(room)
    url = f"ws://127.0.0.1:{server.port}/ws"

    def token(identity: str, role: str) -> str | None:
        return token_for(room, identity, role) if token_for is not None else None

    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(connect(url, local_host=local_host))
        viewer = await stack.enter_async_context(connect(url, local_host=local_host))
        await host.join(room, "host", "live-host", token=token("live-host", "host"))
        host_peer = await _open_peer(host, room, "send", host_protocol)
        stack.callback(host_peer.close)
        producer_id = await host.produce(room, host_peer.transport["id"], "video",
                                         vp8_producer(mid="0", ssrc=HOST_SSRC))
        live.producer_id = producer_id
        await viewer.join(room, "viewer", "live-viewer",
                          token=token("live-viewer", "viewer"))
        viewer_peer = await _open_peer(viewer, room, "recv", viewer_protocol)
        stack.callback(viewer_peer.close)
        caps = device_caps(await viewer.router_rtp_capabilities(room))
        consumer = await viewer.consume(room, viewer_peer.transport["id"], producer_id, caps)
        await viewer.resume_consumer(room, consumer["id"])

        first_seq = 1000
        stop = trio.Event()

        async def send() -> None:
            seq = first_seq
            while not stop.is_set():
                rtp = build_rtp(VP8_PT, seq, 90 * seq, HOST_SSRC,
                                vp8_payload(keyframe=seq == first_seq or (
                                    key_frame_every > 0 and seq % key_frame_every == 0),
                                    size=payload_size),
                                marker=True, extensions={MID_EXT: b"0"})
                live.sent[seq] = trio.current_time()
                await host_peer.send_rtp(rtp)
                seq += 1
                await trio.sleep(interval)

        async def receive() -> None:
            # Output sequence numbers start anywhere; the payload carries no number, so map
            # by order of the first packet (the stream is in order on loopback).
            base: int | None = None
            while True:
                packet = await viewer_peer.recv_rtp(timeout=3600)
                if packet is None:
                    continue
                if base is None:
                    base = (packet.seq - first_seq) & 0xFFFF
                seq = first_seq + ((packet.seq - base - first_seq) & 0xFFFF)
                if seq in live.received:
                    live.duplicates += 1
                else:
                    live.received[seq] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            nursery.start_soon(_keep_consent, host_peer)
            nursery.start_soon(_keep_consent, viewer_peer)
            nursery.start_soon(send)
            try:
                yield live
            finally:
                with trio.move_on_after(5):
                    while len(live.sent) < MIN_PACKETS:
                        await trio.sleep(interval)
                stop.set()
                with trio.move_on_after(TAIL):
                    while set(live.sent) - set(live.received):
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
