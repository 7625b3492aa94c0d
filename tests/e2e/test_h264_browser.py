"""End-to-end H264 temporal layers: Debian's Chromium encodes H264 with OpenH264 and accepts
scalabilityMode L1T3 for it; with the dependency descriptor header extension negotiated (the
router offers it for video) it describes the temporal layers there, as it does for AV1. The
router selects the layers per viewer by that descriptor (native/src/router/svc_dd.rs): a
viewer asking for temporal layer 0 decodes about a quarter of the frame rate, the stream
staying decodable; asking for layer 2 again restores the full rate. Simulcast with L1T3 on
each encoding, and one L1T3 stream."""

from __future__ import annotations

from typing import Any

from tests.e2e.layers import assert_temporal_ladder, poll, video
from tests.e2e.test_browser import _wait, new_room, open_viewer, start_sharing, wait_decoding

Pages = Any


def _host(pages: Pages, room: str, query: str) -> Any:
    host = pages.open("host", f"/?room={room}&role=host&{query}")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/H264")
    return host


def _server_streams(host: Any) -> list[dict[str, Any]]:
    producer_id = host.evaluate("() => window.pysfu.state.producers.video.id")
    answer = host.evaluate("async (id) => await window.pysfu.serverStats({producerId: id})",
                           producer_id)
    streams: list[dict[str, Any]] = answer["stats"]
    return streams


def test_h264_simulcast_l1t3_viewer_temporal_layers(pages: Pages) -> None:
    room = new_room()
    host = _host(pages, room, "simulcast=1&scalability=L1T3")
    # Every stream carries dependency descriptors the server reads (none refused).
    streams = poll(lambda: _server_streams(host),
                   lambda ss: len(ss) == 3 and all(s["dependencyDescriptors"] > 50 for s in ss),
                   30, "dependency descriptors on the three streams at the server")
    assert all(s["dependencyDescriptorErrors"] == 0 for s in streams), streams

    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/H264")
    # The viewer is told it gets temporal layer 2 of the top stream, then follows the ladder.
    assert_temporal_ladder(viewer, spatial=2)
    assert video(viewer)["codec"].lower() == "video/h264"


def test_h264_l1t3_single_stream_viewer_temporal_layers(pages: Pages) -> None:
    room = new_room()
    host = _host(pages, room, "scalability=L1T3")
    stream = poll(lambda: _server_streams(host)[0],
                  lambda s: s["dependencyDescriptors"] > 50, 20,
                  "dependency descriptors at the server")
    assert stream["dependencyDescriptorErrors"] == 0, stream

    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/H264")
    assert_temporal_ladder(viewer, spatial=0)
