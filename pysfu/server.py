"""The server: one HTTP/WebSocket listener (signaling, demo page) and one media engine.

``serve(config)`` runs until cancelled. Tests start it on port 0 with ``nursery.start`` and
get the ``Server`` back, with the real ports.
"""

from __future__ import annotations

import itertools
import json
import logging
import mimetypes
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from pysfu import ortc
from pysfu.config import Config
from pysfu.dtls import Certificate
from pysfu.log import log_event
from pysfu.media import MediaEngine
from pysfu.room import RoomRegistry
from pysfu.signaling.session import Session

logger = logging.getLogger("pysfu.server")

WEB_ROOT = Path(__file__).parent / "web" / "dist"
_MAX_HEAD = 16 * 1024


@dataclass
class ServerContext:
    config: Config
    certificate: Certificate
    router_rtp_capabilities: dict[str, Any]
    media: MediaEngine
    _handles: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_handle(self) -> int:
        """Native object handles: small ints, never reused within a server's life."""
        return next(self._handles)


class _ReplayStream(trio.abc.Stream):
    """A stream that first returns bytes already read (the HTTP head we peeked at)."""

    def __init__(self, prefix: bytes, stream: trio.SocketStream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        caps = ortc.generate_router_rtp_capabilities(config.media_codecs, transport_cc="recv")
        self.media = MediaEngine(config.rtc_ip, config.rtc_port)
        self.ctx = ServerContext(config, Certificate.generate(), caps, self.media)
        self.rooms: RoomRegistry | None = None
        self.port: int = config.port
        self.sessions = 0

    @property
    def rtc_port(self) -> int:
        return self.media.port

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.rooms = RoomRegistry(self.ctx, nursery)
                nursery.start_soon(self.media.run)
                listeners = await nursery.start(
                    partial(trio.serve_tcp, host=self.config.host),
                    self._handle_connection, self.config.port,
                )
                self.port = listeners[0].socket.getsockname()[1]
                log_event(logger, "server.listening", host=self.config.host, port=self.port,
                          rtc_port=self.rtc_port, announced_ip=self.config.candidate_ip)
                task_status.started(self)
        finally:
            self.media.close()

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            head = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
            request_line, _, rest = head.partition(b"\r\n")
            parts = request_line.split(b" ")
            if len(parts) != 3 or b"\r\n\r\n" not in head:
                await self._respond(stream, 400, b"text/plain", b"bad request\n")
                return
            method, target = parts[0], parts[1].split(b"?")[0].decode("latin-1")
            upgrade = b"upgrade: websocket" in rest.lower()
            if target == "/ws" and upgrade:
                await self._websocket(_ReplayStream(head, stream))
            elif method in (b"GET", b"HEAD"):
                await self._static(stream, target)
            else:
                await self._respond(stream, 405, b"text/plain", b"method not allowed\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _websocket(self, stream: _ReplayStream) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(
                nursery, stream, message_queue_size=4,
                max_message_size=self.config.max_message_size,
            )
            ws = await request.accept()
            assert self.rooms is not None
            self.sessions += 1
            try:
                await Session(ws, self.ctx, self.rooms).run()
            finally:
                self.sessions -= 1
                nursery.cancel_scope.cancel()

    async def _static(self, stream: trio.SocketStream, target: str) -> None:
        if target == "/healthz":
            body = json.dumps(self.health()).encode()
            await self._respond(stream, 200, b"application/json", body)
            return
        name = "index.html" if target in ("/", "") else target.lstrip("/")
        path = (WEB_ROOT / name).resolve()
        if WEB_ROOT.resolve() not in path.parents or not path.is_file():
            await self._respond(stream, 404, b"text/plain", b"not found\n")
            return
        ctype = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").encode()
        await self._respond(stream, 200, ctype, path.read_bytes())

    @staticmethod
    async def _respond(stream: trio.SocketStream, status: int, ctype: bytes, body: bytes) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            % (status, reason.get(status, b""), ctype, len(body))
        )
        await stream.send_all(head + body)

    def health(self) -> dict[str, Any]:
        rooms = self.rooms.rooms if self.rooms is not None else {}
        return {
            "rooms": len(rooms),
            "sessions": self.sessions,
            "engine": self.media.counts(),
        }


async def serve(config: Config, *,
                task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    await Server(config).run(task_status=task_status)
