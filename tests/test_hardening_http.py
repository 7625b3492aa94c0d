"""The HTTP/WebSocket listener under attack (issue 10, findings 1, 2, 3, 4, 9, 11, 12): one
request per finding, exactly as it was reported, against the real listener on loopback.

Every test checks that the server still serves (``/healthz`` and a signaling request) and,
where it attacks, that a live host -> viewer stream in another room lost nothing meanwhile
(pysfu/testing/live_stream.py)."""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio_websocket

from pysfu import errors
from pysfu import server as server_module
from pysfu.client import RequestFailed, SignalingClient
from pysfu.log import LogfmtFormatter
from pysfu.server import CONTENT_SECURITY_POLICY, PING_BURST, Server
from pysfu.signaling.session import Session
from pysfu.testing.live_stream import live_stream

ClientFactory = Callable[[], AbstractAsyncContextManager[SignalingClient]]

# Short deadlines so the deadline tests take seconds; the defaults are 10 s each.
TIMEOUT = 1.0
# These tests attack the listener itself, from 127.0.0.1 like the live stream: the
# per-address connection limits (issue 13, tests/test_access_limits.py) would refuse most
# of these connections before they reach what is tested here, so they are lifted.
UNLIMITED_ADDRESS = {"max_connections_per_address": 1_000_000,
                     "connections_per_second_per_address": 1e6,
                     "connection_burst_per_address": 1_000_000}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"http_timeout": TIMEOUT, "write_timeout": TIMEOUT, **UNLIMITED_ADDRESS}


@pytest.fixture(autouse=True)
def _no_crash_logged(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Any:
    """Unless a test forces a crash (``crash`` in its name): nothing is logged as an error."""
    caplog.set_level(logging.DEBUG, logger="pysfu")
    yield
    if "crash" not in request.node.name:
        crashed = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
        assert not crashed, [r.getMessage() for r in crashed]


# ---- helpers --------------------------------------------------------------------------------

async def exchange(port: int, data: bytes, *, timeout: float = 5.0,
                   half_close: bool = True) -> bytes:
    """Send ``data``, then read until the server closes; a reset ends the read too."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    with trio.fail_after(timeout):
        try:
            await stream.send_all(data)
            if half_close:
                await stream.send_eof()
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
    return bytes(received)


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {response[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, dict[str, str],
                                                                          bytes]:
    return parse(await exchange(port, method + b" " + target + b" HTTP/1.1\r\n"
                                b"Host: 127.0.0.1\r\n\r\n"))


async def assert_up(server: Server, client: ClientFactory) -> None:
    status, _, body = await get(server.port, b"/healthz")
    assert status == 200 and "rooms" in json.loads(body)
    async with client() as c:
        caps = await c.request("getRouterRtpCapabilities", {"roomId": "alive"})
        assert caps["rtpCapabilities"]["codecs"]


def upgrade_request(key: bytes | None = None, *, extra: bytes = b"") -> bytes:
    key = key or base64.b64encode(os.urandom(16))
    return (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key
            + b"\r\n" + extra + b"\r\n")


async def open_raw_websocket(port: int) -> tuple[trio.SocketStream, bytearray]:
    """A WebSocket by hand (to send frames no library would)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request())
    buf = bytearray()
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed during the handshake"
            buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    stream.head = head + b"\r\n\r\n"  # type: ignore[attr-defined]
    return stream, bytearray(rest)


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete (unmasked) server frames at the front of ``buf``, consumed."""
    frames = []
    while len(buf) >= 2:
        size, offset = buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                break
            size, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                break
            size, offset = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < offset + size:
            break
        frames.append((buf[0] & 0x0F, bytes(buf[offset:offset + size])))
        del buf[:offset + size]
    return frames


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- finding 1, 2, 12: request targets, methods, HEAD, headers ---------------------------

async def test_nul_byte_in_path(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        status, headers, _ = parse(await exchange(
            server.port, b"GET /a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        assert status == 400
        for target in (b"/a%00b", b"/%0a", b"/app.js%00.html", b"/\x01x", b"/\x7f"):
            assert (await get(server.port, target))[0] == 400, target
        await assert_up(server, client)
    live.assert_intact()


async def test_long_segment_and_traversal(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        assert (await get(server.port, b"/" + b"a" * 300))[0] == 404
        assert (await get(server.port, b"/x/" + b"b" * 300 + b"/app.js"))[0] == 404
        assert (await get(server.port, b"/" + b"c" * 5000))[0] == 414
        for target in (b"/../../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd",
                       b"/..%2fpyproject.toml", b"//etc/passwd", b"/web/dist/index.html",
                       b"/server.py"):
            assert (await get(server.port, target))[0] == 404, target
        status, _, body = await get(server.port, b"/app.js?v=1")
        assert status == 200 and body == (server_module.WEB_ROOT / "app.js").read_bytes()
        await assert_up(server, client)
    live.assert_intact()


async def test_methods_and_malformed(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"):
            status, headers, _ = await get(server.port, b"/", method)
            assert status == 405 and headers["allow"] == "GET, HEAD"
        for raw in (b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",  # 1.1 without Host
                    b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
                    b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"):
            status, _, _ = parse(await exchange(server.port, raw))
            assert status == 400, raw
        status, _, _ = parse(await exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n"))
        assert status == 431
        # Half a head, then the client closes: 400, nothing else.
        assert parse(await exchange(server.port, b"GET / HTTP/1.1\r\nHo"))[0] == 400
        assert await exchange(server.port, b"") == b""
        await assert_up(server, client)
    live.assert_intact()


async def test_pipelined_requests_get_one_answer_and_a_clean_close(
        server: Server, client: ClientFactory) -> None:
    """Two requests in one write: the first is answered whole, with ``Connection: close``,
    then the server closes cleanly (FIN, no reset that could destroy the answer in flight,
    even though the second request was never read); the client sends the second again."""
    one = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    two = b"GET /app.js HTTP/1.1\r\nHost: a\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    received = bytearray()
    with trio.fail_after(5):
        await stream.send_all(one + two + one)
        while chunk := await stream.receive_some(65536):  # a reset would raise here
            received += chunk
    await stream.aclose()
    status, headers, body = parse(bytes(received))
    assert status == 200 and headers["connection"] == "close"
    assert len(body) == int(headers["content-length"]) and "rooms" in json.loads(body)
    assert received.count(b"HTTP/1.1 ") == 1
    await assert_up(server, client)


async def test_static_files_revalidate_with_etag(server: Server, client: ClientFactory) -> None:
    app_js = (server_module.WEB_ROOT / "app.js").read_bytes()
    status, headers, body = await get(server.port, b"/app.js")
    assert status == 200 and body == app_js
    etag = headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    assert headers["cache-control"] == "no-cache"  # kept, but asked about each time
    for condition in (etag, f'"other", W/{etag}', "*"):
        raw = await exchange(server.port, b"GET /app.js HTTP/1.1\r\nHost: a\r\n"
                             b"If-None-Match: " + condition.encode() + b"\r\n\r\n")
        status, headers304, body = parse(raw)
        assert (status, body, headers304["etag"]) == (304, b"", etag), condition
        assert "content-length" not in headers304
        assert headers304["x-content-type-options"] == "nosniff"
    raw = await exchange(server.port, b'GET /app.js HTTP/1.1\r\nHost: a\r\n'
                         b'If-None-Match: "stale"\r\n\r\n')
    assert parse(raw)[0] == 200 and parse(raw)[2] == app_js
    # Each file has its own tag; what is not a file is never stored.
    assert (await get(server.port, b"/"))[1]["etag"] != etag
    assert (await get(server.port, b"/healthz"))[1]["cache-control"] == "no-store"
    assert "etag" not in (await get(server.port, b"/healthz"))[1]
    await assert_up(server, client)


async def test_a_request_body_is_413(server: Server, client: ClientFactory) -> None:
    """Nothing here takes a body: one announced (length or chunked) is refused, with the
    security headers, before anything is served or upgraded."""
    for extra in (b"Content-Length: 5\r\n\r\nhello", b"Content-Length: 10000000\r\n\r\n",
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
        for target in (b"/", b"/healthz"):
            raw = await exchange(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n"
                                 + extra)
            status, headers, _ = parse(raw)
            assert status == 413, (target, extra)
            assert headers["referrer-policy"] == "no-referrer"
        raw = await exchange(server.port, upgrade_request().removesuffix(b"\r\n") + extra)
        assert parse(raw)[0] == 413
    # Content-Length: 0 is no body.
    raw = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
                         b"Content-Length: 0\r\n\r\n")
    assert parse(raw)[0] == 200
    await assert_up(server, client)


async def test_head_has_no_body(server: Server, client: ClientFactory) -> None:
    app_js = (server_module.WEB_ROOT / "app.js").read_bytes()
    for target, size in ((b"/app.js", len(app_js)), (b"/", None), (b"/healthz", None),
                         (b"/missing", None)):
        raw = await exchange(server.port, b"HEAD " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = parse(raw)
        assert body == b"", target
        assert int(headers["content-length"]) > 0
        if size is not None:
            assert status == 200 and int(headers["content-length"]) == size
    await assert_up(server, client)


async def test_security_headers_on_every_answer(server: Server, client: ClientFactory) -> None:
    answers = [
        await exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"GET /app.js HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n"),
        await exchange(server.port, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
    ]
    stream, _ = await open_raw_websocket(server.port)  # the 101 (its head, kept below)
    answers.append(stream.head)  # type: ignore[attr-defined]
    await stream.aclose()
    statuses = []
    for raw in answers:
        status, headers, _ = parse(raw)
        statuses.append(status)
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "server" not in headers
    assert statuses == [200, 200, 200, 404, 405, 400, 400, 101]
    assert parse(answers[0])[1]["content-type"] == "text/html; charset=utf-8"
    await assert_up(server, client)


# ---- finding 3: reset during the upgrade ----------------------------------------------------

async def test_reset_during_upgrade(server: Server, client: ClientFactory) -> None:
    """A valid upgrade, then a TCP reset (SO_LINGER 0), at several moments of the handshake."""
    async with live_stream(server) as live:
        sessions = server.sessions  # the live stream's
        for i in range(60):
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await sock.connect(("127.0.0.1", server.port))
            await sock.send(upgrade_request())
            if i % 3 == 1:
                await trio.sleep(0)  # let the server get to accept()
            elif i % 3 == 2:
                await sock.recv(4096)  # the 101 arrived: reset an open WebSocket
            sock.close()  # RST
        with trio.fail_after(5):
            while server.sessions > sessions or server.handshakes:
                await trio.sleep(0.02)
        await assert_up(server, client)
    live.assert_intact()


# ---- finding 4 and the internal_error path --------------------------------------------------

async def test_deeply_nested_frame_gets_an_error(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message("[" * 30000 + "]" * 30000)
            with trio.fail_after(5):
                answer = json.loads(await ws.get_message())
            assert answer["event"] == "error", answer
            assert answer["data"]["code"] in {v for k, v in vars(errors).items() if k.isupper()}
        await assert_up(server, client)
    live.assert_intact()


async def test_crashing_handler_answers_internal_error(
    server: Server, client: ClientFactory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(self: Session, data: dict[str, Any]) -> tuple[str, dict]:
        raise RuntimeError("forced handler bug")

    async with live_stream(server) as live:
        # Sessions bind their handlers when they start: the live stream's are intact.
        monkeypatch.setattr(Session, "_get_caps", broken)
        async with client() as c:
            await crash_and_carry_on(server, c)
    live.assert_intact()
    record = next(r for r in caplog.records if r.getMessage() == "request.crashed")
    assert record.levelno == logging.ERROR
    line = LogfmtFormatter().format(record)
    assert "Traceback" in line and "RuntimeError: forced handler bug" in line
    assert "request=getRouterRtpCapabilities" in line


async def crash_and_carry_on(server: Server, c: SignalingClient) -> None:
    with pytest.raises(RequestFailed) as failed:
        await c.request("getRouterRtpCapabilities", {"roomId": "r"})
    assert failed.value.code == errors.INTERNAL_ERROR
    # The same connection carries on, and so does everyone else.
    joined = await c.join("after-crash", "viewer", "v1")
    assert joined["roomId"] == "after-crash"
    status, _, _ = await get(server.port, b"/healthz")
    assert status == 200


async def test_crash_escaping_a_session_closes_only_that_connection(
    server: Server, client: ClientFactory, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = Session.run

    async def run(self: Session) -> None:
        raise ValueError("forced session bug")

    async with live_stream(server) as live:
        monkeypatch.setattr(Session, "run", run)
        stream, _ = await open_raw_websocket(server.port)
        crash_port = stream.socket.getsockname()[1]
        await stream.send_all(client_frame(0x1, b'{"id":1,"event":"x"}'))
        with trio.fail_after(5):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
        await stream.aclose()
        monkeypatch.setattr(Session, "run", original)
        await assert_up(server, client)
    live.assert_intact()
    record = next(r for r in caplog.records if r.getMessage() == "connection.crashed")
    line = LogfmtFormatter().format(record)
    assert f"remote=127.0.0.1:{crash_port}" in line
    assert "ValueError: forced session bug" in line and "Traceback" in line


# ---- finding 9: invalid upgrades leave nothing behind; deadlines; bounded handshakes ------

INVALID_UPGRADES = [
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",  # no Connection, no key
    upgrade_request(b"short"),
    upgrade_request().replace(b"Version: 13", b"Version: 8"),
    b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    upgrade_request().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
]
UPGRADES = 20_000
BATCH = 100


async def test_invalid_upgrades_keep_no_memory(server: Server, client: ClientFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pysfu")  # captured records would be memory too
    async def one(i: int, statuses: dict[int, int]) -> None:
        raw = await exchange(server.port, INVALID_UPGRADES[i % len(INVALID_UPGRADES)],
                             timeout=30)
        status = parse(raw)[0] if raw else 0
        statuses[status] = statuses.get(status, 0) + 1

    async def flood(count: int) -> dict[int, int]:
        statuses: dict[int, int] = {}
        for start in range(0, count, BATCH):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(start + BATCH, count)):
                    nursery.start_soon(one, i, statuses)
        return statuses

    async with live_stream(server) as live:
        await flood(2_000)  # warm up allocator pools, caches, lazily imported code
        gc.collect()
        before = rss_bytes()
        start = trio.current_time()
        statuses = await flood(UPGRADES)
        elapsed = trio.current_time() - start
        with trio.fail_after(5):
            while server.handshakes:
                await trio.sleep(0.02)
        gc.collect()
        after = rss_bytes()
        await assert_up(server, client)
    live.assert_intact()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\n{UPGRADES} invalid upgrades in {elapsed:.1f} s: {statuses}; RSS before "
          f"{before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB "
          f"({(after - before) / UPGRADES:+.0f} B each), peak {peak / 2**20:.1f} MiB")
    assert sum(statuses.values()) == UPGRADES
    assert set(statuses) <= {400, 426}, statuses
    assert after <= before * 1.10, (before, after)
    assert server.sessions == 0 and server.handshakes == 0


async def test_head_deadline(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        # Nothing at all, then a head sent one byte every 0.1 s: closed at http_timeout,
        # however busy the client keeps the connection.
        start = trio.current_time()
        assert await exchange(server.port, b"", half_close=False) == b""
        assert TIMEOUT * 0.9 <= trio.current_time() - start <= TIMEOUT + 1.5

        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        start = trio.current_time()
        with trio.fail_after(TIMEOUT + 3):
            closed = False
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 1000:
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    closed = True
                    break
                with trio.move_on_after(0.1):
                    if not await stream.receive_some(1024):
                        closed = True
                        break
            assert closed
        assert trio.current_time() - start <= TIMEOUT + 1.5
        await stream.aclose()
        await assert_up(server, client)
    live.assert_intact()


async def test_websocket_handshake_deadline(server: Server, client: ClientFactory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline runs from connect to accepted WebSocket."""

    async def upgrade(head_delay: float) -> tuple[bytes, float]:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        start = trio.current_time()
        request = upgrade_request()
        data = b""
        with trio.fail_after(TIMEOUT + 3):
            try:
                await stream.send_all(request[:-4])
                await trio.sleep(head_delay)
                await stream.send_all(request[-4:])
                while b"\r\n\r\n" not in data and (chunk := await stream.receive_some()):
                    data += chunk
            except trio.BrokenResourceError:
                pass
        elapsed = trio.current_time() - start
        await stream.aclose()
        return data, elapsed

    async with live_stream(server) as live:
        # The head's last bytes just in time: accepted. Just too late: closed at the deadline.
        data, _ = await upgrade(TIMEOUT * 0.6)
        assert data.startswith(b"HTTP/1.1 101 ")
        data, elapsed = await upgrade(TIMEOUT * 1.3)
        assert not data.startswith(b"HTTP/1.1 101 ") and elapsed <= TIMEOUT * 1.3 + 1
        # A handshake that stalls after the head (here: accept() never finishes) is cut at
        # the deadline too, and its slot is given back.
        async def stalled_accept(self: Any, **kwargs: Any) -> Any:
            await trio.sleep_forever()

        monkeypatch.setattr(trio_websocket.WebSocketRequest, "accept", stalled_accept)
        data, elapsed = await upgrade(0)
        assert data == b"" and TIMEOUT * 0.9 <= elapsed <= TIMEOUT + 1.5
        monkeypatch.undo()
        assert server.handshakes == 0
        await assert_up(server, client)
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{"http_timeout": TIMEOUT, "max_handshakes": 4,
                                                **UNLIMITED_ADDRESS}])
async def test_handshakes_are_bounded(server: Server, client: ClientFactory) -> None:
    idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(4)]
    await trio.sleep(0.1)
    assert server.handshakes == 4
    start = trio.current_time()
    assert await exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                          half_close=False) == b""  # closed at once, no answer
    assert trio.current_time() - start < TIMEOUT / 2
    for stream in idle:
        with trio.fail_after(TIMEOUT + 2):
            assert await stream.receive_some(1024) == b""  # their deadline
        await stream.aclose()
    assert server.handshakes == 0
    await assert_up(server, client)


async def test_slow_reader_of_a_static_file(server: Server, client: ClientFactory,
                                            caplog: pytest.LogCaptureFixture) -> None:
    app_js = (server_module.WEB_ROOT / "app.js").read_bytes()
    async with live_stream(server) as live:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.port))
        await sock.send(b"GET /app.js HTTP/1.1\r\nHost: a\r\n\r\n")
        await trio.sleep(TIMEOUT + 1.0)  # read nothing past write_timeout
        received, closed = 0, False
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await sock.recv(65536)
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += len(chunk)
        sock.close()
        assert closed and received < len(app_js), received
        assert any(r.getMessage() == "http.slow_reader" for r in caplog.records)
        await assert_up(server, client)
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{
    "http_timeout": TIMEOUT, "write_timeout": TIMEOUT, "requests_per_second": 10000.0,
    "request_burst": 10000}])
async def test_slow_reader_of_signaling(server: Server, client: ClientFactory,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends requests but never reads the answers is closed after
    write_timeout, not waited for."""
    async with live_stream(server) as live:
        sessions = server.sessions
        stream, _ = await open_raw_websocket(server.port)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = client_frame(0x1, json.dumps({"id": 1, "event": "getRouterRtpCapabilities",
                                              "data": {"roomId": "slow"}}).encode())
        with trio.move_on_after(TIMEOUT * 2):
            for _ in range(2000):
                await stream.send_all(frame)
        with trio.fail_after(TIMEOUT * 2 + 3):
            while server.sessions > sessions:
                await trio.sleep(0.05)
        await stream.aclose()
        closed = [r for r in caplog.records if r.getMessage() == "websocket.closed"]
        assert [r.reason for r in closed] == ["slow_reader"]  # type: ignore[attr-defined]
        await assert_up(server, client)
    live.assert_intact()


# ---- finding 11: ping flood -----------------------------------------------------------------

async def test_ping_flood_is_closed_with_1008(server: Server, client: ClientFactory) -> None:
    async with live_stream(server) as live:
        stream, buf = await open_raw_websocket(server.port)
        try:
            await stream.send_all(client_frame(0x9, b"p") * 1000)
        except trio.BrokenResourceError:
            pass
        frames: list[tuple[int, bytes]] = []
        with trio.fail_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    buf += chunk
                    frames += server_frames(buf)
            except trio.BrokenResourceError:
                pass
        await stream.aclose()
        pongs = sum(1 for opcode, _ in frames if opcode == 0xA)
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert pongs <= PING_BURST + 1, pongs
        assert closes and struct.unpack("!H", closes[0][:2])[0] == 1008, frames[-3:]
        # A client that pings at a sane rate is left alone.
        stream, buf = await open_raw_websocket(server.port)
        for _ in range(30):
            await stream.send_all(client_frame(0x9, b"ok"))
            await trio.sleep(0.06)
        with trio.fail_after(2):
            while len(frames := server_frames(buf)) < 30 and (chunk := await stream.receive_some()):
                buf += chunk
        await stream.aclose()
        await assert_up(server, client)
    live.assert_intact()


FLOODER = textwrap.dedent("""
    import base64, json, os, socket, sys, time
    port, duration = int(sys.argv[1]), float(sys.argv[2])
    ping = bytes([0x89, 0x80]) + b"\\0\\0\\0\\0"
    stats = {"connections": 0, "pings_written": 0, "pongs": 0, "closed_1008": 0}
    end = time.monotonic() + duration
    while time.monotonic() < end:
        s = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: a\\r\\nUpgrade: websocket\\r\\n"
                  b"Connection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
                  b"Sec-WebSocket-Key: " + key + b"\\r\\n\\r\\n")
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            data += s.recv(4096)
        stats["connections"] += 1
        s.settimeout(0.5)
        try:
            while time.monotonic() < end:
                s.sendall(ping * 500)
                stats["pings_written"] += 500
        except OSError:
            pass
        try:
            rest = data.split(b"\\r\\n\\r\\n", 1)[1]
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
        stats["pongs"] += rest.count(b"\\x8a\\x00")  # empty pongs
        if b"\\x88\\x10\\x03\\xf0" in rest:  # close frame, 1008, "too many pings"
            stats["closed_1008"] += 1
        s.close()
    print(json.dumps(stats))
""")


async def test_ping_flood_does_not_slow_other_peers(server: Server,
                                                    client: ClientFactory) -> None:
    """Another peer's signaling round trip with and without a ping flood (another process,
    pinging as fast as it can, reconnecting whenever it is closed)."""

    async def round_trips(c: SignalingClient, seconds: float) -> list[float]:
        times = []
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            start = trio.current_time()
            await c.request("getRouterRtpCapabilities", {"roomId": "other"})
            times.append(1000 * (trio.current_time() - start))
            await trio.sleep(0.025)
        return times

    async with live_stream(server) as live, client() as other:
        await other.join("other", "viewer", "o")
        quiet = await round_trips(other, 1.5)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", FLOODER, str(server.port), "3"], stdout=subprocess.PIPE)
        await trio.sleep(0.3)
        flooded = await round_trips(other, 2.0)
        with trio.fail_after(15):
            await proc.wait()
            assert proc.stdout is not None
            out = b""
            while chunk := await proc.stdout.receive_some():
                out += chunk
        stats = json.loads(out)
        await assert_up(server, client)
    summary = live.assert_intact()
    p50_quiet, p50_flood = statistics.median(quiet), statistics.median(flooded)
    print(f"\nping flood {stats}: other peer's signaling p50 {p50_quiet:.1f} ms quiet, "
          f"{p50_flood:.1f} ms flooded (p90 {sorted(flooded)[int(0.9 * len(flooded))]:.1f}); "
          f"live stream {summary}")
    assert stats["connections"] >= 1 and stats["closed_1008"] >= 1
    assert stats["pongs"] <= (PING_BURST + 1) * stats["connections"]
    assert p50_flood < max(50.0, 5 * p50_quiet), (quiet, flooded)


@pytest.mark.parametrize("config_overrides", [{"http_timeout": TIMEOUT, "join_timeout": 0.3,
                                                **UNLIMITED_ADDRESS}])
async def test_ping_while_the_server_closes(server: Server, client: ClientFactory) -> None:
    """The server closes (here: no join within join_timeout) and the client pings before
    answering the close: trio-websocket then tries to send a pong in the closing state and
    wsproto raises LocalProtocolError in its reader task. That is the client's timing, not a
    bug of ours: the connection ends quietly (no error logged, checked by the fixture)."""
    stream, buf = await open_raw_websocket(server.port)
    with trio.fail_after(5):
        while not any(op == 0x8 for op, _ in server_frames(buf)):
            buf += await stream.receive_some()
    try:
        await stream.send_all(client_frame(0x9, b"late") * 3)
        with trio.fail_after(5):
            while await stream.receive_some():
                pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    await assert_up(server, client)


async def test_control_frame_counter_follows_frames_across_chunks() -> None:
    """The ping counter under the WebSocket library: frames of every length encoding, split
    anywhere, and the offset of the first ping over the burst."""
    from pysfu.server import _ControlFrameCounter

    frames = [client_frame(0x1, b"x" * 5), client_frame(0x2, b"y" * 300),
              client_frame(0x1, b"z" * 70000), client_frame(0xA, b"pong")]
    pings = [client_frame(0x9, b"p%d" % i) for i in range(PING_BURST + 1)]
    stream = b"".join(frames + pings)
    over_at = len(b"".join(frames + pings[:-1]))  # where the ping over the burst starts
    for split in (1, 7, 4096, len(stream)):
        counter = _ControlFrameCounter(rate=0.001, burst=PING_BURST + 1)  # + the pong
        found = None
        for start in range(0, len(stream), split):
            offset = counter.feed(stream[start:start + split])
            if offset is not None:
                found = start + offset
                break
        # Found once its 6-byte header is complete; a header begun in an earlier chunk is
        # reported at 0 of the current chunk (the part already passed up is incomplete).
        assert found is not None and over_at <= found < over_at + 6, (split, found, over_at)
