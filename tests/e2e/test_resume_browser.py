"""End-to-end (issue 18): ICE restart mid-stream and a host WebSocket drop, in real Chromium
with the demo page (unmodified mediasoup-client) against `pysfu serve`.

- ICE restart: the page's `restartIce` request + `transport.restartIce({iceParameters})` on
  both the host's send transport and the viewer's recv transport; the viewer's frames keep
  decoding within 2 s, no transport, producer or consumer id changes, and each browser's
  selected candidate pair is then one of the new ICE credentials that the server answered.
- Lost connectivity: the server process is stopped until both pages' transports go
  `disconnected`; the pages restart ICE by themselves and recover, same ids.
- Host WebSocket drop (closed by the page, or the server's end of it aborted): the page
  reopens a socket and `resume`s; the viewer's video keeps decoding, it gets no
  producerClosed / newProducer, its consumers stay the same, and the host is asked for a
  key frame.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.test_browser import (
    STATE,
    STATS,
    _wait,
    new_room,
    notifications,
    start_sharing,
    wait_decoding,
)
from tests.e2e.test_tcp_browser import RECORD_PCS

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


# For each open RTCPeerConnection of the page (recorded by RECORD_PCS): the ICE ufrag of its
# remote description (the server's current credentials) and its selected candidate pair (the
# ufrag of its remote candidate; checks answered).
ICE_PAIRS = """
async () => {
  const out = [];
  for (const pc of window.__pcs) {
    if (pc.connectionState === 'closed' || !pc.remoteDescription) continue;
    const m = /a=ice-ufrag:(\\S+)/.exec(pc.remoteDescription.sdp);
    const entry = {sdpUfrag: m && m[1], state: pc.connectionState, pair: null};
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
      const pair = stats.get(s.selectedCandidatePairId);
      const remote = stats.get(pair.remoteCandidateId);
      entry.pair = {id: pair.id, state: pair.state, responsesReceived: pair.responsesReceived,
                    remoteUfrag: remote.usernameFragment || null};
    });
    out.push(entry);
  }
  return out;
}
"""


def _open_host(pages: Pages, room: str) -> Any:
    page = pages.open("host", f"/?room={room}&role=host", init_script=RECORD_PCS)
    _wait(page, "!document.getElementById('start').disabled", what="host ready")
    start_sharing(page, source="camera")
    return page


def _open_viewer(pages: Pages, room: str) -> Any:
    page = pages.open("viewer", f"/?room={room}&role=viewer", init_script=RECORD_PCS)
    _wait(page, "window.pysfu.state.transports.recv !== undefined", what="viewer ready")
    return page


def _ice(page: Any) -> list[dict[str, Any]]:
    pcs: list[dict[str, Any]] = page.evaluate(ICE_PAIRS)
    assert pcs and all(pc["sdpUfrag"] for pc in pcs), pcs
    return pcs


def _on_new_credentials(page: Any, old: list[dict[str, Any]], *, within: float) -> None:
    """Each RTCPeerConnection of the page has new remote ICE credentials (not those of
    ``old``) and its selected candidate pair is one of them with checks answered (the server
    refuses the old credentials once restarted)."""
    old_ufrags = {pc["sdpUfrag"] for pc in old}
    deadline = time.monotonic() + within
    while True:
        pcs = _ice(page)
        if all(pc["sdpUfrag"] not in old_ufrags and pc["pair"] is not None
               and pc["pair"]["remoteUfrag"] == pc["sdpUfrag"]
               and pc["pair"]["state"] == "succeeded" and pc["pair"]["responsesReceived"] > 0
               for pc in pcs):
            return
        assert time.monotonic() < deadline, (old, pcs)
        time.sleep(0.2)


def _key_frame_requests(page: Any) -> int:
    video = page.evaluate(STATS)["video"]
    return int(video.get("pliCount", 0)) + int(video.get("firCount", 0))


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
    host = _open_host(pages, room)
    viewer = _open_viewer(pages, room)
    wait_decoding(viewer)
    host_before, viewer_before = _ids(host), _ids(viewer)
    send_before = host.evaluate(STATS)["transports"]["send"]
    ice_before = {"host": _ice(host), "viewer": _ice(viewer)}

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
    # The browsers really moved to the new credentials: checks with them were answered.
    _on_new_credentials(host, ice_before["host"], within=10)
    _on_new_credentials(viewer, ice_before["viewer"], within=10)
    _keeps_decoding(viewer, _frames(viewer), within=5.0)


def _host_connections(port: int) -> set[int]:
    """Local ports of the browser's TCP connections to the server's signaling port."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return {int(m.group(1)) for m in re.finditer(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:"
                                                 + str(port) + r"\b", out)}


def _abort_server_side(port: int, client_ports: set[int]) -> None:
    """Abort the server's end of these connections (the kernel destroys the server
    process's sockets: the browser gets a reset from the server's side, the server an
    aborted socket), as a crashed proxy in front of the server or a NAT time-out would."""
    for cport in client_ports:
        done = subprocess.run(["ss", "-K", "-tn", "state", "established",
                               f"( sport = :{port} and dport = :{cport} )"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("closed_by", ["page", "server"])
def test_host_websocket_drop_is_invisible_to_viewers(pages: Pages, sfu: SfuProcess,
                                                     closed_by: str) -> None:
    room = new_room()
    host = _open_host(pages, room)
    # The host page's connections (its WebSocket among them), before any viewer's.
    host_conns = _host_connections(sfu.port)
    assert host_conns
    viewer = _open_viewer(pages, room)
    wait_decoding(viewer)
    host_before, viewer_before = _ids(host), _ids(viewer)
    frames = _frames(viewer)
    key_frame_requests = _key_frame_requests(host)

    if closed_by == "page":
        host.evaluate("() => window.pysfu.dropSignaling()")
    else:
        _abort_server_side(sfu.port, host_conns)
    _wait(host, "window.pysfu.state.resumes === 1 && window.pysfu.state.signaling === 'open'",
          timeout=10, what="host resumed")
    _keeps_decoding(viewer, frames, within=5.0, more=30)

    state = host.evaluate(STATE)
    assert state["sharing"] and not state["ended"] and not state["reconnected"], state
    assert _ids(host) == host_before and _ids(viewer) == viewer_before
    assert not notifications(viewer, "producerClosed")
    assert not notifications(viewer, "newProducer")
    viewer_state = viewer.evaluate(STATE)
    assert viewer_state["signaling"] == "open" and not viewer_state["ended"], viewer_state
    # The server asked the host for a key frame on the resume.
    deadline = time.monotonic() + 5
    while _key_frame_requests(host) <= key_frame_requests:
        assert time.monotonic() < deadline, "no PLI/FIR reached the host after the resume"
        time.sleep(0.2)
    # The resumed session is the host's: its requests work (getStats of its producer).
    producer = host_before["producers"][0]
    server_stats = host.evaluate(f"async () => await window.pysfu.serverStats("
                                 f"{{producerId: '{producer}'}})")
    assert server_stats["stats"], server_stats
    log = sfu.log()
    assert "event=peer.disconnected" in log and "event=peer.resumed" in log, log[-2000:]
    assert "event=room.closed" not in log
    assert sfu.health()["rooms"] == 1


@pytest.mark.parametrize("host_socket", ["kept", "dropped"])
def test_page_restarts_ice_when_its_connection_drops(pages: Pages, sfu: SfuProcess,
                                                     host_socket: str) -> None:
    """The server stops answering (its process is stopped) until both pages' transports go
    `disconnected`; the pages restart ICE on their own (restartIce, then mediasoup-client's
    transport.restartIce) and recover with the same transport, producer and consumer ids.
    ``dropped``: the host's WebSocket is lost at the same time (its server end aborted while
    the server is stopped; a moment's network loss): the host page resumes, and its send
    transport is connected again, by itself (its path came back before the resume: here the
    page does not restart ICE after the resume) or by the ICE restart the page does after
    resuming when the transport is still disconnected; the viewer restarts ICE meanwhile."""
    room = new_room()
    host = _open_host(pages, room)
    host_conns = _host_connections(sfu.port)
    viewer = _open_viewer(pages, room)
    wait_decoding(viewer)
    host_before, viewer_before = _ids(host), _ids(viewer)
    ice_before = {"host": _ice(host), "viewer": _ice(viewer)}
    sfu.proc.send_signal(signal.SIGSTOP)
    try:
        if host_socket == "dropped":
            _abort_server_side(sfu.port, host_conns)
        deadline = time.monotonic() + 20
        while not (host.evaluate(STATE)["transports"]["send"] in ("disconnected", "failed")
                   and viewer.evaluate(STATE)["transports"]["recv"] in ("disconnected",
                                                                        "failed")):
            assert time.monotonic() < deadline, (host.evaluate(STATE)["transports"],
                                                 viewer.evaluate(STATE)["transports"])
            time.sleep(0.2)
        if host_socket == "dropped":
            assert host.evaluate(STATE)["resuming"], host.evaluate(STATE)
    finally:
        sfu.proc.send_signal(signal.SIGCONT)
    if host_socket == "dropped":
        _wait(host, "window.pysfu.state.resumes === 1 && !window.pysfu.state.resuming"
                    " && window.pysfu.state.transports.send === 'connected'",
              timeout=20, what="host resumed, send transport connected")
    else:
        _wait(host, "window.pysfu.state.iceRestarts >= 1"
                    " && window.pysfu.state.transports.send === 'connected'",
              timeout=20, what="host restarted ICE")
    _wait(viewer, "window.pysfu.state.iceRestarts >= 1"
                  " && window.pysfu.state.transports.recv === 'connected'",
          timeout=20, what="viewer restarted ICE")
    if host.evaluate(STATE)["iceRestarts"]:
        _on_new_credentials(host, ice_before["host"], within=10)
    _on_new_credentials(viewer, ice_before["viewer"], within=10)
    _keeps_decoding(viewer, _frames(viewer), within=10.0, more=30)
    state = host.evaluate(STATE)
    assert state["resumes"] == (1 if host_socket == "dropped" else 0), state
    assert state["sharing"] and not state["ended"], state
    assert _ids(host) == host_before and _ids(viewer) == viewer_before
    for page in (host, viewer):
        events = {e["event"] for e in page.evaluate(STATE)["events"]}
        assert not events & {"producerClosed", "newProducer", "transportClosed"}, events
    log = sfu.log()
    # Each restart the pages completed was the server's (fresh credentials, logged).
    assert log.count("event=transport.ice_restart") >= (
        host.evaluate(STATE)["iceRestarts"] + viewer.evaluate(STATE)["iceRestarts"]) >= 1
    assert ("event=peer.resumed" in log) == (host_socket == "dropped")
