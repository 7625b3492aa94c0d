"""End-to-end data channels: the demo page's chat (unmodified mediasoup-client produceData /
consumeData) in real Chromium against `pysfu serve`: a host's 1,000 text messages and a
200 KB binary message reach three viewers in order and intact; a viewer's message reaches
the host and the other viewers when the server allows it, and is refused when not; every
page shows each message with its sender's display name (?name=); a reloaded viewer gets the
messages sent after its reload only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import DIST, SfuProcess, _missing
from tests.e2e.test_browser import STATE, _wait, new_room

Pages = Any

BIG = 200 * 1024


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def big_message() -> bytes:
    return bytes((i * 7 + (i >> 10)) & 0xFF for i in range(BIG))


@pytest.fixture
def sfu_env() -> dict[str, str]:
    return {}


@pytest.fixture
def sfu(tmp_path: Path, request: pytest.FixtureRequest, sfu_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[SfuProcess]:
    """conftest's server, with settings from the environment (PYSFU_*)."""
    if not DIST.is_file():
        _missing(f"{DIST} is missing: build the page (make web)")
    for key, value in sfu_env.items():
        monkeypatch.setenv(key, value)
    server = SfuProcess(tmp_path / "pysfu-serve.log")
    request.node.pysfu_server = server
    try:
        yield server
    finally:
        server.stop()


def open_chat(pages: Pages, room: str, role: str, name: str,
              display_name: str | None = None) -> Any:
    shown = f"&name={quote(display_name)}" if display_name is not None else ""
    page = pages.open(name, f"/?room={room}&role={role}{shown}")
    _wait(page, "window.pysfu.state.chat && window.pysfu.state.chat.ready",
          what=f"{name} chat ready")
    return page


def chat(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(STATE)["chat"]
    return state


def wait_messages(page: Any, count: int, sender: str, timeout: float = 30.0) -> list[Any]:
    page.wait_for_function(
        "([n, from]) => window.pysfu.state.chat.messages.filter((m) => m.from === from)"
        ".length >= n", arg=[count, sender], timeout=timeout * 1000)
    messages: list[Any] = page.evaluate(
        "(from) => window.pysfu.state.chat.messages.filter((m) => m.from === from)", sender)
    return messages


@pytest.mark.parametrize("sfu_env", [{"PYSFU_VIEWER_DATA_CHANNELS": "true",
                                      "PYSFU_DATA_MESSAGES_PER_SECOND": "20000",
                                      "PYSFU_DATA_MESSAGE_BURST": "5000"}])
def test_chat_host_to_three_viewers_and_viewer_to_all(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_chat(pages, room, "host", "host", "The Host")
    _wait(host, "window.pysfu.state.chat.open", what="host data producer open")
    host_id = host.evaluate(STATE)["peerId"]
    viewers = [open_chat(pages, room, "viewer", f"viewer{i}", f"Viewer Nr {i}")
               for i in range(3)]
    for v in viewers:
        # Each consumes the host and the viewers that were there before it, and may write.
        _wait(v, "window.pysfu.state.chat.open", what="viewer data producer open")
        assert chat(v)["canSend"]
    # Everyone consumes everyone else by now (newDataProducer for the later ones).
    for page in (host, *viewers):
        page.wait_for_function("() => window.pysfu.state.chat.openConsumers >= 3",
                               timeout=15_000)

    texts = [f"message {i:04d}" for i in range(1000)]
    sent = host.evaluate(
        "(texts) => texts.map((t) => window.pysfu.sendData(t)).every(Boolean)", texts)
    assert sent
    digest = host.evaluate(f"() => window.pysfu.sendData({{bytes: {BIG}}})")
    assert digest == fnv1a(big_message())
    for v in viewers:
        got = wait_messages(v, 1001, host_id)
        assert [m.get("text") for m in got[:1000]] == texts  # all, in order
        assert got[1000]["binary"] == BIG and got[1000]["hash"] == digest  # intact
        assert {m["name"] for m in got} == {"The Host"}  # the sender's display name
        assert v.locator("#chat-log li", has_text="message 0999").first.inner_text() \
            == "The Host message 0999"

    # A viewer's message reaches the host and the two other viewers, with its name.
    writer = viewers[0]
    writer_id = writer.evaluate(STATE)["peerId"]
    assert writer.evaluate("() => window.pysfu.sendData('hello from a viewer')")
    for page in (host, viewers[1], viewers[2]):
        got = wait_messages(page, 1, writer_id)
        assert got[0]["text"] == "hello from a viewer"
        assert got[0]["name"] == "Viewer Nr 0"
        assert page.locator("#chat-log li", has_text="hello from a viewer").inner_text() \
            == "Viewer Nr 0 hello from a viewer"
    mine = writer.locator("#chat-log li.mine").inner_text()
    assert mine == "Viewer Nr 0 (you) hello from a viewer"
    # Typed into the panel: the same path.
    viewers[1].fill("#chat-input", "typed")
    viewers[1].click("#chat-send")
    typed_from = viewers[1].evaluate(STATE)["peerId"]
    assert wait_messages(host, 1, typed_from)[0]["text"] == "typed"
    assert host.locator("#chat-log li", has_text="typed").count() == 1


def test_viewer_chat_refused_by_default(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_chat(pages, room, "host", "host")
    _wait(host, "window.pysfu.state.chat.open", what="host data producer open")
    viewer = open_chat(pages, room, "viewer", "viewer")
    state = chat(viewer)
    assert not state["canSend"]
    assert "viewers cannot write" in state["note"]
    assert viewer.is_disabled("#chat-input")
    viewer.wait_for_function("() => window.pysfu.state.chat.openConsumers >= 1",
                             timeout=15_000)
    assert host.evaluate("() => window.pysfu.sendData('hi viewers')")
    host_id = host.evaluate(STATE)["peerId"]
    assert wait_messages(viewer, 1, host_id)[0]["text"] == "hi viewers"
    assert not viewer.evaluate("() => window.pysfu.sendData('nope')")


def test_a_reloaded_viewer_gets_new_messages_only(pages: Pages, sfu: SfuProcess) -> None:
    room = new_room()
    host = open_chat(pages, room, "host", "host")
    _wait(host, "window.pysfu.state.chat.open", what="host data producer open")
    host_id = host.evaluate(STATE)["peerId"]
    viewer = open_chat(pages, room, "viewer", "viewer")
    viewer.wait_for_function("() => window.pysfu.state.chat.openConsumers >= 1",
                             timeout=15_000)
    assert host.evaluate("() => window.pysfu.sendData('before the reload')")
    assert wait_messages(viewer, 1, host_id)[0]["text"] == "before the reload"
    viewer.reload()
    _wait(viewer, "window.pysfu.state.chat && window.pysfu.state.chat.ready",
          what="viewer chat ready after the reload")
    viewer.wait_for_function("() => window.pysfu.state.chat.openConsumers >= 1",
                             timeout=15_000)
    assert host.evaluate("() => window.pysfu.sendData('after the reload')")
    got = wait_messages(viewer, 1, host_id)
    assert [m["text"] for m in got] == ["after the reload"]  # no history, the new one
    assert viewer.locator("#chat-log li", has_text="before the reload").count() == 0
    assert viewer.locator("#chat-log li", has_text="after the reload").count() == 1
