"""Simulcast and congestion control over real UDP with libsrtp peers: a host sends three rid
layers with transport-wide sequence numbers; a viewer receives one layer at a time, switched
only at key frames with continuous sequence numbers and timestamps, by preference
(setPreferredLayers) and by its bandwidth estimate (REMB, or the server's send-side estimate
from the viewer's transport-cc feedback); the host gets transport-cc feedback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from pysfu import ortc
from pysfu.client import RequestFailed, SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps
from pysfu.testing.media_room import media_workers  # noqa: F401  (fixture: 1 and 2 workers)
from pysfu.testing.simulcast_peer import (
    TCC,
    SimulcastSender,
    build_remb,
    build_transport_cc,
    is_vp8_keyframe,
    parse_transport_cc,
    parse_vp8_descriptor,
    payload_layer,
    send_rtcp,
    simulcast_producer,
)
from pysfu.testing.webrtc_peer import Rtp, WebRtcPeer, connected_peer

ROOM = "simulcast"




@dataclass
class Viewer:
    client: SignalingClient
    peer: WebRtcPeer
    consumer: dict[str, Any]
    packets: list[Rtp] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)  # µs (trio clock), one per packet

    async def collect(self) -> None:
        while True:
            packet = await self.peer.recv_rtp(timeout=60)
            if packet is not None:
                self.packets.append(packet)
                self.arrivals.append(int(trio.current_time() * 1e6))

    def layers(self, start: int = 0) -> list[int]:
        return [payload_layer(p.payload)[0] for p in self.packets[start:]]


@dataclass
class Setup:
    server: Server
    host: SignalingClient
    sender: SimulcastSender
    producer_id: str
    viewer: Viewer
    consumed_at: float

    def producer_stats(self) -> dict[str, Any]:
        room = self.server.rooms.get(ROOM)  # type: ignore[union-attr]
        return self.server.media.stats(room.producers[self.producer_id].handle)

    def consumer_stats(self) -> dict[str, Any]:
        room = self.server.rooms.get(ROOM)  # type: ignore[union-attr]
        return self.server.media.stats(room.consumers[self.viewer.consumer["id"]].handle)

    def viewer_transport_stats(self) -> dict[str, Any]:
        room = self.server.rooms.get(ROOM)  # type: ignore[union-attr]
        return self.server.media.stats(room.transports[self.viewer.peer.transport["id"]].handle)

    def host_transport_stats(self) -> dict[str, Any]:
        room = self.server.rooms.get(ROOM)  # type: ignore[union-attr]
        return self.server.media.stats(room.transports[self.sender.peer.transport["id"]].handle)


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


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
        host_peer = await connected_peer(host, ROOM, "send")
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                         simulcast_producer())
        sender = SimulcastSender(host_peer)
        start(sender.read_rtcp)
        start(sender.run)
        vc = await stack.enter_async_context(client())
        await vc.join(ROOM, "viewer", "viewer")
        viewer_peer = await connected_peer(vc, ROOM, "recv")
        stack.callback(viewer_peer.close)
        caps = device_caps(await vc.router_rtp_capabilities(ROOM))
        consumer = await vc.consume(ROOM, viewer_peer.transport["id"], producer_id, caps)
        await vc.resume_consumer(ROOM, consumer["id"])
        viewer = Viewer(vc, viewer_peer, consumer)
        start(viewer.collect)
        try:
            yield Setup(server, host, sender, producer_id, viewer, trio.current_time())
        finally:
            for scope in scopes:
                scope.cancel()


def newer_ts(a: int, b: int) -> bool:
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


def assert_continuous(packets: list[Rtp]) -> None:
    for prev, cur in zip(packets, packets[1:], strict=False):
        assert cur.seq == (prev.seq + 1) & 0xFFFF, (prev.seq, cur.seq)
        assert newer_ts(cur.ts, prev.ts), (prev.ts, cur.ts)


async def set_layers(viewer: Viewer, spatial: int) -> dict[str, Any]:
    return await viewer.client.request("setPreferredLayers", {
        "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": spatial})


async def test_consumer_parameters_for_a_simulcast_producer(setup: Setup) -> None:
    rtp = setup.viewer.consumer["rtpParameters"]
    assert len(rtp["encodings"]) == 1
    assert rtp["encodings"][0]["scalabilityMode"] == "L3T3"
    assert rtp["encodings"][0]["maxBitrate"] == 1500000
    assert setup.viewer.consumer["type"] == "simulcast"
    # transport-cc both ways (as mediasoup): the viewer gets transport-cc, not goog-remb.
    assert TCC in {e["uri"] for e in rtp["headerExtensions"]}
    fb = {f["type"] for f in rtp["codecs"][0]["rtcpFeedback"]}
    assert "transport-cc" in fb and "goog-remb" not in fb


async def test_default_top_layer_then_switch_down_at_a_key_frame(setup: Setup) -> None:
    viewer, sender = setup.viewer, setup.sender
    await wait_for(lambda: len(viewer.packets) >= 15, "layer 2 packets")
    assert set(viewer.layers()) == {2}, "a simulcast consumer starts on the top layer"
    assert is_vp8_keyframe(viewer.packets[0].payload), "the first packet is a key frame"
    stats = setup.producer_stats()
    assert all(int(n) > 0 for n in stats["layerPackets"].split(",")), stats

    r0 = sender.ssrcs[0]
    plis_before = sum(1 for _, m in sender.plis if m == r0)
    n_before = len(viewer.packets)
    answer = await set_layers(viewer, 0)
    assert answer == {"consumerId": viewer.consumer["id"], "spatialLayer": 0}
    await wait_for(lambda: 0 in viewer.layers(n_before), "layer 0 packets")
    await wait_for(lambda: len(viewer.packets) >= n_before + 25, "more packets")

    assert sum(1 for _, m in sender.plis if m == r0) > plis_before, "PLI on the r0 stream"
    layers = viewer.layers()
    switch = layers.index(0)
    # Layer 2 kept flowing until r0's key frame (sent a few frames after the PLI).
    assert switch > n_before, "no switch before the key frame"
    assert layers[:switch] == [2] * switch and set(layers[switch:]) == {0}
    first = viewer.packets[switch]
    assert is_vp8_keyframe(first.payload), "the switch happens at a key frame of layer 0"
    key_frames_r0 = [f for f, layer in sender.key_frames_sent if layer == 0 and f > 0]
    assert payload_layer(first.payload)[1] == key_frames_r0[0]
    assert_continuous(viewer.packets)
    assert len({p.ssrc for p in viewer.packets}) == 1
    stats = setup.consumer_stats()
    assert (stats["currentLayer"], stats["preferredLayer"], stats["layerSwitches"]) == (0, 0, 1)

    # And back up to the top layer.
    n_before = len(viewer.packets)
    await set_layers(viewer, 2)
    await wait_for(lambda: 2 in viewer.layers(n_before), "layer 2 again")
    await wait_for(lambda: len(viewer.packets) >= n_before + 20, "more packets")
    back = viewer.layers().index(2, n_before)
    assert is_vp8_keyframe(viewer.packets[back].payload)
    assert_continuous(viewer.packets)
    # The viewer was told each time its layer changed (mediasoup's consumerLayersChanged).
    seen = []
    with trio.move_on_after(3):
        while seen[-1:] != [2] or len(seen) < 3:
            _, data = await viewer.client.next_notification("consumerLayersChanged")
            assert data["consumerId"] == viewer.consumer["id"]
            seen.append(data["spatialLayer"])
    assert seen == [2, 0, 2]


async def test_remb_estimate_moves_the_viewer_down_and_back_up(setup: Setup) -> None:
    # The viewer negotiated transport-cc but sends no transport-cc feedback: its estimate
    # is its REMB (what a viewer without transport-cc has).
    viewer = setup.viewer
    await wait_for(lambda: len(viewer.packets) >= 10, "layer 2 packets")
    # Bitrates are measured per layer on ingress over 1 s windows.
    await wait_for(lambda: all(int(b) > 0 for b in
                               setup.producer_stats()["layerBitrates"].split(",")),
                   "layer bitrates")
    # Estimates from a consumer's first seconds are not used (native/src/layers.rs SETTLE).
    await trio.sleep_until(setup.consumed_at + 5.5)
    rates = [int(b) for b in setup.producer_stats()["layerBitrates"].split(",")]
    assert rates[0] < rates[1] < rates[2], rates
    estimate = (rates[1] + rates[2]) // 2  # carries layer 1, not layer 2
    ssrc = viewer.consumer["rtpParameters"]["encodings"][0]["ssrc"]
    n_before = len(viewer.packets)
    await send_rtcp(viewer.peer, build_remb(0x5EED, estimate, [ssrc]))
    await wait_for(lambda: 1 in viewer.layers(n_before), "down-switch to layer 1")
    tstats = setup.viewer_transport_stats()
    assert abs(tstats["availableBitrate"] - estimate) <= estimate >> 17, tstats
    assert tstats["rembReceived"] == 1
    await wait_for(lambda: len(viewer.packets) >= n_before + 30, "more packets")
    layers = viewer.layers()
    down = layers.index(1, n_before)
    assert is_vp8_keyframe(viewer.packets[down].payload)
    assert set(layers[down:]) == {1}
    assert setup.consumer_stats()["currentLayer"] == 1

    # A higher estimate, confirmed by a second report, brings the top layer back.
    n_before = len(viewer.packets)
    for _ in range(2):
        await send_rtcp(viewer.peer, build_remb(0x5EED, 20_000_000, [ssrc]))
        await trio.sleep(0.05)
    await wait_for(lambda: 2 in viewer.layers(n_before), "up-switch to layer 2")
    await wait_for(lambda: len(viewer.packets) >= n_before + 20, "more packets")
    up = viewer.layers().index(2, n_before)
    assert is_vp8_keyframe(viewer.packets[up].payload)
    assert_continuous(viewer.packets)
    assert setup.consumer_stats()["layerSwitches"] == 2


async def test_transport_cc_viewer_is_stamped_and_estimated_from_its_feedback(
        setup: Setup) -> None:
    """Every packet toward a transport-cc viewer carries the next transport-wide sequence
    number; the viewer's feedback gives the transport a send-side estimate of about what it
    receives, and a host layer whose rate that estimate covers stays forwarded."""
    viewer = setup.viewer
    tcc_id = next(e["id"] for e in viewer.consumer["rtpParameters"]["headerExtensions"]
                  if e["uri"] == TCC)
    ssrc = viewer.consumer["rtpParameters"]["encodings"][0]["ssrc"]
    reported = 0
    deadline = trio.current_time() + 8
    while trio.current_time() < deadline:
        await trio.sleep(0.1)
        upto = len(viewer.packets)
        if upto > reported:
            arrivals = [(int.from_bytes(p.extensions[tcc_id], "big"), at)
                        for p, at in zip(viewer.packets[reported:upto],
                                         viewer.arrivals[reported:upto], strict=True)]
            await send_rtcp(viewer.peer, build_transport_cc(0x5EED, ssrc, arrivals))
            reported = upto
        if trio.current_time() > setup.consumed_at + 3 and \
                setup.viewer_transport_stats().get("availableBitrate", 0) > 0:
            break
    seqs = [int.from_bytes(p.extensions[tcc_id], "big") for p in viewer.packets]
    assert len(seqs) > 50
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
    engine = setup.server.media
    room = setup.server.rooms.get(ROOM)
    assert room is not None
    st = engine.stats(room.transports[viewer.peer.transport["id"]].handle)
    assert st["transportCcStamped"] >= len(seqs)
    assert st["transportCcFeedbackReceived"] >= 10 and st["transportCcFeedbackMalformed"] == 0
    assert st["transportCcAcked"] >= len(seqs) - 60 and st["transportCcLost"] == 0, st
    rate = int(setup.producer_stats()["layerBitrates"].split(",")[2])
    # Loopback: the estimate starts at 1.5 x what arrives (the top layer) and only grows.
    assert st["availableBitrate"] >= rate, (st, rate)
    assert setup.consumer_stats()["currentLayer"] == 2
    assert st["probes"] == 0, "at the top layer: nothing to probe for"


async def test_host_gets_transport_cc_feedback_for_its_packets(setup: Setup) -> None:
    sender = setup.sender
    await wait_for(lambda: len(sender.feedback) >= 5, "transport-cc feedback", timeout=5)
    acked: dict[int, int] = {}
    counts = []
    for fci in sender.feedback:
        fb = parse_transport_cc(fci)
        counts.append(fb["feedback_count"])
        assert fb["count"] == len(fb["arrivals"]) and fb["count"] > 0
        for seq, at in fb["arrivals"].items():
            if at is not None:
                acked[seq] = at
    assert counts == [(counts[0] + i) & 0xFF for i in range(len(counts))]
    # Everything sent up to the newest acknowledged packet (later ones may not be reported
    # yet); loopback loses nothing, so every one of them (across the 0xFFFF wrap) is acked.
    newest = max(i for i, seq in enumerate(sender.sent_tcc) if seq in acked)
    sent = sender.sent_tcc[: newest + 1]
    assert 0xFFFF in sent and 0 in sent and len(sent) >= 30
    missing = [s for s in sent if s not in acked]
    assert not missing, missing[:10]
    # Arrival times follow the send order (30 fps: later frames arrive later).
    first_frame, later_frame = sent[0], sent[-1]
    assert acked[later_frame] > acked[first_frame]
    stats = setup.host_transport_stats()
    assert stats["transportCcFeedbackSent"] >= len(sender.feedback)


async def test_set_preferred_layers_checks_ownership_and_fields(setup: Setup,
                                                               client: Any) -> None:
    viewer = setup.viewer
    with pytest.raises(RequestFailed) as exc:
        await viewer.client.request("setPreferredLayers", {
            "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": -1})
    assert exc.value.code == "invalid_field"
    with pytest.raises(RequestFailed) as exc:
        await viewer.client.request("setPreferredLayers", {
            "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": True})
    assert exc.value.code == "invalid_field"
    with pytest.raises(RequestFailed) as exc:
        await viewer.client.request("setPreferredLayers", {
            "roomId": ROOM, "consumerId": "nope", "spatialLayer": 0})
    assert exc.value.code == "consumer_not_found"
    async with client() as other:
        await other.join(ROOM, "viewer", "other")
        with pytest.raises(RequestFailed) as exc:
            await other.request("setPreferredLayers", {
                "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": 0})
        assert exc.value.code == "forbidden"
    # Out-of-range layers are clamped to the producer's top layer.
    answer = await set_layers(viewer, 7)
    assert answer["spatialLayer"] == 2


def test_router_caps_transport_cc_receive_only() -> None:
    caps = ortc.generate_router_rtp_capabilities(transport_cc="recv")
    tcc = [e for e in caps["headerExtensions"] if e["uri"] == TCC]
    assert {e["kind"] for e in tcc} == {"audio", "video"}
    assert {e["direction"] for e in tcc} == {"recvonly"}
    vp8 = next(c for c in caps["codecs"] if c["mimeType"] == "video/VP8")
    assert {"transport-cc", "goog-remb"} <= {f["type"] for f in vp8["rtcpFeedback"]}


async def test_temporal_layer_preference_filters_vp8_frames(setup: Setup) -> None:
    """L1T3 on every layer: at temporal layer 0 the viewer gets every fourth frame (TID 0),
    with contiguous sequence numbers and PictureIDs; back at layer 2, every frame again
    from a layer sync frame on. consumerLayersChanged reports the temporal layer."""
    viewer = setup.viewer
    setup.sender.temporal = True
    await wait_for(lambda: any(parse_vp8_descriptor(p.payload).tid is not None
                               for p in viewer.packets), "L1T3 packets")
    answer = await viewer.client.request("setPreferredLayers", {
        "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": 2,
        "temporalLayer": 0})
    assert (answer["spatialLayer"], answer["temporalLayer"]) == (2, 0)
    with trio.fail_after(5):
        while True:
            _, data = await viewer.client.next_notification("consumerLayersChanged")
            if data["temporalLayer"] == 0:
                assert data["spatialLayer"] == 2
                break
    start = len(viewer.packets)
    await trio.sleep(1.5)
    low = [parse_vp8_descriptor(p.payload) for p in viewer.packets[start:]]
    assert {d.tid for d in low} == {0}
    # ~30 fps sent: about a quarter arrives (one packet per frame).
    assert 8 <= len(low) <= 14, len(low)
    assert setup.consumer_stats()["currentTemporalLayer"] == 0
    assert setup.consumer_stats()["temporalFramesDropped"] >= 3 * len(low) - 3

    # Marked before asking: the layer sync frame that moves the viewer up may arrive before
    # the answer does.
    mark = len(viewer.packets)
    answer = await viewer.client.request("setPreferredLayers", {
        "roomId": ROOM, "consumerId": viewer.consumer["id"], "spatialLayer": 2,
        "temporalLayer": 2})
    assert answer["temporalLayer"] == 2
    await wait_for(lambda: any(parse_vp8_descriptor(p.payload).tid == 2
                               for p in viewer.packets[mark:]), "TL2 frames again")
    up = [parse_vp8_descriptor(p.payload) for p in viewer.packets[mark:]]
    keys = [i for i, p in enumerate(viewer.packets[mark:]) if is_vp8_keyframe(p.payload)]
    i1 = next(i for i, d in enumerate(up) if d.tid == 1)
    i2 = next(i for i, d in enumerate(up) if d.tid == 2)
    # Up one layer at a time, each at a layer sync frame, unless a key frame (the sender
    # answers any PLI with one) came first: after it every layer decodes at once.
    def after_key(i: int) -> bool:
        return any(k < i for k in keys)

    assert all(up[i].layer_sync or after_key(i) for i in (i1, i2)), (up[:8], keys)
    assert i1 < i2 or after_key(i2), (up[:8], keys)
    full = len(viewer.packets)
    await trio.sleep(1.0)
    assert len(viewer.packets) - full >= 24, "full frame rate again"
    assert setup.consumer_stats()["currentTemporalLayer"] == 2
    with trio.fail_after(5):
        while True:
            _, data = await viewer.client.next_notification("consumerLayersChanged")
            if data["temporalLayer"] == 2:
                break

    # The viewer saw one stream throughout: contiguous sequence numbers and PictureIDs.
    packets = viewer.packets[start:]
    assert_continuous(packets)
    ids = [parse_vp8_descriptor(p.payload).picture_id for p in packets]
    assert all(b == ((a or 0) + 1) & 0x7FFF for a, b in zip(ids, ids[1:], strict=False)), ids
