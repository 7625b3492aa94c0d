"""Send-side bandwidth estimation and probing over real UDP (issue 19's relay test, with
pysfu.testing peers instead of Chromium): a simulcast host (three layers, about 40, 130 and
280 kbit/s) and a viewer that negotiated transport-cc behind a relay; the viewer sends
transport-cc feedback every 100 ms for what reaches it. When the relay caps the viewer's
downlink below the top layer, the viewer goes down a layer within 2 s; when the cap goes, a
probe finds the room and it is back on the top layer within 5 s; it never waits more than
500 ms for a packet meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from pysfu.client import SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps
from pysfu.testing.lossy_relay import Impairment, LossyRelay
from pysfu.testing.simulcast_peer import (
    TCC,
    SimulcastSender,
    build_transport_cc,
    payload_layer,
    send_rtcp,
    simulcast_producer,
)
from pysfu.testing.webrtc_peer import WebRtcPeer

ROOM = "bwe-relay"
CAP = 190_000  # bit/s: carries layer 1 (≈ 130 kbit/s on the wire), not layer 2 (≈ 290)


@dataclass
class RelayedViewer:
    peer: WebRtcPeer
    relay: LossyRelay
    consumer: dict[str, Any]
    # (trio time, layer) of each media packet received
    got: list[tuple[float, int]] = field(default_factory=list)
    pending: list[tuple[int, int]] = field(default_factory=list)  # (tcc seq, arrival µs)

    async def collect(self) -> None:
        tcc_id = next(e["id"] for e in self.consumer["rtpParameters"]["headerExtensions"]
                      if e["uri"] == TCC)
        media_ssrc = self.consumer["rtpParameters"]["encodings"][0]["ssrc"]
        while True:
            packet = await self.peer.recv_rtp(timeout=60)
            if packet is None:
                continue
            now = trio.current_time()
            if tcc_id in packet.extensions:
                self.pending.append((int.from_bytes(packet.extensions[tcc_id], "big"),
                                     int(now * 1e6)))
            if packet.ssrc == media_ssrc:
                self.got.append((now, payload_layer(packet.payload)[0]))

    async def feedback(self) -> None:
        ssrc = self.consumer["rtpParameters"]["encodings"][0]["ssrc"]
        count = 0
        while True:
            await trio.sleep(0.1)
            if self.pending:
                batch, self.pending = self.pending, []
                await send_rtcp(self.peer, build_transport_cc(0x5EED, ssrc, batch, count))
                count += 1

    def layer_since(self, t: float) -> list[int]:
        return [layer for at, layer in self.got if at >= t]

    def max_gap(self, since: float) -> float:
        times = [at for at, _ in self.got if at >= since]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@dataclass
class Setup:
    server: Server
    viewer: RelayedViewer
    producer_id: str

    def layer_bitrates(self) -> list[int]:
        room = self.server.rooms.get(ROOM)
        assert room is not None
        stats = self.server.media.stats(room.producers[self.producer_id].handle)
        return [int(b) for b in stats["layerBitrates"].split(",")]

    def transport_stats(self) -> dict[str, Any]:
        room = self.server.rooms.get(ROOM)
        assert room is not None
        handle = room.transports[self.viewer.peer.transport["id"]].handle
        return self.server.media.stats(handle)


async def relayed_viewer(client: SignalingClient, nursery: trio.Nursery) -> tuple[WebRtcPeer,
                                                                                 LossyRelay]:
    transport = await client.create_transport(ROOM, "recv")
    cand = transport["iceCandidates"][0]
    relay = LossyRelay((cand["address"], cand["port"]), down=Impairment(queue_limit=0.25))
    await nursery.start(relay.run)
    peer = WebRtcPeer(transport)
    peer.server = relay.address
    await peer.bind()
    await client.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
    await peer.connect()
    return peer, relay


@pytest.fixture
async def setup(server: Server, client: Any, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    scopes: list[trio.CancelScope] = []

    def start(fn: Any) -> None:
        scope = trio.CancelScope()
        scopes.append(scope)

        async def task() -> None:
            with scope:
                await fn()
        nursery.start_soon(task)

    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(client())
        await host.join(ROOM, "host", "host")
        transport = await host.create_transport(ROOM, "send")
        host_peer = WebRtcPeer(transport)
        await host_peer.bind()
        await host.connect_transport(ROOM, transport["id"], host_peer.dtls_parameters())
        await host_peer.connect()
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM, transport["id"], "video", simulcast_producer())
        sender = SimulcastSender(host_peer, key_frame_delay=1)
        start(sender.read_rtcp)
        start(sender.run)
        vc = await stack.enter_async_context(client())
        await vc.join(ROOM, "viewer", "viewer")
        peer, relay = await relayed_viewer(vc, nursery)
        stack.callback(peer.close)
        caps = device_caps(await vc.router_rtp_capabilities(ROOM))
        consumer = await vc.consume(ROOM, peer.transport["id"], producer_id, caps)
        await vc.resume_consumer(ROOM, consumer["id"])
        viewer = RelayedViewer(peer, relay, consumer)
        start(viewer.collect)
        start(viewer.feedback)
        try:
            yield Setup(server, viewer, producer_id)
        finally:
            for scope in scopes:
                scope.cancel()


async def wait_for(predicate: Any, timeout: float) -> float | None:
    """Seconds until `predicate()` held (None: it did not within `timeout`)."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return trio.current_time() - start
    return None


async def test_capped_viewer_goes_down_and_back_up_after_a_probe(setup: Setup) -> None:
    viewer = setup.viewer
    assert await wait_for(lambda: setup.transport_stats().get("availableBitrate", 0) > 0, 10)
    # Layer bitrates are measured on ingress over 1 s windows: known (a full window) after
    # 2-3 s; the cap lies between layer 1 and layer 2.
    def cap_between() -> bool:
        rates = setup.layer_bitrates()
        return rates[0] > 0 and rates[1] < CAP < rates[2]
    assert await wait_for(cap_between, 10), setup.layer_bitrates()
    assert await wait_for(lambda: viewer.layer_since(trio.current_time() - 0.5)[-5:] == [2] * 5,
                          10), "the top layer before the cap"
    st = setup.transport_stats()
    assert st["transportCcFeedbackReceived"] > 5 and st["probes"] == 0, st
    start = trio.current_time()

    # Cap the viewer's downlink below the top layer.
    viewer.relay.impair = True
    viewer.relay.down.rate = CAP
    capped = trio.current_time()
    down = await wait_for(lambda: 1 in viewer.layer_since(capped), 6)
    assert down is not None and down <= 2.0, f"down a layer {down} s after the cap"
    await trio.sleep(3)
    st = setup.transport_stats()
    recent = viewer.layer_since(trio.current_time() - 1)
    assert recent and set(recent) == {1}, recent
    assert st["delayOveruses"] + st["transportCcLost"] > 0, st

    # Lift the cap: a probe, then the top layer again.
    viewer.relay.down.rate = 0
    lifted = trio.current_time()
    up = await wait_for(lambda: viewer.layer_since(lifted)[-3:] == [2] * 3, 8)
    st = setup.transport_stats()
    assert up is not None and up <= 5.0, f"back up {up} s after the cap went; {st}"
    assert st["probesSucceeded"] >= 1 and st["probePaddingPackets"] > 0, st
    gap = viewer.max_gap(start)
    assert gap < 0.5, f"a {gap:.3f} s wait for video at the viewer"
    print(f"down after {down:.2f} s, up after {up:.2f} s, longest gap {gap:.3f} s, "
          f"relay dropped {viewer.relay.down_stats.rate_limited}, stats {st}")
