"""End-to-end ICE over TCP: `pysfu serve` with UDP disabled (enable_udp = false: only the
passive TCP candidate is offered), a Chromium host and a Chromium viewer on the demo page;
the viewer plays the host's video over TCP, and the browsers' own getStats says the selected
candidate pair is TCP on both ends (the server's passive candidate on the media port)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.test_browser import (
    STATE,
    _wait,
    assert_playing,
    new_room,
    start_sharing,
    wait_decoding,
)

Pages = SfuProcess = Any  # fixture types live in conftest.py

# Keeps every RTCPeerConnection the page creates (mediasoup-client's handler makes them) so
# the test can ask each for its selected candidate pair; the page itself is not changed.
RECORD_PCS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__pcs.push(this); }
  };
})();
"""

SELECTED_PAIRS = """
async () => {
  const out = [];
  for (const pc of window.__pcs) {
    if (pc.connectionState === 'closed') continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
      const pair = stats.get(s.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId);
      const remote = stats.get(pair.remoteCandidateId);
      out.push({
        state: pair.state, bytesReceived: pair.bytesReceived, bytesSent: pair.bytesSent,
        local: {protocol: local.protocol, candidateType: local.candidateType,
                tcpType: local.tcpType || null},
        remote: {protocol: remote.protocol, port: remote.port,
                 tcpType: remote.tcpType || null},
      });
    });
  }
  return out;
}
"""


@pytest.fixture
def udp_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requested before `sfu`, which starts `pysfu serve` with the environment."""
    monkeypatch.setenv("PYSFU_ENABLE_UDP", "false")


def _selected_pairs(page: Any, name: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    pairs: list[dict[str, Any]] = page.evaluate(SELECTED_PAIRS)
    while not pairs and time.monotonic() < deadline:
        time.sleep(0.2)
        pairs = page.evaluate(SELECTED_PAIRS)
    assert pairs, f"{name}: no selected candidate pair"
    return pairs


def _host_and_viewer(pages: Pages) -> tuple[Any, Any]:
    room = new_room()
    host = pages.open("host", f"/?room={room}&role=host", init_script=RECORD_PCS)
    _wait(host, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(host, source="camera")
    viewer = pages.open("viewer", f"/?room={room}&role=viewer", init_script=RECORD_PCS)
    _wait(viewer, "window.pysfu.state.transports.recv !== undefined", what="viewer ready")
    stats = wait_decoding(viewer, timeout=25)
    assert_playing(stats)
    return host, viewer


def test_viewer_plays_the_host_over_tcp(udp_off: None, pages: Pages, sfu: SfuProcess) -> None:
    host, viewer = _host_and_viewer(pages)
    # Both browsers' selected pairs: TCP, to the server's passive candidate on the media port.
    for name, page in (("host", host), ("viewer", viewer)):
        for pair in _selected_pairs(page, name):
            assert pair["state"] == "succeeded", (name, pair)
            assert pair["local"]["protocol"] == "tcp", (name, json.dumps(pair))
            assert pair["remote"]["protocol"] == "tcp", (name, json.dumps(pair))
            assert pair["remote"]["tcpType"] == "passive", (name, json.dumps(pair))
            assert pair["remote"]["port"] == sfu.rtc_port, (name, json.dumps(pair))
        assert page.evaluate(STATE)["transports"][
            "send" if name == "host" else "recv"] == "connected"
    viewer_pairs = viewer.evaluate(SELECTED_PAIRS)
    assert viewer_pairs[0]["bytesReceived"] > 10_000, viewer_pairs
    # The server's own view: ICE selected TCP tuples (one per transport).
    selected = [line for line in sfu.log().splitlines() if "event=ice.selected" in line]
    assert len(selected) >= 2 and all("protocol=tcp" in line for line in selected), selected


def test_udp_is_preferred_when_both_are_offered(pages: Pages, sfu: SfuProcess) -> None:
    """The default (enable_udp, enable_tcp, prefer_udp): both candidates, UDP chosen."""
    host, viewer = _host_and_viewer(pages)
    for name, page in (("host", host), ("viewer", viewer)):
        for pair in _selected_pairs(page, name):
            assert pair["local"]["protocol"] == "udp", (name, json.dumps(pair))
            assert pair["remote"]["protocol"] == "udp", (name, json.dumps(pair))
