"""The server: one HTTP/WebSocket listener (signaling, demo page) and one media engine.

``serve(config)`` runs until cancelled. Tests start it on port 0 with ``nursery.start`` and
get the ``Server`` back, with the real ports.

The listener faces anyone, so every connection runs inside a boundary
(``Server._handle_connection``): whatever escapes it (an exception group from a nursery, a
reset during the WebSocket handshake, a bug in a request handler) is logged with the client's
address and closes that connection only. ``trio.serve_tcp`` does not catch handler errors: one
escaping exception would cancel the listener and every room with it.

Deadlines and bounds, each named below or a config setting: the request head must arrive
within ``http_timeout`` and the WebSocket be accepted within ``http_timeout`` of the TCP
connect; each write to a client gets ``write_timeout``; at most ``max_handshakes`` connections
are between accept and answer at once (over that a new connection is closed at once);
WebSocket ping/pong frames are limited per connection (``PINGS_PER_SECOND``).

Access (issue 13): every TCP connection counts against its address's limits
(``pysfu.limits``: connections at once, new connections per second; over either it is closed
at once, unanswered); a WebSocket upgrade whose ``Origin`` is not in ``allowed_origins`` is
answered 403 before any WebSocket exists; a ``?token=`` in the upgrade's URL is handed to the
session (join tokens, ``pysfu.auth``). Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote_to_bytes

import h11
import trio
import trio_websocket
import wsproto.utilities

from pysfu import errors, ortc
from pysfu.auth import MAX_TOKEN_LENGTH
from pysfu.config import Config, normal_origin
from pysfu.context import ServerContext
from pysfu.dtls import Certificate
from pysfu.limits import TokenBucket, address_key
from pysfu.log import log_event
from pysfu.media import MediaEngine
from pysfu.metrics import CONTENT_TYPE_LATEST, EngineCollector, RoomGauges, build_registry, render
from pysfu.plain_admin import admin_plain
from pysfu.room import Room, RoomError, RoomRegistry
from pysfu.signaling.session import Session

logger = logging.getLogger("pysfu.server")

WEB_ROOT = Path(__file__).parent / "web" / "dist"

# HTTP request head (request line + headers), bytes: h11's max_incomplete_event_size. Over it
# the answer is 431. wsproto parses the head again with h11's default, which is the same.
MAX_HEAD_SIZE = 16 * 1024
# Request target (path and query), bytes; longer is 414 (no file of ours has such a name;
# room for a join token in ``/ws?token=``).
MAX_TARGET_LENGTH = MAX_TOKEN_LENGTH + 512
RECEIVE_SIZE = 4096
# After an answer we half-close and read what the client still sends for at most this long
# (and this much), so that unread request bytes do not turn our close into a reset that
# destroys the answer in flight.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 64 * 1024
# A connection over its address's limits gets a 503 (a client library fails at once with a
# clear status instead of waiting for a handshake that never comes), lingering this long at
# most; beyond this many such answers in flight, further ones are closed unanswered (a flood
# costs no more than before).
REFUSAL_LINGER = 0.25
MAX_REFUSAL_ANSWERS = 256
REFUSAL_BODY = b"too many connections from this address: try again later\n"
# WebSocket control frames (ping, pong) a client may send: a token bucket per connection.
# Browsers send none on their own; libraries ping every few seconds.
PINGS_PER_SECOND = 20.0
PING_BURST = 40
CLOSE_POLICY_VIOLATION = 1008
# During a graceful shutdown, how often we look whether any signaling session is left.
SHUTDOWN_POLL = 0.05

# The demo page (pysfu/web/dist) loads only its own script and style sheet, uses a data: URL
# as favicon and opens a WebSocket to its own origin ('self' covers ws:// and wss:// of the
# page's host in CSP Level 3 browsers).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()),
)
_REASONS = {
    200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 409: b"Conflict", 503: b"Service Unavailable",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
}
# Static files keep their names across builds (app.js, styles.css), so a browser keeps its
# copy but asks each time whether it is still current (ETag -> 304). Everything else
# (/healthz, errors) is never stored.
STATIC_CACHE_CONTROL = b"no-cache"
NO_STORE = b"no-store"

# A client that goes away (reset, close, half-sent frame): not our bug, logged quietly.
# LocalProtocolError too: trio-websocket answers a ping that arrives while we close the
# connection (join deadline, overflow) with a pong that wsproto refuses in that state, in its
# reader task; the client's timing, not a bug of ours (tests: test_ping_while_the_server_closes).
_DISCONNECTS = (
    trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed,
    ConnectionError, wsproto.utilities.LocalProtocolError,
)


class StartupError(Exception):
    """The server cannot start (a port in use, ...): one line for the operator."""


class StaticFile(NamedTuple):
    body: bytes
    content_type: bytes
    etag: bytes  # a strong validator: a hash of the content, quoted


def load_static(root: Path = WEB_ROOT) -> dict[str, StaticFile]:
    """Every file under ``root``, read once: URL path -> its content, type and ETag.

    Requests are answered from this dict only, so nothing a client sends (NUL bytes, long or
    ``..`` segments) ever reaches the file system."""
    files: dict[str, StaticFile] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript",
                                                      "application/json"):
                ctype += "; charset=utf-8"
            body = path.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
            files["/" + path.relative_to(root).as_posix()] = StaticFile(body, ctype.encode(),
                                                                        etag)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


def _remote(stream: trio.SocketStream) -> str:
    return _peer(stream)[1]


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """(the client's IP, "ip:port")."""
    try:
        ip, port, *_ = stream.socket.getpeername()
    except OSError:  # already gone
        return "?", "?"
    return ip, f"{ip}:{port}"


def own_origins(config: Config, port: int) -> list[str]:
    """The default allowed_origins: http(s)://name:port for the listen address, the
    announced name, and localhost when listening on loopback; and the announced name on the
    default ports (a TLS proxy in front usually serves the page at https://name)."""
    names: list[str] = []
    host = ipaddress.ip_address(config.host)
    if not host.is_unspecified:
        names.append(f"[{host}]" if host.version == 6 else str(host))
    if host.is_loopback:
        names.append("localhost")
    if config.announced_ip:
        try:
            announced = ipaddress.ip_address(config.announced_ip)
            names.append(f"[{announced}]" if announced.version == 6 else str(announced))
        except ValueError:
            names.append(config.announced_ip.rstrip(".").lower())
    candidates = [f"{scheme}://{name}:{port}" for name in names for scheme in ("http", "https")]
    if config.announced_ip:
        candidates += [f"https://{names[-1]}", f"http://{names[-1]}"]
    origins: list[str] = []
    for candidate in candidates:
        origin = normal_origin(candidate)
        if origin is not None and origin not in origins:
            origins.append(origin)
    return origins


class _BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class _Head:
    request: h11.Request
    raw: bytes  # the head exactly as received
    rest: bytes  # bytes received after the head (a client may send frames right away)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.request.headers:
            if key == name:  # h11 lower-cases names
                return value
        return None


class _ControlFrameCounter:
    """Follows RFC 6455 frame boundaries in the bytes a client sends, to count ping and pong
    frames before anything parses them.

    Why here: trio-websocket answers pings inside its reader task (``_handle_ping_event``),
    where no public hook exists; subclassing it would mean copying ``wrap_server_stream`` and
    relying on private methods. The framing is fixed by the RFC, so counting in the stream
    below the library costs a few integer operations per frame and stays correct whatever
    the library version does."""

    def __init__(self, rate: float, burst: int) -> None:
        self._bucket = TokenBucket(rate, burst, trio.current_time())
        self._header = bytearray()
        self._skip = 0  # payload bytes of the current frame still to pass

    def _header_length(self) -> int:
        if len(self._header) < 2:
            return 2
        second = self._header[1]
        size = second & 0x7F
        return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if second & 0x80 else 0)

    def feed(self, data: bytes) -> int | None:
        """Account ``data``; the offset where a control frame over the limit starts (within
        ``data``, 0 if its header began in an earlier chunk), else None."""
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            start = i - len(self._header)
            take = min(self._header_length() - len(self._header), n - i)
            self._header += data[i:i + take]
            i += take
            if len(self._header) < self._header_length():
                continue
            opcode = self._header[0] & 0x0F
            size = self._header[1] & 0x7F
            if size == 126:
                size = int.from_bytes(self._header[2:4], "big")
            elif size == 127:
                size = int.from_bytes(self._header[2:10], "big")
            self._header.clear()
            self._skip = size
            if opcode in (0x9, 0xA) and not self._bucket.take(trio.current_time()):
                return max(start, 0)
        return None


class _WebSocketStream(trio.abc.Stream):
    """The client's TCP stream as trio-websocket sees it.

    It replays the HTTP head we already read, counts ping/pong frames (over the limit: a
    1008 close frame, then end of stream), gives every write ``write_timeout`` (a client
    that does not read is dropped, not waited for), and calls ``on_close`` when the library
    closes the stream (it does so on a rejected handshake and then never hands out a
    request: ``on_close`` ends our wait instead of leaving the task parked forever)."""

    def __init__(self, stream: trio.SocketStream, head: _Head, write_timeout: float) -> None:
        self._stream = stream
        self._replay = head.raw
        self._pending = head.rest
        self._write_timeout = write_timeout
        self._send_lock = trio.Lock()
        self._pings = _ControlFrameCounter(PINGS_PER_SECOND, PING_BURST)
        self._ended = False  # no more bytes go up (ping flood)
        self._write_closed = False
        self.violation: str | None = None
        self.on_close: Callable[[], None] | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = max_bytes or RECEIVE_SIZE
        if self._replay:
            data, self._replay = self._replay[:size], self._replay[size:]
            return data
        if self._ended:
            return b""
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
        else:
            data = await self._stream.receive_some(max_bytes)
        over = self._pings.feed(data)
        if over is not None:
            self._ended = True
            self.violation = "ping_flood"
            await self._close_frame(CLOSE_POLICY_VIOLATION, b"too many pings")
            return data[:over]  # the frames before the offending one; b"" is end of stream
        return data

    async def _close_frame(self, code: int, reason: bytes) -> None:
        payload = struct.pack("!H", code) + reason[:123]
        async with self._send_lock:
            if self._write_closed:
                return
            self._write_closed = True
            # Whole frames only go through this lock, so the close frame cannot split one.
            with trio.move_on_after(min(self._write_timeout, 1.0)):
                await self._stream.send_all(bytes([0x88, len(payload)]) + payload)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            if self._write_closed:
                raise trio.ClosedResourceError("connection closed by the server")
            with trio.move_on_after(self._write_timeout) as scope:
                await self._stream.send_all(data)
            if scope.cancelled_caught:
                self._write_closed = True
                self.violation = self.violation or "slow_reader"
                raise trio.BrokenResourceError("client did not read within write_timeout")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self.on_close is not None:
            self.on_close()
        await self._stream.aclose()


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        caps = ortc.generate_router_rtp_capabilities(config.media_codecs, transport_cc=True)
        try:
            self.media = MediaEngine(config.rtc_ip, config.rtc_port, udp=config.enable_udp,
                                     tcp=config.enable_tcp, gso=config.gso,
                                     gro=config.gro, workers=config.workers,
                                     pin_workers=config.pin_workers,
                                     consent_timeout=config.consent_timeout)
        except (OSError, ValueError) as exc:
            raise StartupError(
                f"cannot open the media port {config.rtc_ip}:{config.rtc_port} "
                f"(rtc_ip/rtc_port): {exc}") from None
        self.ctx = ServerContext(config, Certificate.generate(), caps, self.media)
        self.static = load_static()
        self.rooms: RoomRegistry | None = None
        self.port: int = config.port
        self.metrics_port: int | None = None  # the metrics listener's port, once listening
        self.shutting_down = False
        self.refusal_answers = 0  # 503 answers to refused connections in flight
        self.registry = build_registry(self.ctx.metrics, EngineCollector(
            self.media, self.ctx.metrics, self.room_gauges, self._refusal_counts))
        self.sessions = 0
        self.handshakes = 0  # connections between accept and answer / accepted WebSocket
        self.allowed_origins: frozenset[str] | None = None  # None = any; set once listening
        self.cluster: Any = None  # pysfu.cluster.node.Cluster with cluster_redis_url

    @property
    def rtc_port(self) -> int:
        return self.media.port

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.rooms = RoomRegistry(self.ctx, nursery)
                nursery.start_soon(self.media.run)
                try:
                    listeners = await trio.open_tcp_listeners(self.config.port,
                                                              host=self.config.host)
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on {self.config.host}:{self.config.port} "
                        f"(host/port, HTTP and WebSocket): {exc.strerror or exc}") from None
                await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
                self.port = listeners[0].socket.getsockname()[1]
                origins = self.config.allowed_origins
                if origins is None:
                    origins = own_origins(self.config, self.port)
                self.allowed_origins = None if "*" in origins else frozenset(origins)
                if self.config.metrics_port:
                    await self._listen_metrics(nursery)
                log_event(logger, "server.listening", host=self.config.host, port=self.port,
                          rtc_port=self.rtc_port, announced_ip=self.config.candidate_ip,
                          metrics_port=self.metrics_port,
                          auth="token" if self.config.auth_enabled else "open_rooms")
                if self.config.open_rooms and self.config.exposed:
                    log_event(logger, "server.open_rooms", level=logging.WARNING,
                              host=self.config.host,
                              warning="allow_open_rooms: no auth_secret, anyone who reaches "
                                      "this address may create and join any room")
                if self.config.cluster_redis_url is not None:
                    await self._join_cluster(nursery)
                task_status.started(self)
        finally:
            self.media.close()

    async def _join_cluster(self, nursery: trio.Nursery) -> None:
        """Several nodes (pysfu/cluster/): register in Redis, take part in placement."""
        from pysfu.cluster.node import Cluster, default_load

        cfg = self.config
        url = cfg.node_url or f"ws://{cfg.host}:{self.port}/ws"
        self.cluster = Cluster(cfg, signaling_url=lambda: url,
                               load=lambda: default_load(self.rooms, self.media.totals,
                                                         self.draining))
        assert self.rooms is not None
        try:
            with trio.fail_after(10):
                await nursery.start(self.cluster.run, self.rooms)
        except Exception as exc:
            failure = _redis_failure(exc)
            if failure is None:
                raise
            raise StartupError(f"cannot use cluster_redis_url: {failure}") from None

    async def _listen_metrics(self, nursery: trio.Nursery) -> None:
        cfg = self.config
        try:
            listeners = await trio.open_tcp_listeners(cfg.metrics_port, host=cfg.metrics_host)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {cfg.metrics_host}:{cfg.metrics_port} (metrics_host/"
                f"metrics_port, Prometheus; 0 turns it off): {exc.strerror or exc}") from None
        await nursery.start(trio.serve_listeners, self._metrics_connection, listeners)
        self.metrics_port = listeners[0].socket.getsockname()[1]

    # ---- shutdown and draining ------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.rooms is not None and self.rooms.draining

    def set_draining(self, draining: bool) -> None:
        """Refuse new rooms (joins of unknown rooms get ``unavailable``), keep the others."""
        if self.rooms is not None and self.rooms.draining != draining:
            self.rooms.draining = draining
            log_event(logger, "server.draining" if draining else "server.undrained")

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful stop: no new rooms or connections, every peer told
        ``serverShuttingDown {reconnectInMs}``, then after ``grace`` (shutdown_grace) every
        room closed with reason ``server_shutdown`` (peers get ``roomClosed``), or sooner once
        no signaling session is left. The caller cancels the server afterwards."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.shutting_down = True
        self.set_draining(True)
        rooms = list(self.rooms.rooms.values()) if self.rooms is not None else []
        log_event(logger, "server.shutting_down", rooms=len(rooms), grace=grace)
        notice = {"reconnectInMs": self.config.shutdown_reconnect_ms,
                  "graceMs": int(grace * 1000)}
        for room in rooms:
            room.notify_all("serverShuttingDown", notice)
        if rooms:
            # The grace is for connected peers to move; once every signaling session has
            # gone (peers left, or only hosts in their grace period remain) nobody is waiting.
            started = trio.current_time()
            with trio.move_on_after(grace):
                while self.sessions:
                    await trio.sleep(SHUTDOWN_POLL)
                log_event(logger, "server.drained", rooms=len(rooms),
                          after=round(trio.current_time() - started, 2))
        for room in list(self.rooms.rooms.values()) if self.rooms is not None else []:
            room.close("server_shutdown")
        # Let the sessions' writers send roomClosed before the caller cancels everything.
        with trio.move_on_after(min(1.0, self.config.write_timeout)):
            while self.sessions:
                await trio.sleep(0.02)

    # ---- metrics --------------------------------------------------------------------------

    def room_gauges(self) -> RoomGauges:
        g = RoomGauges(sessions=self.sessions, draining=self.draining)
        for room in self.rooms.rooms.values() if self.rooms is not None else ():
            g.rooms += 1
            for peer in room.peers.values():
                g.peers[peer.role] += 1
            for t in room.transports.values():
                g.transports[(t.ice.state, t.dtls.state if t.dtls is not None else "new")] += 1
            for p in room.producers.values():
                g.producers[p.kind] += 1
            for c in room.consumers.values():
                g.consumers[c.kind] += 1
        return g

    def _refusal_counts(self) -> dict[str, int]:
        limits = self.ctx.limits
        return dict(limits.refusals.counts) if limits is not None else {}

    async def _metrics_connection(self, stream: trio.SocketStream) -> None:
        """GET /metrics on the metrics listener (nothing else there)."""
        remote = _remote(stream)
        try:
            head = None
            with trio.move_on_after(self.config.http_timeout):
                head = await self._read_head(stream)
            if head is None:
                return
            path = _path(head.request.target)
            if path != "/metrics":
                await self._respond(stream, 404, b"not found: try /metrics\n")
            elif head.request.method not in (b"GET", b"HEAD"):
                await self._respond(stream, 405, b"method not allowed\n",
                                    extra=((b"Allow", b"GET, HEAD"),))
            else:
                body = render(self.registry)
                await self._respond(stream, 200, body, CONTENT_TYPE_LATEST.encode(),
                                    head_only=head.request.method == b"HEAD")
        except _BadRequest as exc:
            with trio.move_on_after(self.config.write_timeout):
                await self._respond(stream, exc.status, b"bad request\n")
        except _DISCONNECTS:
            pass
        except Exception:
            log_event(logger, "metrics.crashed", level=logging.ERROR, remote=remote,
                      exc_info=True)
        finally:
            await trio.aclose_forcefully(stream)

    # ---- one connection ---------------------------------------------------------------------

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        """The boundary: nothing a connection does may escape into the listener."""
        ip, remote = _peer(stream)
        if self.shutting_down:  # stop accepting: closed unanswered
            await trio.aclose_forcefully(stream)
            return
        address = address_key(ip)
        limits = self.ctx.limits
        assert limits is not None
        closed = limits.open_connection(address, trio.current_time())
        if closed is None:  # over its address's limits: counted and logged there
            await self._refuse(stream)
            return
        try:
            await self._connection(stream, remote, address)
        except* _DISCONNECTS as group:
            log_event(logger, "connection.dropped", level=logging.DEBUG, remote=remote,
                      reason=_describe(group))
        except* Exception as group:
            log_event(logger, "connection.crashed", level=logging.ERROR, remote=remote,
                      exc_info=_single(group))
        finally:
            closed(trio.current_time())
            await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        try:
            if self.refusal_answers < MAX_REFUSAL_ANSWERS:
                self.refusal_answers += 1
                try:
                    await self._respond(stream, 503, REFUSAL_BODY, linger=REFUSAL_LINGER,
                                        extra=((b"Retry-After", b"1"),))
                finally:
                    self.refusal_answers -= 1
        except _DISCONNECTS:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream, remote: str,
                          address: str = "") -> None:
        if self.handshakes >= self.config.max_handshakes:
            log_event(logger, "connection.refused", level=logging.DEBUG, remote=remote,
                      reason="max_handshakes")
            return
        deadline = trio.current_time() + self.config.http_timeout
        self.handshakes += 1
        in_handshake = True

        def handshake_done() -> None:
            nonlocal in_handshake
            if in_handshake:
                in_handshake = False
                self.handshakes -= 1

        try:
            head: _Head | None = None
            bad: _BadRequest | None = None
            with trio.move_on_at(deadline):
                try:
                    head = await self._read_head(stream)
                    if head is not None:
                        if head.request.http_version not in (b"1.0", b"1.1"):
                            raise _BadRequest(400, "HTTP/1.0 or HTTP/1.1 only")
                        _path(head.request.target)  # 400/414 before anything else
                        if _has_body(head):
                            raise _BadRequest(413, "no request here takes a body")
                except _BadRequest as exc:
                    bad = exc
            if bad is not None:
                handshake_done()
                log_event(logger, "http.bad_request", level=logging.DEBUG, remote=remote,
                          status=bad.status, reason=str(bad))
                await self._respond(stream, bad.status,
                                    _REASONS.get(bad.status, b"bad request").lower() + b"\n")
                return
            if head is None:  # closed, or too slow to send a complete head
                log_event(logger, "http.no_request", level=logging.DEBUG, remote=remote,
                          reason="timeout" if trio.current_time() >= deadline else "closed")
                return
            await self._dispatch(stream, head, remote, deadline, handshake_done, address,
                                 _peer(stream)[0])
        finally:
            handshake_done()

    async def _read_head(self, stream: trio.SocketStream) -> _Head | None:
        """The request head parsed by h11; None if the client closed before sending one."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        raw = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                raise _BadRequest(status, str(exc)) from None
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    if not raw:
                        return None
                    conn.receive_data(b"")  # h11 now says whether the head was complete
                    continue
                raw += chunk
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Request):
                rest = conn.trailing_data[0]
                head_size = len(raw) - len(rest)
                if head_size > MAX_HEAD_SIZE:  # h11 checks only heads still incomplete
                    raise _BadRequest(431, "request head too large")
                return _Head(event, bytes(raw[:head_size]), bytes(rest))
            return None  # h11.ConnectionClosed and the like: nothing to answer

    async def _dispatch(self, stream: trio.SocketStream, head: _Head, remote: str,
                        deadline: float, handshake_done: Callable[[], None],
                        address: str = "", ip: str = "") -> None:
        request = head.request
        path = _path(request.target)
        method = request.method
        if path.startswith("/admin/"):
            handshake_done()
            status, answer = self._admin(head, path, ip)
            await self._respond(stream, status, json.dumps(answer).encode() + b"\n",
                                b"application/json", head_only=method == b"HEAD")
            return
        if path == "/ws" and head.header(b"upgrade") is not None:
            if not self._origin_allowed(head.header(b"origin")):
                handshake_done()
                assert self.ctx.limits is not None
                self.ctx.limits.refusals.note("origin", address, trio.current_time())
                await self._respond(stream, 403, b"origin not allowed\n")
                return
            problem = _websocket_problem(head)
            if problem is not None:
                handshake_done()
                log_event(logger, "websocket.bad_upgrade", level=logging.DEBUG, remote=remote,
                          reason=problem[1])
                extra = ((b"Sec-WebSocket-Version", b"13"),) if problem[0] == 426 else ()
                await self._respond(stream, problem[0], problem[1].encode() + b"\n",
                                    extra=extra)
                return
            await self._websocket(stream, head, remote, deadline, handshake_done, address)
            return
        handshake_done()
        if method not in (b"GET", b"HEAD"):
            await self._respond(stream, 405, b"method not allowed\n",
                                extra=((b"Allow", b"GET, HEAD"),))
            return
        head_only = method == b"HEAD"
        if path == "/healthz":
            await self._respond(stream, 200, json.dumps(self.health()).encode(),
                                b"application/json", head_only=head_only)
        elif path == "/ws":
            await self._respond(stream, 426, b"websocket upgrade expected\n",
                                extra=((b"Upgrade", b"websocket"),), head_only=head_only)
        elif path in self.static:
            file = self.static[path]
            validator = ((b"ETag", file.etag),)
            if _etag_matches(head.header(b"if-none-match"), file.etag):
                await self._respond(stream, 304, b"", cache=STATIC_CACHE_CONTROL,
                                    extra=validator)
            else:
                await self._respond(stream, 200, file.body, file.content_type,
                                    head_only=head_only, cache=STATIC_CACHE_CONTROL,
                                    extra=validator)
        else:
            await self._respond(stream, 404, b"not found\n", head_only=head_only)

    def _origin_allowed(self, origin: bytes | None) -> bool:
        """A browser's page may open the WebSocket only from an allowed origin; clients that
        send no Origin (bots, servers) are not browsers and are let through."""
        if origin is None or self.allowed_origins is None:
            return True
        try:
            text = origin.decode("ascii")
        except UnicodeDecodeError:
            return False
        normal = normal_origin(text)
        return normal is not None and normal in self.allowed_origins

    async def _websocket(self, stream: trio.SocketStream, head: _Head, remote: str,
                         deadline: float, handshake_done: Callable[[], None],
                         address: str = "") -> None:
        wrapped = _WebSocketStream(stream, head, self.config.write_timeout)
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            with trio.move_on_at(deadline) as scope:
                wrapped.on_close = scope.cancel
                request = await trio_websocket.wrap_server_stream(
                    nursery, wrapped, message_queue_size=4,
                    max_message_size=self.config.max_message_size,
                )
                ws = await request.accept(extra_headers=list(SECURITY_HEADERS))
            wrapped.on_close = None
            handshake_done()
            if ws is None:
                log_event(logger, "websocket.handshake_failed", level=logging.DEBUG,
                          remote=remote,
                          reason="timeout" if trio.current_time() >= deadline else "closed")
                nursery.cancel_scope.cancel()
                return
            assert self.rooms is not None
            self.sessions += 1
            try:
                await Session(ws, self.ctx, self.rooms, remote=remote,
                              address=address or None,
                              url_token=_url_token(head.request.target)).run()
            finally:
                self.sessions -= 1
                nursery.cancel_scope.cancel()
        if wrapped.violation is not None:
            log_event(logger, "websocket.closed", level=logging.INFO, remote=remote,
                      reason=wrapped.violation)

    async def _respond(self, stream: trio.SocketStream, status: int, body: bytes,
                       ctype: bytes = b"text/plain; charset=utf-8", *, head_only: bool = False,
                       cache: bytes = NO_STORE, linger: float = LINGER_TIMEOUT,
                       extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """One answer, then a clean close (our FIN after the answer, then what the client
        still sends is read and dropped, so it cannot turn the close into a reset): security
        headers on every answer, no Server header, no body for HEAD or 304,
        ``write_timeout`` for the whole answer. Requests pipelined behind the first are not
        answered; ``Connection: close`` tells the client to send them again."""
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
        if status != 304:
            lines += [b"Content-Type: " + ctype, b"Content-Length: %d" % len(body)]
        lines += [b"Cache-Control: " + cache, b"Connection: close"]
        lines += [name + b": " + value for name, value in SECURITY_HEADERS + extra]
        with trio.move_on_after(self.config.write_timeout) as scope:
            await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
            if body and not head_only:
                await stream.send_all(body)  # shared bytes: nothing copied per connection
            await stream.send_eof()
        if scope.cancelled_caught:
            log_event(logger, "http.slow_reader", level=logging.DEBUG, remote=_remote(stream),
                      status=status)
            return
        with trio.move_on_after(linger):
            drained = 0
            while drained < LINGER_BYTES:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)

    def health(self) -> dict[str, Any]:
        rooms = self.rooms.rooms if self.rooms is not None else {}
        limits = self.ctx.limits
        return {
            "rooms": len(rooms),
            "sessions": self.sessions,
            "engine": self.media.counts(),
            "open_rooms": self.config.open_rooms,
            "refused": dict(limits.refusals.counts) if limits is not None else {},
            # A load balancer sends no new rooms to a draining (or stopping) node.
            "status": ("shutting_down" if self.shutting_down
                       else "draining" if self.draining else "ok"),
            "draining": self.draining,
            **({"node": self.cluster.node_id} if self.cluster is not None else {}),
        }

    # ---- admin API ------------------------------------------------------------------------

    def _admin_allowed(self, head: _Head, ip: str) -> tuple[int, dict[str, Any]] | None:
        """None if the client may use the admin API, else the error answer."""
        token = self.config.admin_token
        if token is None:
            if _is_loopback(ip):
                return None
            return _admin_error(403, errors.FORBIDDEN,
                                "the admin API answers loopback clients only (no admin_token)")
        given = head.header(b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token.encode()):
            return None
        return _admin_error(401, errors.UNAUTHORIZED, "missing or wrong admin bearer token")

    def _admin(self, head: _Head, path: str, ip: str) -> tuple[int, dict[str, Any]]:
        """One admin request: (HTTP status, JSON answer)."""
        refused = self._admin_allowed(head, ip)
        if refused is not None:
            return refused
        method = head.request.method
        parts = [p for p in path.split("/")[2:] if p]
        query = _query(head.request.target)
        reason = query.get("reason", "admin")[:64] or "admin"
        read = method in (b"GET", b"HEAD")
        rooms = self.rooms.rooms if self.rooms is not None else {}
        try:
            if parts == ["rooms"] and read:
                return 200, {"rooms": [room.describe() for room in rooms.values()],
                             "draining": self.draining}
            if parts == ["status"] and read:
                return 200, self.health()
            if parts in (["drain"], ["undrain"]) and method == b"POST":
                self.set_draining(parts[0] == "drain")
                return 200, {"draining": self.draining}
            if len(parts) >= 2 and parts[0] == "rooms":
                room = rooms.get(parts[1])
                if room is None or room.closed:
                    return _admin_error(404, errors.ROOM_NOT_FOUND, "no such room")
                if len(parts) >= 3 and parts[2] == "plain" and method == b"POST":
                    # Plain transports for operators (recorders): pysfu/plain_admin.py.
                    return admin_plain(room, parts[3:], query)
                return self._admin_room(room, parts[2:], method, reason)
        except RoomError as exc:
            from pysfu.signaling.session import protocol_error

            err = protocol_error(exc)
            return _admin_error(404 if err.code.endswith("not_found") else 409, err.code,
                                err.message)
        return _admin_error(404, errors.UNKNOWN_EVENT, "no such admin request (or method)")

    def _admin_room(self, room: Room, rest: list[str], method: bytes,
                    reason: str) -> tuple[int, dict[str, Any]]:
        if not rest and method in (b"GET", b"HEAD"):
            return 200, room.describe()
        if method != b"POST":
            return _admin_error(404, errors.UNKNOWN_EVENT, "no such admin request (or method)")
        if rest == ["close"]:
            room.close(reason)
            return 200, {"closed": room.id, "reason": reason}
        if len(rest) == 3 and rest[0] == "peers" and rest[2] == "remove":
            room.remove_peer(rest[1], reason)
            return 200, {"removed": rest[1], "reason": reason}
        if len(rest) == 3 and rest[0] == "producers" and rest[2] in ("pause", "resume"):
            producer = room.producer_by_id(rest[1])
            owner = room.peers.get(producer.owner)
            if owner is None:
                return _admin_error(404, errors.PEER_NOT_FOUND, "the producer's peer is gone")
            room.set_producer_paused(owner, producer.id, rest[2] == "pause")
            if owner.notify is not None:  # the host learns it was paused from outside
                owner.notify("producerPaused" if producer.paused else "producerResumed",
                             {"producerId": producer.id, "byAdmin": True})
            return 200, {"producerId": producer.id, "paused": producer.paused}
        return _admin_error(404, errors.UNKNOWN_EVENT, "no such admin request (or method)")


def _admin_error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    """An admin API error: the signaling protocol's error shape and codes."""
    return status, {"error": {"code": code, "message": message}}


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _query(target: bytes) -> dict[str, str]:
    """The first value of each query parameter of a request target."""
    _, sep, query = target.partition(b"?")
    if not sep:
        return {}
    try:
        parsed = parse_qs(query.decode("ascii"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def _path(target: bytes) -> str:
    """The request's path, percent-decoded; 400/414 for what no file of ours can be called."""
    if len(target) > MAX_TARGET_LENGTH:
        raise _BadRequest(414, "request target too long")
    raw = target.split(b"?", 1)[0]
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(400, "path is not UTF-8") from None
    if not path.startswith("/") or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in path):
        raise _BadRequest(400, "bad path")
    return path


def _has_body(head: _Head) -> bool:
    """Whether the request announces a body (none of our resources takes one)."""
    if head.header(b"transfer-encoding") is not None:
        return True
    length = head.header(b"content-length")
    return length is not None and int(length) > 0  # h11 has checked it is a number


def _etag_matches(if_none_match: bytes | None, etag: bytes) -> bool:
    """RFC 9110 If-None-Match (weak comparison): ``*`` or a list holding our tag."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == b"*":
        return True
    tags = (t.strip() for t in if_none_match.split(b","))
    return any(t.removeprefix(b"W/") == etag for t in tags)


def _url_token(target: bytes) -> str | None:
    """The ``token`` query parameter of the upgrade's URL (the first one), if any."""
    _, sep, query = target.partition(b"?")
    if not sep:
        return None
    try:
        values = parse_qs(query.decode("ascii"), max_num_fields=16).get("token")
    except (UnicodeDecodeError, ValueError):
        return None
    return values[0] if values else None


def _websocket_problem(head: _Head) -> tuple[int, str] | None:
    """Why this is not a WebSocket upgrade wsproto would accept (status, reason), or None.

    Checked here so that a bad upgrade gets its answer from us, at once, and never reaches
    trio-websocket: given one, the library answers and closes the stream but then waits
    forever for a request it will never produce (``wrap_server_stream`` never returns),
    which kept ~12 KB per invalid upgrade."""
    request = head.request
    if request.method != b"GET" or request.http_version != b"1.1":
        return 400, "websocket upgrade needs GET and HTTP/1.1"
    tokens = [t.strip().lower() for t in (head.header(b"connection") or b"").split(b",")]
    if b"upgrade" not in tokens:
        return 400, "missing Connection: Upgrade"
    if (head.header(b"upgrade") or b"").strip().lower() != b"websocket":
        return 400, "missing Upgrade: websocket"
    version = head.header(b"sec-websocket-version")
    if version != b"13":
        return (426 if version else 400), "Sec-WebSocket-Version must be 13"
    key = head.header(b"sec-websocket-key") or b""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return 400, "bad Sec-WebSocket-Key"
    try:
        (head.header(b"host") or b"").decode("idna")  # what wsproto does with it
        request.target.decode("ascii")
    except UnicodeError:
        return 400, "bad Host or target"
    return None


def _redis_failure(exc: BaseException) -> str | None:
    """What went wrong reaching Redis, if ``exc`` (or every exception in its groups) is a
    connection failure: an OSError, a time-out or a coredis error (coredis is an optional
    dependency: recognised by module, not imported here); else None."""
    if isinstance(exc, BaseExceptionGroup):
        found = [_redis_failure(inner) for inner in exc.exceptions]
        return found[0] if found and all(f is not None for f in found) else None
    if isinstance(exc, trio.TooSlowError):
        return "no answer within 10 s"
    if isinstance(exc, OSError) or type(exc).__module__.startswith("coredis"):
        return str(exc) or type(exc).__name__
    return None


def _describe(group: BaseExceptionGroup) -> str:
    leaves: list[str] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(type(exc).__name__)

    walk(group)
    return ",".join(sorted(set(leaves)))


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one exception of a group that holds one (except* wraps even a bare one)."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group


async def serve(config: Config, *,
                task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    await Server(config).run(task_status=task_status)
