"""End-to-end AV1: a Chromium host sends AV1 with scalabilityMode L1T3 (one stream, three
temporal layers described by the dependency descriptor header extension); a Chromium viewer
decodes it, and asking for temporal layer 0 gives about a quarter of the frame rate, the
stream staying decodable; asking for layer 2 again restores the full rate."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.layers import assert_temporal_ladder, poll, reported, video
from tests.e2e.test_browser import (
    STATS,
    _wait,
    new_room,
    open_viewer,
    start_sharing,
    wait_decoding,
)

Pages = Any


def test_av1_l1t3_viewer_temporal_layers(pages: Pages) -> None:
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&scalability=L1T3")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/AV1")
    producer_id = host.evaluate("() => window.pysfu.state.producers.video.id")

    # The server reads the sender's dependency descriptors (none refused).
    def server_stream() -> dict[str, Any]:
        answer = host.evaluate("async (id) => await window.pysfu.serverStats({producerId: id})",
                               producer_id)
        stream: dict[str, Any] = answer["stats"][0]
        return stream

    stream = poll(server_stream, lambda s: s["dependencyDescriptors"] > 50, 20,
                  "dependency descriptors at the server")
    assert stream["dependencyDescriptorErrors"] == 0, stream
    assert stream["keyFrames"] >= 1, stream

    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/AV1")

    # The viewer is told it gets temporal layer 2 (the decode target with every layer).
    assert_temporal_ladder(viewer, spatial=0)
    assert video(viewer)["codec"].lower() == "video/av1"


def test_av1_l2t3_viewer_spatial_layers(pages: Pages) -> None:
    """A Chromium host sends AV1 L2T3 (two spatial layers in one stream); a viewer decodes
    the top resolution, half of it when it asks for spatial layer 0 (the router drops the
    upper layer's frames and moves the marker bit), and the top again on asking for 1 (at a
    key frame the router asks for), without asking for key frames or dropping frames."""
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&scalability=L2T3")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/AV1")
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/AV1")

    def width() -> int:
        return viewer.evaluate(STATS)["video"].get("frameWidth") or 0

    def spatial() -> list[int]:
        return reported(viewer, "spatialLayer")

    top = poll(width, lambda w: w >= 640, 20, "video at the viewer")
    poll(spatial, lambda seen: seen[-1:] == [1], 20, "spatial layer 1 reported")
    start = viewer.evaluate(STATS)["video"]
    answer = viewer.evaluate("async () => await window.pysfu.setPreferredLayers(0)")
    assert answer["spatialLayer"] == 0
    poll(width, lambda w: w == top // 2, 20, "spatial layer 0 at the viewer")
    poll(spatial, lambda seen: seen[-1:] == [0], 5, "spatial layer 0 reported")
    frames = viewer.evaluate(STATS)["video"]["framesDecoded"]
    answer = viewer.evaluate("async () => await window.pysfu.setPreferredLayers(1)")
    assert answer["spatialLayer"] == 1
    poll(width, lambda w: w == top, 20, "spatial layer 1 again")
    poll(spatial, lambda seen: seen[-1:] == [1], 5, "spatial layer 1 reported again")
    time.sleep(1)
    end = viewer.evaluate(STATS)["video"]
    assert end["framesDecoded"] > frames + 10, "decoding went on"
    # Decodable throughout: up again at a key frame the server asked for, not the viewer.
    assert end["pliCount"] == start["pliCount"], (start, end)
    assert end.get("framesDropped", 0) - start.get("framesDropped", 0) <= 3, (start, end)


def test_av1_simulcast_viewer_switches(pages: Pages) -> None:
    """AV1 simulcast (three encodings): the viewer's decoded width follows setPreferredLayers
    down and back up (switches at the target stream's key frames)."""
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host&simulcast=1")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera", codec="video/AV1")
    host_layers = poll(lambda: host.evaluate(STATS)["layers"],
                       lambda ls: len(ls) == 3 and all(v.get("frameWidth") for v in ls.values()),
                       30, "three layers encoded at the host")
    widths = {rid: v["frameWidth"] for rid, v in host_layers.items()}
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer, timeout=20, codec="video/AV1")

    def width() -> int:
        return viewer.evaluate(STATS)["video"].get("frameWidth") or 0

    poll(width, lambda w: w == widths["r2"], 30, "top layer at the viewer")
    viewer.evaluate("async () => await window.pysfu.setPreferredLayers(0)")
    poll(width, lambda w: w == widths["r0"], 20, "layer 0 at the viewer")
    frames = viewer.evaluate(STATS)["video"]["framesDecoded"]
    viewer.evaluate("async () => await window.pysfu.setPreferredLayers(2)")
    poll(width, lambda w: w == widths["r2"], 20, "top layer again")
    time.sleep(1)
    assert viewer.evaluate(STATS)["video"]["framesDecoded"] > frames + 10, "decoding went on"
