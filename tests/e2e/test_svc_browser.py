"""End-to-end VP9 SVC: a Chromium host (demo page, ``&scalability=L3T3_KEY``, codec VP9)
sends one VP9 stream with three spatial and three temporal layers (k-SVC); the server
forwards it as an SVC consumer (type ``svc``, the producer's scalabilityMode); a Chromium
viewer asking for spatial layer 0, 1, 2 decodes frames of about 1/4, 1/2 and full width,
and asking for temporal layer 0 decodes about a quarter of the frame rate."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.layers import decoded_rate, poll, reported, video
from tests.e2e.test_browser import (
    STATS,
    _wait,
    new_room,
    notifications,
    open_viewer,
    start_sharing,
    wait_decoding,
)

Pages = Any

CONSUMER_STATS = """async () => {
  const id = window.pysfu.state.consumers.find((c) => c.kind === 'video').id;
  return (await window.pysfu.serverStats({consumerId: id})).stats[0];
}"""


def test_vp9_l3t3_key_viewer_spatial_and_temporal_layers(pages: Pages) -> None:
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&scalability=L3T3_KEY")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/VP9")
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/VP9")

    # The consumer is an SVC consumer of the producer's L3T3_KEY stream.
    consumer = viewer.evaluate("() => window.pysfu.state.consumers.find("
                               "(c) => c.kind === 'video')")
    assert consumer["codec"].lower() == "video/vp9", consumer
    assert consumer["type"] == "svc", consumer
    assert consumer["scalabilityMode"] == "L3T3_KEY", consumer
    server = viewer.evaluate(CONSUMER_STATS)
    assert server["type"] == "outbound-rtp", server

    def width() -> int:
        return int(video(viewer).get("frameWidth") or 0)

    # The top layer: the camera's capture width. Chromium adds the upper spatial layers as
    # its send-side estimate grows (and drops them under CPU load): wait until it sends them
    # all, so that the layers below are a half and a quarter of it.
    top = int(host.evaluate("() => document.getElementById('preview').srcObject"
                            ".getVideoTracks()[0].getSettings().width"))
    assert top >= 320, top
    poll(lambda: int(host.evaluate(STATS)["video"]["frameWidth"] or 0), lambda w: w == top,
         30, "the host sending every spatial layer")
    poll(width, lambda w: w == top, 30, "full resolution at the viewer")
    poll(lambda: viewer.evaluate(CONSUMER_STATS)["spatialLayer"], lambda s: s == 2, 10,
         "server forwards spatial layer 2")

    seen: dict[int, int] = {}
    for spatial in (0, 1, 2):
        answer = viewer.evaluate(f"async () => await window.pysfu.setPreferredLayers({spatial})")
        assert answer["spatialLayer"] == spatial
        want = top >> (2 - spatial)
        seen[spatial] = poll(width, lambda w, want=want: abs(w - want) <= 2, 20,
                             f"spatial layer {spatial} (width {want}) at the viewer")
        assert viewer.evaluate(CONSUMER_STATS)["spatialLayer"] == spatial
    assert seen[0] < seen[1] < seen[2], seen
    # The notification follows the server's layer change within the watcher's poll
    # (pysfu/layers.py POLL_INTERVAL), so it may come after the stats already say 2.
    changes = poll(lambda: [d["spatialLayer"] for d in
                   notifications(viewer, "consumerLayersChanged")],
                   lambda seen: seen[-1:] == [2], 5, "consumerLayersChanged notifications")
    assert changes[-3:] == [0, 1, 2], changes

    # Temporal, on spatial layer 0 (which the viewer's estimate never lowers): layer 0 is
    # about a quarter of the frame rate, layer 2 all of it; no key frame needed.
    def temporal(want: int) -> None:
        answer = viewer.evaluate(f"async () => await window.pysfu.setPreferredLayers(0, {want})")
        assert (answer["spatialLayer"], answer["temporalLayer"]) == (0, want), answer
        poll(lambda: viewer.evaluate(CONSUMER_STATS).get("temporalLayer"),
             lambda t: t == want, 5, f"server forwards temporal layer {want}")
        time.sleep(1.0)

    temporal(2)
    poll(width, lambda w: abs(w - (top >> 2)) <= 2, 20, "spatial layer 0 again")
    full, start = decoded_rate(viewer)[0], video(viewer)
    assert full >= 12, f"full rate {full} fps"
    temporal(0)
    low = decoded_rate(viewer)[0]
    assert 0.15 * full <= low <= 0.4 * full, (full, low)
    temporal(2)
    back, end = decoded_rate(viewer)[0], video(viewer)
    assert back >= 0.75 * full, (full, back)
    assert abs(width() - (top >> 2)) <= 2, "spatial layer unchanged"
    assert end["pliCount"] == start["pliCount"], (start, end)


def test_vp9_l1t3_viewer_temporal_layers(pages: Pages) -> None:
    """VP9 with temporal layers only (L1T3): also an SVC consumer; temporal layer 0 is about a
    quarter of the frame rate, decodable without key frame requests."""
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&scalability=L1T3")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/VP9")
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/VP9")
    consumer = viewer.evaluate("() => window.pysfu.state.consumers.find("
                               "(c) => c.kind === 'video')")
    assert (consumer["type"], consumer["scalabilityMode"]) == ("svc", "L1T3"), consumer
    poll(lambda: viewer.evaluate(CONSUMER_STATS).get("temporalLayer"),
         lambda t: t == 2, 20, "server forwards temporal layer 2")

    full, start = decoded_rate(viewer)[0], video(viewer)
    assert full >= 12, f"full rate {full} fps"
    answer = viewer.evaluate("async () => await window.pysfu.setPreferredLayers(0, 0)")
    assert (answer["spatialLayer"], answer["temporalLayer"]) == (0, 0), answer
    poll(lambda: reported(viewer, "temporalLayer"),
         lambda seen: seen[-1:] == [0], 5, "temporal layer 0 reported")
    time.sleep(0.5)
    low = decoded_rate(viewer)[0]
    assert 0.15 * full <= low <= 0.4 * full, (full, low)
    viewer.evaluate("async () => await window.pysfu.setPreferredLayers(0, 2)")
    poll(lambda: viewer.evaluate(CONSUMER_STATS).get("temporalLayer"),
         lambda t: t == 2, 5, "server forwards temporal layer 2 again")
    time.sleep(0.5)
    back = decoded_rate(viewer)[0]
    end = video(viewer)
    assert back >= 0.75 * full, (full, back)
    assert end["pliCount"] == start["pliCount"], (start, end)
