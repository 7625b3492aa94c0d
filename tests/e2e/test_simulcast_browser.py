"""End-to-end simulcast: a Chromium host (demo page, `&simulcast=1`) sends VP8 as three
layers; the server receives packets on each; a Chromium viewer switches layers with
setPreferredLayers and its decoded frame width follows."""

from __future__ import annotations

from typing import Any

from tests.e2e.layers import assert_temporal_ladder, poll
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


def test_simulcast_three_layers_and_viewer_switches(pages: Pages) -> None:
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&simulcast=1")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/VP8")
    producer_id = host.evaluate("() => window.pysfu.state.producers.video.id")

    # The server sees the three rid layers, each with packets (Chrome only sends the upper
    # layers once its send-side estimate allows: transport-cc feedback makes it ramp).
    def server_layers() -> list[dict[str, Any]]:
        answer = host.evaluate("async (id) => await window.pysfu.serverStats({producerId: id})",
                               producer_id)
        return answer["stats"]

    layers = poll(server_layers,
                  lambda ls: len(ls) == 3 and all(r["packetCount"] > 0 for r in ls),
                   30, "packets on all three layers at the server")
    assert [r["rid"] for r in layers] == ["r0", "r1", "r2"]
    host_stats = host.evaluate(STATS)
    widths = {rid: v.get("frameWidth") for rid, v in host_stats["layers"].items()}
    assert widths["r0"] < widths["r1"] < widths["r2"], widths

    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/VP8")

    def width() -> int:
        return viewer.evaluate(STATS)["video"].get("frameWidth") or 0

    # Default: the top layer (full resolution).
    top = poll(width, lambda w: w == widths["r2"], 20, "top layer at the viewer")
    answer = viewer.evaluate("async () => await window.pysfu.setPreferredLayers(0)")
    assert answer["spatialLayer"] == 0
    poll(width, lambda w: w == widths["r0"], 20, "layer 0 at the viewer")
    frames = viewer.evaluate(STATS)["video"]["framesDecoded"]
    answer = viewer.evaluate("async () => await window.pysfu.setPreferredLayers(1)")
    poll(width, lambda w: w == widths["r1"], 20, "layer 1 at the viewer")
    viewer.evaluate("async () => await window.pysfu.setPreferredLayers(2)")
    poll(width, lambda w: w == top, 20, "top layer again")
    assert viewer.evaluate(STATS)["video"]["framesDecoded"] > frames, "decoding went on"
    # The viewer negotiated transport-cc: its feedback on the server's transport-wide sequence
    # numbers reaches the server and gives a per-viewer (send-side) estimate in the recv
    # transport's stats; it sends no REMB.
    transport_stats = poll(
                           lambda: viewer.evaluate("async () => (await window.pysfu.serverStats("
                                "{transportId: window.pysfu.state.recvTransportId})).stats[0]"),
        lambda st: st.get("availableBitrate", 0) > 0, 10, "availableBitrate from transport-cc")
    assert transport_stats["transportCcFeedbackReceived"] >= 1
    assert transport_stats["rembReceived"] == 0
    changes = poll(lambda: [d["spatialLayer"] for d in
                   notifications(viewer, "consumerLayersChanged")],
                    lambda seen: seen[-1:] == [2], 5, "consumerLayersChanged notifications")
    assert changes[-3:] == [0, 1, 2], changes


def test_simulcast_l1t3_viewer_temporal_layers(pages: Pages) -> None:
    """A Chromium host sends VP8 simulcast with L1T3 on each encoding; a viewer asking for
    temporal layer 0 decodes about a quarter of the frames, without asking for key frames
    (its stream stays decodable), and gets the full rate back when it asks for layer 2."""
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&simulcast=1&scalability=L1T3")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/VP8")
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/VP8")

    # Chromium sends TIDs: the viewer is told it gets temporal layer 2 (every layer).
    assert_temporal_ladder(viewer, spatial=2)
