"""End-to-end: Chromium accepts the server's RTCP reports. The host's browser turns the
server's receiver reports into `remote-inbound-rtp` stats (round-trip time: the report echoes
its sender report and has the right SSRC); the viewer's browser turns the server's sender
reports into `remote-outbound-rtp` stats. The pages' RTCPeerConnections are recorded by an
init script of these tests only (the demo page is unchanged)."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.test_browser import new_room, open_host, open_viewer, wait_decoding

Pages = Any

RECORD_PCS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.__pcs = [];
  function Recorded(...args) {
    const pc = new Native(...args);
    window.__pcs.push(pc);
    return pc;
  }
  Recorded.prototype = Native.prototype;
  Object.setPrototypeOf(Recorded, Native);
  window.RTCPeerConnection = Recorded;
})();
"""

REMOTE_STATS = """
async () => {
  const out = [];
  for (const pc of window.__pcs || []) {
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === 'remote-inbound-rtp' || s.type === 'remote-outbound-rtp') {
        out.push({type: s.type, kind: s.kind, ssrc: s.ssrc, roundTripTime: s.roundTripTime,
                  reportsSent: s.reportsSent, packetsLost: s.packetsLost,
                  fractionLost: s.fractionLost});
      }
    });
  }
  return out;
}
"""


class RecordingPages:
    """Opens pages like the `pages` fixture, with RECORD_PCS installed before the page runs."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def open(self, name: str, path: str) -> Any:
        page = self.pages.context.new_page()
        page.add_init_script(RECORD_PCS)
        console = self.pages.console
        page.on("console", lambda msg: console.append(f"[{name}] {msg.type}: {msg.text}"))
        self.pages.pages.append((name, page))
        page.goto(self.pages.base + path)
        return page


def poll(page: Any, want: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        stats = page.evaluate(REMOTE_STATS)
        if want(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.25)


def test_browsers_accept_sender_and_receiver_reports(pages: Pages) -> None:
    recording = RecordingPages(pages)
    room = new_room()
    host = open_host(recording, room)
    viewer = open_viewer(recording, room, "viewer")
    wait_decoding(viewer)

    def host_rtt(stats: list[dict[str, Any]]) -> bool:
        return any(s["type"] == "remote-inbound-rtp" and s["kind"] == "video"
                   and s.get("roundTripTime") is not None for s in stats)

    stats = poll(host, host_rtt)
    assert host_rtt(stats), stats
    video = next(s for s in stats if s["type"] == "remote-inbound-rtp" and s["kind"] == "video"
                 and s.get("roundTripTime") is not None)
    assert 0 <= video["roundTripTime"] < 1.0 and video["packetsLost"] == 0, video

    def viewer_srs(stats: list[dict[str, Any]]) -> bool:
        return {s["kind"] for s in stats if s["type"] == "remote-outbound-rtp"
                and (s.get("reportsSent") or 0) >= 2} == {"audio", "video"}

    stats = poll(viewer, viewer_srs)
    assert viewer_srs(stats), stats
