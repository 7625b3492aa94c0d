"""Pipes between routers over real UDP: two pysfu servers (two engines) in this process on
loopback. A simulcast host produces in a room of server A; ``pysfu.pipe.pipe_to_router``
pipes the producer into a room of server B, whose viewer gets the usual layer choice (its
key frame requests cross the pipe to the host) and recovers from loss on the pipe leg (a
lossy relay between the two pipe transports: NACKs cross back, RTX comes over). Closing
either room tears the pipe down; the engines end with nothing left."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from pysfu.client import SignalingClient, connect
from pysfu.pipe import PipeEnd, PipeError, pipe_to_router
from pysfu.room import Room
from pysfu.server import Server, serve
from pysfu.testing.fixtures import device_caps
from pysfu.testing.lossy_relay import Impairment, LossyRelay
from pysfu.testing.simulcast_peer import (
    SimulcastSender,
    is_vp8_keyframe,
    payload_layer,
    simulcast_producer,
)
from pysfu.testing.webrtc_peer import Rtp, WebRtcPeer, build_sr, connected_peer
from tests.conftest import test_config

ROOM_A, ROOM_B = "origin", "edge"




@dataclass
class Edge:
    """Server B's viewer of the piped producer."""

    client: SignalingClient
    peer: WebRtcPeer
    consumer: dict[str, Any] = field(default_factory=dict)
    packets: list[Rtp] = field(default_factory=list)

    async def collect(self) -> None:
        while True:
            packet = await self.peer.recv_rtp(timeout=60)
            if packet is not None:
                self.packets.append(packet)

    def layers(self, start: int = 0) -> list[int]:
        return [payload_layer(p.payload)[0] for p in self.packets[start:]]


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Setup:
    a: Server
    b: Server
    host: SignalingClient
    sender: SimulcastSender
    producer_id: str
    edge: Edge
    nursery: trio.Nursery

    def room(self, server: Server, room_id: str) -> Room:
        assert server.rooms is not None
        room = server.rooms.get(room_id)
        assert room is not None
        return room


@pytest.fixture
async def setup(server: Server, nursery: trio.Nursery,
                config_overrides: dict[str, Any]) -> AsyncIterator[Setup]:
    """Server A (the ``server`` fixture) and B, both with ``config_overrides``."""
    other: Server = await nursery.start(serve, test_config(**config_overrides))
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(connect(f"ws://127.0.0.1:{server.port}/ws"))
        await host.join(ROOM_A, "host", "host")
        host_peer = await connected_peer(host, ROOM_A, "send")
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM_A, host_peer.transport["id"], "video",
                                         simulcast_producer())
        sender = SimulcastSender(host_peer)
        vc = await stack.enter_async_context(connect(f"ws://127.0.0.1:{other.port}/ws"))
        await vc.join(ROOM_B, "viewer", "edge-viewer")
        edge_peer = await connected_peer(vc, ROOM_B, "recv")
        stack.callback(edge_peer.close)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(sender.read_rtcp)
            tasks.start_soon(sender.run)
            edge = Edge(vc, edge_peer)
            tasks.start_soon(edge.collect)
            yield Setup(server, other, host, sender, producer_id, edge, tasks)
            tasks.cancel_scope.cancel()


async def consume_piped(setup: Setup) -> str:
    """The edge viewer consumes the piped producer it was told about; its id."""
    vc = setup.edge.client
    _, note = await vc.next_notification("newProducer")
    caps = device_caps(await vc.router_rtp_capabilities(ROOM_B))
    consumer = await vc.consume(ROOM_B, setup.edge.peer.transport["id"], note["producerId"],
                                caps)
    await vc.resume_consumer(ROOM_B, consumer["id"])
    setup.edge.consumer = consumer
    return str(note["producerId"])


async def test_piped_simulcast_producer_layers_and_key_frames_cross(setup: Setup) -> None:
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    link = pipe_to_router(setup.producer_id, room_a, room_b)
    piped_id = await consume_piped(setup)
    assert piped_id == link.producer.id
    edge, sender = setup.edge, setup.sender
    assert setup.edge.consumer["type"] == "simulcast"
    await wait_for(lambda: len(edge.packets) >= 15, "the top layer at the edge")
    assert set(edge.layers()) == {2}
    assert is_vp8_keyframe(edge.packets[0].payload)
    # All three layers crossed the pipe (B's producer measured each).
    stats = setup.b.media.stats(link.producer.handle)
    assert stats is not None and all(int(n) > 0 for n in stats["layerPackets"].split(",")), stats
    async def switch_to(layer: int) -> int:
        """The edge viewer asks for ``layer``: B asks the pipe for its key frame, A asks the
        host (a PLI for that layer's SSRC); the edge gets it from that key frame on. Answers
        the index of the edge's first packet of the layer."""
        ssrc = sender.ssrcs[layer]
        plis_before = sum(1 for _, m in sender.plis if m == ssrc)
        n = len(edge.packets)
        await edge.client.request("setPreferredLayers", {
            "roomId": ROOM_B, "consumerId": edge.consumer["id"], "spatialLayer": layer})
        await wait_for(lambda: layer in edge.layers(n), f"layer {layer} at the edge")
        assert sum(1 for _, m in sender.plis if m == ssrc) > plis_before, "PLI reached the host"
        switch = edge.layers().index(layer, n)
        assert is_vp8_keyframe(edge.packets[switch].payload)
        return switch

    await switch_to(0)
    # And back up: the top layer again, from its key frame (asked of the host's r2).
    switch = await switch_to(2)
    assert set(edge.layers(switch)) == {2}
    seqs = [p.seq for p in edge.packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), \
        "continuous numbering through both switches"
    # RTCP crosses both ways: A's sender reports reach B's pipe, B's receiver reports and
    # key frame requests reach A's.
    await trio.sleep(1.2)
    pipe_a = setup.a.media.stats(link.source_pipe.handle)
    pipe_b = setup.b.media.stats(link.target_pipe.handle)
    assert pipe_a is not None and pipe_b is not None
    assert pipe_b["rtcpPacketsReceived"] >= 1 and pipe_a["rtcpPacketsReceived"] >= 2
    assert pipe_a["wrongSourceDropped"] == 0 and pipe_b["wrongSourceDropped"] == 0


async def test_pipe_leg_loss_is_repaired_by_nack_and_rtx(setup: Setup) -> None:
    """5 % loss on the pipe leg A -> B: B NACKs through the pipe, A answers as RTX, the edge
    viewer gets every packet in order."""
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    pipe_a, pipe_b = room_a.open_pipe(), room_b.open_pipe()
    end_b = pipe_b.local_end()
    relay = LossyRelay((end_b.ip, end_b.port), up=Impairment(loss=0.05), seed=3)
    await setup.nursery.start(relay.run)
    # A sends into the relay; B's remote is the relay's back side.
    pipe_a.connect_end(PipeEnd(relay.address[0], relay.address[1], end_b.srtp))
    end_a = pipe_a.local_end()
    pipe_b.connect_end(PipeEnd(relay.back_address[0], relay.back_address[1], end_a.srtp))
    consumer, offer = room_a.pipe_consume(pipe_a, setup.producer_id)
    room_b.pipe_produce(pipe_b, offer)
    await consume_piped(setup)
    edge = setup.edge
    await wait_for(lambda: len(edge.packets) >= 10, "packets at the edge")
    relay.impair = True
    start = len(edge.packets)
    await wait_for(lambda: len(edge.packets) >= start + 90, "packets under loss", timeout=15)
    relay.impair = False
    await trio.sleep(0.5)
    assert relay.up_stats.dropped >= 3, relay.up_stats.dropped
    # Every output sequence number from the first to the last arrived (late ones included).
    first = edge.packets[0].seq
    offsets = {(p.seq - first) & 0xFFFF for p in edge.packets}
    missing = sorted(set(range(max(offsets) + 1)) - offsets)
    assert not missing, f"{len(missing)} packets never reached the edge viewer: {missing}"
    a_stats = setup.a.media.stats(consumer.handle)
    assert a_stats is not None
    totals = setup.a.media.totals()
    assert totals["packetsRetransmitted"] >= 1, totals


async def test_closing_either_room_tears_the_pipe_down(setup: Setup) -> None:
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    link = pipe_to_router(setup.producer_id, room_a, room_b)
    await consume_piped(setup)
    await wait_for(lambda: len(setup.edge.packets) >= 5, "media at the edge")
    assert setup.a.media.plain_sockets() == 1 and setup.b.media.plain_sockets() == 1
    # The host leaves: room A closes, its pipe end closes, B's pipe and producer go.
    await setup.host.leave(ROOM_A)
    _, note = await setup.edge.client.next_notification("producerClosed")
    assert note["producerId"] == link.producer.id
    assert setup.b.media.plain_sockets() == 0 and setup.a.media.plain_sockets() == 0
    assert link.producer.id not in room_b.producers
    assert setup.a.media.counts()["transports"] == 0
    # Room B's viewer leaves: B's engine holds nothing either.
    await setup.edge.client.leave(ROOM_B)
    await trio.sleep(0.1)
    assert all(v == 0 for v in setup.a.media.counts().values()), setup.a.media.counts()
    assert all(v == 0 for v in setup.b.media.counts().values()), setup.b.media.counts()


async def test_closing_the_far_room_closes_the_origin_pipe(setup: Setup) -> None:
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    link = pipe_to_router(setup.producer_id, room_a, room_b)
    assert link.consumer.id in room_a.consumers
    room_b.close("test")
    assert link.consumer.id not in room_a.consumers
    assert setup.a.media.plain_sockets() == 0 and setup.b.media.plain_sockets() == 0
    # B holds nothing; A holds only the host's own transport and producer.
    assert all(v == 0 for v in setup.b.media.counts().values()), setup.b.media.counts()
    counts = setup.a.media.counts()
    assert (counts["transports"], counts["producers"], counts["consumers"]) == (1, 1, 0), counts
    assert link.source_pipe.id not in room_a.plain_transports


async def test_the_far_producer_follows_pause_resume_and_close(setup: Setup) -> None:
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    link = pipe_to_router(setup.producer_id, room_a, room_b)
    await consume_piped(setup)
    edge, host = setup.edge, setup.host
    await wait_for(lambda: len(edge.packets) >= 5, "media at the edge")
    await host.request("pauseProducer", {"roomId": ROOM_A, "producerId": setup.producer_id})
    _, note = await edge.client.next_notification("producerPaused")
    assert note["producerId"] == link.producer.id and link.producer.paused
    await trio.sleep(0.3)
    n = len(edge.packets)
    await trio.sleep(0.3)
    assert len(edge.packets) == n, "nothing flows while the origin is paused"
    await host.request("resumeProducer", {"roomId": ROOM_A, "producerId": setup.producer_id})
    _, note = await edge.client.next_notification("producerResumed")
    assert note["producerId"] == link.producer.id
    await wait_for(lambda: len(edge.packets) >= n + 10, "media again after resume")
    assert is_vp8_keyframe(edge.packets[n].payload), "resumed at a key frame"
    await host.request("closeProducer", {"roomId": ROOM_A, "producerId": setup.producer_id})
    _, note = await edge.client.next_notification("producerClosed")
    assert note["producerId"] == link.producer.id
    assert setup.b.media.counts()["producers"] == 0


async def test_an_srtp_pipe_refuses_a_far_end_without_keys(setup: Setup) -> None:
    """Pipes are SRTP unless pipe_plain_rtp (loopback only) says otherwise: a far end
    without keys is refused, and nothing is sent."""
    room_a = setup.room(setup.a, ROOM_A)
    pipe = room_a.open_pipe()
    end = pipe.local_end()
    assert end.srtp is not None and end.srtp["cryptoSuite"] == "AEAD_AES_128_GCM"
    with pytest.raises(PipeError, match="no srtpParameters"):
        pipe.connect_end(PipeEnd.from_dict({"ip": "127.0.0.1", "port": 9}))
    assert not pipe.connected
    room_a.close_pipe(pipe)
    assert setup.a.media.plain_sockets() == 0


NTP_UNIX = 2_208_988_800  # seconds from the NTP epoch (1900) to the Unix epoch
HOST_CLOCK_SKEW = 1000.0  # the host's NTP clock is this far behind ours (s)


def _ntp(seconds: float) -> int:
    return int((seconds + NTP_UNIX) * (1 << 32))


def _srs(packets: list[bytes], ssrc: int) -> list[tuple[float, int]]:
    """(NTP time in Unix seconds, RTP timestamp) of every SR for ``ssrc``."""
    found = []
    for packet in packets:
        offset = 0
        while offset + 4 <= len(packet):
            words = struct.unpack_from("!H", packet, offset + 2)[0]
            if packet[offset + 1] == 200:
                sender, ntp, rtp_ts = struct.unpack_from("!IQI", packet, offset + 4)
                if sender == ssrc:
                    found.append((ntp / (1 << 32) - NTP_UNIX, rtp_ts))
            offset += 4 * (words + 1)
    return found


async def test_fir_and_sender_reports_cross_the_pipe(setup: Setup) -> None:
    """The edge viewer's FIR reaches the host as a key frame request for the layer it
    watches; the host's sender reports (its own NTP clock, 1000 s behind ours) reach the
    edge viewer through the pipe: the viewer's SRs carry the host's NTP time, not ours."""
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    pipe_to_router(setup.producer_id, room_a, room_b)
    await consume_piped(setup)
    edge, sender = setup.edge, setup.sender
    await wait_for(lambda: len(edge.packets) >= 15, "the top layer at the edge")
    r2 = sender.ssrcs[2]
    await trio.sleep(1.2)  # past the key frame request interval of the first key frame
    quiet = sum(1 for _, m in sender.plis if m == r2)
    await trio.sleep(0.3)
    assert sum(1 for _, m in sender.plis if m == r2) == quiet, "no request while quiet"
    consumer_ssrc = edge.consumer["rtpParameters"]["encodings"][0]["ssrc"]
    fir = struct.pack("!BBHIIIB3x", 0x84, 206, 4, 0xE1, 0, consumer_ssrc, 1)
    await edge.peer.send_rtcp(fir)
    await wait_for(lambda: sum(1 for _, m in sender.plis if m == r2) > quiet,
                   "the FIR's key frame request at the host", timeout=3)
    records = setup.b.media.rtp_stats(room_b.consumers[edge.consumer["id"]].handle)
    assert records is not None
    (record,) = (r for r in records if r["type"] == "outbound-rtp")
    assert record["firCount"] == 1, record
    # Sender reports of the host's three layers, its NTP clock 1000 s behind ours.
    for layer, ssrc in enumerate(sender.ssrcs):
        rtp_ts = (sender.ts_base[layer] + 3000 * sender.frame) & 0xFFFFFFFF
        await sender.peer.send_rtcp(build_sr(ssrc, _ntp(time.time() - HOST_CLOCK_SKEW),
                                             rtp_ts, sender.frame, 100 * sender.frame))
    start = len(edge.peer.rtcp_received)
    await wait_for(lambda: any(ntp < time.time() - HOST_CLOCK_SKEW / 2 for ntp, _ in
                               _srs(edge.peer.rtcp_received[start:], consumer_ssrc)),
                   "an SR with the host's clock at the edge viewer", timeout=5)
    (ntp, _), *_ = [sr for sr in _srs(edge.peer.rtcp_received[start:], consumer_ssrc)
                    if sr[0] < time.time() - HOST_CLOCK_SKEW / 2]
    assert abs(ntp - (time.time() - HOST_CLOCK_SKEW)) < 3, ntp
