"""Access control in real Chromium (issue 13): the demo page joins with the ``?token=`` its
link carries when the server requires tokens (and says what is missing without one), and a
page served from another origin cannot open the server's WebSocket."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pysfu.auth import create_token

SECRET = secrets.token_urlsafe(32)
STATE = "() => window.pysfu.state"
STATS = "async () => await window.pysfu.stats()"


@pytest.fixture(autouse=True)
def _auth_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs before the `sfu` fixture starts `pysfu serve`, which inherits the environment."""
    monkeypatch.setenv("PYSFU_AUTH_SECRET", SECRET)


def token(room: str, identity: str, role: str) -> str:
    return create_token(SECRET, room=room, identity=identity, role=role, now=time.time())


def wait(page: Any, condition: str, timeout: float = 15.0) -> dict[str, Any]:
    page.wait_for_function(f"() => window.pysfu && (window.pysfu.state.error || ({condition}))",
                           timeout=timeout * 1000)
    return page.evaluate(STATE)


def test_page_joins_with_the_token_of_its_link(pages: Any, sfu: Any) -> None:
    room = "e2e-" + secrets.token_hex(5)
    host = pages.open("host", f"/?room={room}&role=host&token={token(room, 'hostess', 'host')}")
    state = wait(host, "!document.getElementById('start').disabled")
    assert not state["error"] and state["joined"] and state["peerId"] == "hostess", state
    host.check("input[name=source][value=camera]")
    host.click("#start")
    assert not wait(host, "window.pysfu.state.sharing")["error"]
    viewer = pages.open("viewer", f"/?room={room}&role=viewer&token={token(room, 'vee', 'viewer')}")
    state = wait(viewer, "window.pysfu.state.consumers.length >= 1")
    assert not state["error"] and state["peerId"] == "vee", state
    deadline = time.monotonic() + 15
    while True:
        stats = viewer.evaluate(STATS)
        video = stats.get("video") or {}
        if video.get("framesDecoded", 0) > 5:
            break
        assert time.monotonic() < deadline, json.dumps(stats, indent=1)
        time.sleep(0.25)
    assert sfu.health()["open_rooms"] is False


def test_page_without_a_token_says_so(pages: Any) -> None:
    room = "e2e-" + secrets.token_hex(5)
    page = pages.open("no-token", f"/?room={room}&role=viewer")
    state = wait(page, "false")
    assert "unauthorized" in state["error"], state
    assert "requires a join token" in page.inner_text("#error")
    # A viewer's token does not make a host.
    host = pages.open("wrong-role", f"/?room={room}&role=host&token={token(room, 'v', 'viewer')}")
    assert "forbidden" in wait(host, "false")["error"]


@pytest.fixture
def foreign_site() -> Iterator[str]:
    """A page on another origin (another port of 127.0.0.1) that tries the SFU's WebSocket."""
    page = b"<!doctype html><title>foreign</title><p>foreign"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_page_from_another_origin_cannot_open_the_websocket(
        browser_context: Any, sfu: Any, foreign_site: str) -> None:
    page = browser_context.new_page()
    try:
        page.goto(foreign_site + "/")
        result = page.evaluate(
            """(url) => new Promise((resolve) => {
                 const ws = new WebSocket(url);
                 ws.onopen = () => { resolve('open'); ws.close(); };
                 ws.onclose = (ev) => resolve('closed ' + ev.code);
               })""",
            sfu.base.replace("http://", "ws://") + "/ws")
    finally:
        page.close()
    assert result == "closed 1006", result
    assert sfu.health()["refused"].get("origin") == 1
