"""End-to-end (issue 18): ICE restart mid-stream and a host WebSocket drop, in real Chromium
with the demo page (unmodified mediasoup-client) against `pysfu serve`.

- ICE restart: the page's `restartIce` request + `transport.restartIce({iceParameters})` on
  both the host's send transport and the viewer's recv transport; the viewer's frames keep
  decoding within 2 s and no transport, producer or consumer id changes.
- Host WebSocket drop: the page reopens a socket and `resume`s; the viewer's video keeps
  decoding, it gets no producerClosed / newProducer, and its consumers stay the same.
"""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.test_browser import (
    STATE,
    STATS,
    _wait,
    new_room,
    notifications,
    open_host,
    open_viewer,
    wait_decoding,
)

Pages = SfuProcess = Any  # fixture types live in conftest.py


def _frames(page: Any) -> int:
    return int(page.evaluate(STATS)["video"]["framesDecoded"])


def _keeps_decoding(page: Any, since: int, *, within: float, more: int = 10) -> float:
    """Seconds until the viewer has decoded ``more`` frames past ``since`` (fails after
    ``within``)."""
    start = time.monotonic()
    while True:
        stats = page.evaluate(STATS)
        if stats["video"] and stats["video"]["framesDecoded"] >= since + more:
            return time.monotonic() - start
        assert time.monotonic() - start < within, (
            f"framesDecoded stuck near {since} for {within} s: {stats['video']}")
        time.sleep(0.1)


def _ids(page: Any) -> dict[str, Any]:
    state = page.evaluate(STATE)
    return {
        "producers": sorted(p["id"] for p in state["producers"].values()),
        "consumers": sorted(c["id"] for c in state["consumers"]),
        "recv": state.get("recvTransportId"),
        "peer": state["peerId"],
    }


def test_ice_restart_mid_stream(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_host(pages, room)
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer)
    host_before, viewer_before = _ids(host), _ids(viewer)
    send_before = host.evaluate(STATS)["transports"]["send"]

    frames = _frames(viewer)
    send_id = host.evaluate("async () => await window.pysfu.restartIce('send')")
    recv_id = viewer.evaluate("async () => await window.pysfu.restartIce('recv')")
    assert recv_id == viewer_before["recv"]
    took = _keeps_decoding(viewer, frames, within=2.0)

    assert _ids(host) == host_before and _ids(viewer) == viewer_before
    assert host.evaluate(STATE)["iceRestarts"] == 1 == viewer.evaluate(STATE)["iceRestarts"]
    assert host.evaluate(STATE)["transports"]["send"] == "connected"
    assert viewer.evaluate(STATE)["transports"]["recv"] == "connected"
    for page in (host, viewer):
        events = {e["event"] for e in page.evaluate(STATE)["events"]}
        assert not events & {"producerClosed", "newProducer", "transportClosed"}, events
    # The server gave fresh credentials to both transports (logged), the same DTLS session
    # carried on (no second handshake for the send transport).
    log = sfu.log()
    assert log.count("event=transport.ice_restart") == 2, log[-2000:]
    assert f"transport={send_id}" in log
    send_after = host.evaluate(STATS)["transports"]["send"]
    assert send_after["dtlsState"] == "connected" == send_before["dtlsState"]
    assert took < 2.0


def test_host_websocket_drop_is_invisible_to_viewers(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_host(pages, room)
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer)
    host_before, viewer_before = _ids(host), _ids(viewer)
    frames = _frames(viewer)

    host.evaluate("() => window.pysfu.dropSignaling()")
    _wait(host, "window.pysfu.state.resumes === 1 && window.pysfu.state.signaling === 'open'",
          timeout=10, what="host resumed")
    _keeps_decoding(viewer, frames, within=5.0, more=30)

    state = host.evaluate(STATE)
    assert state["sharing"] and not state["ended"] and not state["reconnected"], state
    assert _ids(host) == host_before and _ids(viewer) == viewer_before
    assert not notifications(viewer, "producerClosed")
    assert not notifications(viewer, "newProducer")
    # The resumed session is the host's: its requests work (getStats of its producer).
    producer = host_before["producers"][0]
    server_stats = host.evaluate(f"async () => await window.pysfu.serverStats("
                                 f"{{producerId: '{producer}'}})")
    assert server_stats["stats"], server_stats
    log = sfu.log()
    assert "event=peer.disconnected" in log and "event=peer.resumed" in log, log[-2000:]
    assert "event=room.closed" not in log
    assert sfu.health()["rooms"] == 1
