"""End-to-end: the demo page (unmodified mediasoup-client) in real Chromium against `pysfu serve`.

Every test starts its own server (fixture `sfu`) and opens its pages in one shared Chromium.
The page exposes `window.pysfu = {state, stats()}`; stats() summarises getStats() of the
page's consumers (viewer) or producers (host). Plain sync functions: pytest-trio leaves them be.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
Pages = SfuProcess = Any  # fixture types live in conftest.py

STATS = "async () => await window.pysfu.stats()"
STATE = "() => window.pysfu.state"


def new_room() -> str:
    return "e2e-" + secrets.token_hex(5)


def _wait(page: Any, condition: str, timeout: float = 15.0, what: str = "") -> None:
    """Wait for a JS condition on window.pysfu.state; fail early if the page shows an error."""
    page.wait_for_function(
        f"() => window.pysfu && (window.pysfu.state.error || ({condition}))",
        timeout=timeout * 1000,
    )
    state = page.evaluate(STATE)
    assert not state["error"], f"page error while waiting for {what or condition}: {state['error']}"


def open_host(pages: Pages, room: str, *, source: str = "camera", codec: str | None = None,
              name: str = "host") -> Any:
    page = pages.open(name, f"/?room={room}&role=host")
    _wait(page, "!document.getElementById('start').disabled", what="host ready")
    state = page.evaluate(STATE)
    assert state["deviceLoaded"] and state["joined"], state
    start_sharing(page, source=source, codec=codec)
    return page


def start_sharing(page: Any, *, source: str = "camera", codec: str | None = None) -> None:
    page.check(f"input[name=source][value={source}]")
    page.select_option("#codec", codec or "")
    page.click("#start")
    _wait(page, "window.pysfu.state.sharing", what="host sharing")
    producers = page.evaluate(STATE)["producers"]
    assert set(producers) == {"video", "audio"}, producers
    if codec:
        assert producers["video"]["codec"].lower() == codec.lower(), producers


def open_viewer(pages: Pages, room: str, name: str) -> Any:
    page = pages.open(name, f"/?room={room}&role=viewer")
    _wait(page, "window.pysfu.state.transports.recv !== undefined", what="viewer ready")
    return page


def wait_decoding(page: Any, *, timeout: float = 15.0, not_producers: set[str] = frozenset(),
                  codec: str | None = None) -> dict[str, Any]:
    """Wait until the viewer decodes video and receives audio (within `timeout`), then check
    that framesDecoded keeps increasing. not_producers: ignore consumers of these (old)
    producers. Returns the last stats."""
    def sample() -> dict[str, Any]:
        return page.evaluate(STATS)

    def fresh(stats: dict[str, Any]) -> bool:
        video, audio = stats.get("video"), stats.get("audio")
        return bool(video and audio and video["producerId"] not in not_producers
                    and audio["producerId"] not in not_producers)

    deadline = time.monotonic() + timeout
    stats = sample()
    while not (fresh(stats) and stats["video"].get("framesDecoded", 0) > 0
               and stats["audio"].get("packetsReceived", 0) > 0
               and stats["element"]["videoWidth"] > 0):
        if time.monotonic() > deadline:
            raise AssertionError(f"no decoded video and received audio within {timeout:.1f} s;"
                                 f" last stats:\n{json.dumps(stats, indent=1)}")
        time.sleep(0.2)
        stats = sample()
    if codec:
        assert (stats["video"]["codec"] or "").lower() == codec.lower(), stats["video"]
    first = stats["video"]["framesDecoded"]
    deadline = time.monotonic() + 5
    while stats["video"]["framesDecoded"] <= first + 5:
        if time.monotonic() > deadline or not fresh(stats):
            raise AssertionError(f"framesDecoded stuck at {first}; last stats:\n"
                                 f"{json.dumps(stats, indent=1)}")
        time.sleep(0.25)
        stats = sample()
    return stats


def assert_playing(stats: dict[str, Any]) -> None:
    element = stats["element"]
    assert element["videoWidth"] > 0 and element["videoHeight"] > 0, element
    assert element["clientWidth"] > 0 and element["clientHeight"] > 0, element
    assert stats["audio"]["packetsReceived"] > 0, stats["audio"]


def notifications(page: Any, event: str) -> list[dict[str, Any]]:
    return [e["data"] for e in page.evaluate(STATE)["events"] if e["event"] == event]


# ---- 1 -----------------------------------------------------------------------------------------

def test_host_to_two_viewers(pages: Pages) -> None:
    """Host shares (screen + microphone); two viewers consume and decode video and audio."""
    room = new_room()
    viewer_a = open_viewer(pages, room, "viewer-a")  # joined before the host shares
    host = open_host(pages, room, source="screen")
    viewer_b = open_viewer(pages, room, "viewer-b")
    for viewer in (viewer_a, viewer_b):
        stats = wait_decoding(viewer)
        assert_playing(stats)
    host_stats = host.evaluate(STATS)
    assert host_stats["video"]["framesEncoded"] > 0, host_stats
    ARTIFACTS.mkdir(exist_ok=True)
    viewer_a.screenshot(path=str(ARTIFACTS / "viewer.png"))


# ---- 2 -----------------------------------------------------------------------------------------

def test_late_viewer_gets_stream(pages: Pages) -> None:
    room = new_room()
    host = open_host(pages, room)
    host.wait_for_function(
        "async () => { const s = await window.pysfu.stats();"
        " return s.video && s.video.framesEncoded > 30; }", polling=250)
    viewer = open_viewer(pages, room, "late-viewer")
    assert_playing(wait_decoding(viewer))
    assert not notifications(viewer, "newProducer"), "late viewer should find producers itself"


# ---- 3 -----------------------------------------------------------------------------------------

def test_stop_sharing_removes_tracks(pages: Pages) -> None:
    room = new_room()
    host = open_host(pages, room)
    viewers = [open_viewer(pages, room, f"viewer-{i}") for i in range(2)]
    for viewer in viewers:
        wait_decoding(viewer)
    ids = {p["id"] for p in host.evaluate(STATE)["producers"].values()}
    host.click("#stop")
    _wait(host, "!window.pysfu.state.sharing", what="host stopped")
    for viewer in viewers:
        _wait(viewer, "window.pysfu.state.consumers.length === 0", timeout=5, what="tracks removed")
        assert {d["producerId"] for d in notifications(viewer, "producerClosed")} == ids
        tracks = viewer.evaluate("() => { const s = document.getElementById('remote').srcObject;"
                                 " return s ? s.getTracks().length : 0; }")
        assert tracks == 0
    # Sharing again reaches the same viewers.
    start_sharing(host)
    for viewer in viewers:
        wait_decoding(viewer, not_producers=ids)


# ---- 4 -----------------------------------------------------------------------------------------

def test_host_reload_same_peer(pages: Pages) -> None:
    room = new_room()
    host = open_host(pages, room)
    viewers = [open_viewer(pages, room, f"viewer-{i}") for i in range(2)]
    for viewer in viewers:
        wait_decoding(viewer)
    before = host.evaluate(STATE)
    old_ids = {p["id"] for p in before["producers"].values()}

    reloaded = time.monotonic()
    host.reload()
    _wait(host, "window.pysfu.state.sharing", timeout=5, what="host resumed after reload")
    after = host.evaluate(STATE)
    assert after["peerId"] == before["peerId"] and after["reconnected"], after
    assert not {p["id"] for p in after["producers"].values()} & old_ids, after["producers"]
    for viewer in viewers:
        _wait(viewer, f"window.pysfu.state.events.filter(e => e.event === 'producerClosed')"
                      f".length >= {len(old_ids)}", timeout=5, what="old producers closed")
        assert {d["producerId"] for d in notifications(viewer, "producerClosed")} == old_ids
        # Frames of the new stream decoded within 5 s of the reload.
        left = 5.0 - (time.monotonic() - reloaded)
        assert_playing(wait_decoding(viewer, not_producers=old_ids, timeout=max(left, 0.1)))


# ---- 5 -----------------------------------------------------------------------------------------

def test_host_leaves_room_closed(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_host(pages, room)
    viewers = [open_viewer(pages, room, f"viewer-{i}") for i in range(2)]
    for viewer in viewers:
        wait_decoding(viewer)
    health = sfu.health()
    assert health["rooms"] == 1 and health["engine"]["consumers"] == 4, health

    host.click("#end-room")
    for viewer in viewers:
        _wait(viewer, "window.pysfu.state.roomClosed", timeout=5, what="roomClosed")
        assert notifications(viewer, "roomClosed")[0]["reason"] == "host_left"
        assert viewer.is_visible("#ended")
    deadline = time.monotonic() + 5
    while True:
        health = sfu.health()
        if health["rooms"] == 0 and not any(health["engine"].values()):
            break
        assert time.monotonic() < deadline, f"resources left after the room closed: {health}"
        time.sleep(0.2)


# ---- 6 -----------------------------------------------------------------------------------------

def test_codecs_decode(pages: Pages) -> None:
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host")
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    available = [c.lower() for c in host.evaluate(STATE)["codecs"]]
    viewer = open_viewer(pages, room, "viewer")
    seen: set[str] = set()
    for codec in ("video/VP8", "video/VP9", "video/H264", "video/AV1"):
        assert codec.lower() in available, f"{codec} not sendable by this Chromium: {available}"
        start_sharing(host, codec=codec)
        stats = wait_decoding(viewer, codec=codec, not_producers=seen)
        assert_playing(stats)
        seen |= {p["id"] for p in host.evaluate(STATE)["producers"].values()}
        host.click("#stop")
        _wait(viewer, "window.pysfu.state.consumers.length === 0", timeout=5,
              what=f"{codec} producers closed")


# ---- consent ------------------------------------------------------------------------------------

def selected_pair(page: Any) -> dict[str, Any]:
    """The receive transport's selected candidate pair, from Chromium's getStats."""
    pair = page.evaluate(STATS)["transports"]["recv"]["candidatePair"]
    assert pair["state"] == "succeeded" and pair["nominated"], pair
    return {"requests": pair["requestsSent"], "responses": pair["responsesReceived"]}


def test_consent_checks_are_answered_while_media_flows(pages: Pages) -> None:
    """Chromium's consent checks on the selected pair (answered by the engine, not Python's
    ICE) keep being answered: its pair's responses grow with its requests over seconds."""
    room = new_room()
    open_host(pages, room)
    viewer = open_viewer(pages, room, "viewer")
    wait_decoding(viewer)
    before = selected_pair(viewer)
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline:
        time.sleep(1)
        after = selected_pair(viewer)
        if (after["requests"] >= before["requests"] + 2
                and after["responses"] >= before["responses"] + 2):
            break
    assert after["requests"] >= before["requests"] + 2, (before, after)
    # Every check but possibly the one in flight was answered.
    assert after["responses"] >= after["requests"] - 1, (before, after)
    assert_playing(wait_decoding(viewer))
