"""Helpers of the layer tests with Chromium (simulcast, VP9 SVC, AV1): polling, a viewer's
decoded video, the layers it was told of, and the temporal layer ladder every scalable codec
must pass."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.test_browser import STATS, notifications

RATE_WINDOW = 3.0  # seconds a decoded frame rate is measured over


def poll(fn: Any, ok: Any, timeout: float, what: str) -> Any:
    """``fn()`` until ``ok(value)``; the value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last value {value}")
        time.sleep(0.25)
        value = fn()
    return value


def video(page: Any) -> dict[str, Any]:
    """The page's inbound video stats (the demo page's ``window.pysfu.stats``)."""
    stats: dict[str, Any] = page.evaluate(STATS)["video"] or {}
    return stats


def decoded_rate(page: Any, seconds: float = RATE_WINDOW
                 ) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Frames decoded per second over ``seconds``, and the stats before and after."""
    before = video(page)
    time.sleep(seconds)
    after = video(page)
    return (after["framesDecoded"] - before["framesDecoded"]) / seconds, before, after


def reported(page: Any, layer: str) -> list[int]:
    """The ``spatialLayer`` or ``temporalLayer`` of each consumerLayersChanged so far."""
    return [d.get(layer) for d in notifications(page, "consumerLayersChanged")]


def assert_temporal_ladder(viewer: Any, spatial: int) -> None:
    """On spatial layer ``spatial``: temporal layer 0 decodes about a quarter of the full
    frame rate, layer 2 all of it again; the stream stays decodable throughout (the viewer
    asks for no key frame and drops almost nothing)."""
    poll(lambda: reported(viewer, "temporalLayer"), lambda seen: seen[-1:] == [2], 20,
         "temporal layer 2 reported")
    full, start, _ = decoded_rate(viewer)
    assert full >= 12, f"full rate {full} fps"
    for want in (0, 2):
        answer = viewer.evaluate(
            f"async () => await window.pysfu.setPreferredLayers({spatial}, {want})")
        assert answer["temporalLayer"] == want, answer
        poll(lambda: reported(viewer, "temporalLayer"), lambda seen, w=want: seen[-1:] == [w],
             5, f"temporal layer {want} reported")
        time.sleep(0.5)
        rate, _, end = decoded_rate(viewer)
        if want == 0:
            assert 0.15 * full <= rate <= 0.4 * full, (full, rate)
        else:
            assert rate >= 0.75 * full, (full, rate)
    assert end["pliCount"] == start["pliCount"], (start, end)
    assert end.get("framesDropped", 0) - start.get("framesDropped", 0) <= 3, (start, end)
