"""H264 temporal layers over real UDP with DTLS/SRTP peers: a host sends an H264 L1T3 stream
whose temporal layers are described by the dependency descriptor (as Chromium does when the
extension is negotiated; tests/e2e/test_h264_browser.py drives the same path with Chromium).
A viewer asking for temporal layer 0 gets every fourth frame with contiguous sequence
numbers; without the descriptor negotiated nothing tells the layers apart: the viewer gets
every frame and setPreferredLayers answers the top layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from pysfu import ortc
from pysfu.client import SignalingClient
from pysfu.testing.fixtures import MID, device_caps
from pysfu.testing.webrtc_peer import Rtp, WebRtcPeer, build_rtp, connected_peer

ROOM = "h264"
H264_PT = 102
SSRC = 0x1234_5678
MID_ID = 4
DD_ID = 12
# An L1T3 key frame's dependency descriptor with its template structure (frame number 1,
# template 0; the vector of native/src/dd_tests.rs): templates 1 (T0), 2 (T1), 3 and 4 (T2).
L1T3_KEY = bytes.fromhex("c0000180" "0214eaa860414d1410208426")
TEMPLATES = (1, 3, 2, 4)  # frame % 4: T0, T2, T1, T2


def h264_producer(dd: bool) -> dict[str, Any]:
    exts = [{"uri": MID, "id": MID_ID, "encrypt": False, "parameters": {}}]
    if dd:
        exts.append({"uri": ortc.URI_DEPENDENCY_DESCRIPTOR, "id": DD_ID, "encrypt": False,
                     "parameters": {}})
    return {
        "mid": "0",
        "codecs": [{"mimeType": "video/H264", "payloadType": H264_PT, "clockRate": 90000,
                    "parameters": {"packetization-mode": 1, "profile-level-id": "42e01f",
                                   "level-asymmetry-allowed": 1},
                    "rtcpFeedback": [{"type": "nack", "parameter": ""},
                                     {"type": "nack", "parameter": "pli"}]}],
        "headerExtensions": exts,
        "encodings": [{"ssrc": SSRC, "scalabilityMode": "L1T3"}],
        "rtcp": {"cname": "h264host", "reducedSize": True},
    }


def descriptor(frame: int) -> bytes:
    """The dependency descriptor of frame ``frame`` (the structure on frame 0)."""
    dd = bytearray(L1T3_KEY if frame == 0 else [0xC0 | TEMPLATES[frame % 4], 0, 0])
    dd[1:3] = ((frame + 1) & 0xFFFF).to_bytes(2, "big")
    return bytes(dd)


def frame_packet(frame: int) -> bytes:
    """Frame ``frame`` of the stream in one packet: an IDR slice for frame 0, else a non-IDR
    one, the frame index in the last four payload bytes."""
    payload = bytes([0x65 if frame == 0 else 0x41, 0x88]) + b"\xab" * 60 + frame.to_bytes(4, "big")
    return build_rtp(H264_PT, 1000 + frame, 3000 * frame, SSRC, payload, marker=True,
                     extensions={MID_ID: b"0", DD_ID: descriptor(frame)})




@dataclass
class Room:
    host: WebRtcPeer
    viewer: SignalingClient
    viewer_peer: WebRtcPeer
    consumer: dict[str, Any]

    async def prefer(self, temporal: int) -> dict[str, Any]:
        return await self.viewer.request("setPreferredLayers", {
            "roomId": ROOM, "consumerId": self.consumer["id"], "spatialLayer": 0,
            "temporalLayer": temporal})

    async def send(self, frames: range) -> list[Rtp]:
        """Send ``frames`` (10 ms apart); what the viewer got in the meantime."""
        got: list[Rtp] = []
        for f in frames:
            await self.host.send_rtp(frame_packet(f))
            while (p := await self.viewer_peer.recv_rtp(timeout=0.01)) is not None:
                got.append(p)
        while (p := await self.viewer_peer.recv_rtp(timeout=0.3)) is not None:
            got.append(p)
        return got


def frames_of(packets: list[Rtp]) -> list[int]:
    return [int.from_bytes(p.payload[-4:], "big") for p in packets]


def contiguous(packets: list[Rtp]) -> bool:
    return all(b.seq == (a.seq + 1) & 0xFFFF for a, b in zip(packets, packets[1:], strict=False))


@asynccontextmanager
async def h264_room(client: Callable[[], Any], dd: bool) -> AsyncIterator[Room]:
    """A host producing H264 L1T3 (`dd`: with the descriptor negotiated) and a viewer
    consuming it, both over real UDP with DTLS/SRTP."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(client())
        await host.join(ROOM, "host", "host")
        host_peer = await connected_peer(host, ROOM, "send")
        stack.callback(host_peer.close)
        producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                         h264_producer(dd))
        viewer = await stack.enter_async_context(client())
        await viewer.join(ROOM, "viewer", "viewer")
        viewer_peer = await connected_peer(viewer, ROOM, "recv")
        stack.callback(viewer_peer.close)
        caps = device_caps(await viewer.router_rtp_capabilities(ROOM), only={"video/h264"})
        consumer = await viewer.consume(ROOM, viewer_peer.transport["id"], producer_id, caps)
        await viewer.resume_consumer(ROOM, consumer["id"])
        yield Room(host_peer, viewer, viewer_peer, consumer)


async def test_h264_with_the_descriptor_drops_temporal_layers_above_the_viewers(
        client: Callable[[], Any]) -> None:
    async with h264_room(client, True) as room:
        everything = await room.send(range(0, 8))
        assert frames_of(everything) == list(range(8))
        # The descriptor goes on to the viewer (it negotiated the extension).
        dd_id = next(e["id"] for e in room.consumer["rtpParameters"]["headerExtensions"]
                     if e["uri"] == ortc.URI_DEPENDENCY_DESCRIPTOR)
        assert [p.extensions[dd_id] for p in everything] == [descriptor(f) for f in range(8)]
        answer = await room.prefer(0)
        assert answer["temporalLayer"] == 0
        low = await room.send(range(8, 25))
        assert frames_of(low) == [8, 12, 16, 20, 24]
        _, data = await room.viewer.next_notification("consumerLayersChanged")
        with trio.fail_after(3):
            while data["temporalLayer"] != 0:
                _, data = await room.viewer.next_notification("consumerLayersChanged")
        # Back to every layer: from the next switch point (frame 26, T1) on; frame 25 (T2)
        # is not one.
        assert (await room.prefer(2))["temporalLayer"] == 2
        up = await room.send(range(25, 32))
        assert frames_of(up) == list(range(26, 32))
        assert contiguous(everything + low + up)


async def test_h264_without_the_descriptor_forwards_every_layer(
        client: Callable[[], Any]) -> None:
    async with h264_room(client, False) as room:
        answer = await room.prefer(0)
        # Nothing tells the layers apart: the viewer is told it gets the top one.
        assert answer["temporalLayer"] == 2
        got = await room.send(range(0, 16))
        assert frames_of(got) == list(range(16))
        assert contiguous(got)
        # The host's descriptor under an id it did not negotiate is not forwarded.
        dd_id = next(e["id"] for e in room.consumer["rtpParameters"]["headerExtensions"]
                     if e["uri"] == ortc.URI_DEPENDENCY_DESCRIPTOR)
        assert not any(dd_id in p.extensions for p in got)
