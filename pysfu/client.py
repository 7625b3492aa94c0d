"""Signaling client for bots, services, tests and benchmarks (trio-websocket).

    async with connect("ws://127.0.0.1:8080/ws") as client:
        await client.join("room1", "viewer", "peer-42")
        caps = await client.request("getRouterRtpCapabilities", {"roomId": "room1"})
        event, data = await client.next_notification("newProducer")

With a server that requires join tokens (``auth_secret``): ``client.join("room1", "viewer",
token=token)`` (the peer id is the token's identity), or ``connect(url, token=token)``, which
puts it in the URL (``?token=``) for every join of that connection.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
import trio_websocket


class RequestFailed(Exception):
    """The server answered a request with ``error``; ``code`` is the stable protocol code."""

    def __init__(self, code: str, message: str, request: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request = request


class ConnectionLost(Exception):
    """The WebSocket closed while a request waited for its answer."""


class SignalingClient:
    def __init__(self, ws: trio_websocket.WebSocketConnection, queue_size: int = 1024) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._notify_send, self.notifications = trio.open_memory_channel[
            tuple[str, dict[str, Any]]](queue_size)
        self.closed = trio.Event()

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    text = await self.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                msg = json.loads(text)
                waiter = self._pending.pop(msg.get("id"), None) if "id" in msg else None
                if waiter is not None:
                    waiter.send_nowait(msg)
                elif "id" not in msg:
                    self._notify_send.send_nowait((msg["event"], msg.get("data", {})))
        finally:
            self.closed.set()
            for waiter in self._pending.values():
                waiter.close()
            self._pending.clear()
            self._notify_send.close()

    async def send_raw(self, text: str | bytes) -> None:
        """Send a frame as is (for tests of bad input)."""
        await self.ws.send_message(text)

    async def request(self, event: str, data: dict[str, Any] | None = None,
                      *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a request; return the answer's ``data``; raise RequestFailed on ``error``."""
        req_id = next(self._ids)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[req_id] = send
        try:
            await self.ws.send_message(json.dumps({"id": req_id, "event": event,
                                                   "data": data or {}}))
            with trio.fail_after(timeout):
                try:
                    msg = await recv.receive()
                except trio.EndOfChannel:
                    raise ConnectionLost(f"connection closed before {event} was answered") from None
        except trio_websocket.ConnectionClosed:
            raise ConnectionLost(f"connection closed while sending {event}") from None
        finally:
            self._pending.pop(req_id, None)
        if msg.get("event") == "error":
            err = msg.get("data", {})
            raise RequestFailed(err.get("code", "unknown"), err.get("message", ""),
                                err.get("request"))
        answer: dict[str, Any] = msg.get("data", {})
        return answer

    async def next_notification(self, event: str | None = None,
                                *, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next notification (of the given event name, skipping others)."""
        with trio.fail_after(timeout):
            async for name, data in self.notifications:
                if event is None or name == event:
                    return name, data
        raise ConnectionLost("connection closed")

    # Convenience wrappers for the protocol's requests.
    async def join(self, room_id: str, role: str, peer_id: str | None = None,
                   token: str | None = None) -> dict[str, Any]:
        """Join ``room_id`` as ``role``; ``peer_id`` is required by open rooms, optional with
        a token (whose identity it must equal)."""
        data: dict[str, Any] = {"roomId": room_id, "role": role}
        if peer_id is not None:
            data["peerId"] = peer_id
        if token is not None:
            data["token"] = token
        return await self.request("join", data)

    async def leave(self, room_id: str) -> dict[str, Any]:
        return await self.request("leave", {"roomId": room_id})

    async def router_rtp_capabilities(self, room_id: str) -> dict[str, Any]:
        data = await self.request("getRouterRtpCapabilities", {"roomId": room_id})
        caps: dict[str, Any] = data["rtpCapabilities"]
        return caps

    async def create_transport(self, room_id: str, direction: str) -> dict[str, Any]:
        return await self.request("createTransport", {"roomId": room_id, "direction": direction})

    async def connect_transport(self, room_id: str, transport_id: str,
                                dtls_parameters: dict[str, Any]) -> dict[str, Any]:
        return await self.request("connectTransport", {
            "roomId": room_id, "transportId": transport_id, "dtlsParameters": dtls_parameters})

    async def restart_ice(self, room_id: str, transport_id: str) -> dict[str, Any]:
        """ICE restart of one of our transports: the new iceParameters (mediasoup shape)."""
        data = await self.request("restartIce", {"roomId": room_id, "transportId": transport_id})
        params: dict[str, Any] = data["iceParameters"]
        return params

    async def produce(self, room_id: str, transport_id: str, kind: str,
                      rtp_parameters: dict[str, Any]) -> str:
        data = await self.request("produce", {"roomId": room_id, "transportId": transport_id,
                                              "kind": kind, "rtpParameters": rtp_parameters})
        return str(data["id"])

    async def get_producers(self, room_id: str) -> list[dict[str, str]]:
        producers: list[dict[str, str]] = (
            await self.request("getProducers", {"roomId": room_id}))["producers"]
        return producers

    async def consume(self, room_id: str, transport_id: str, producer_id: str,
                      rtp_capabilities: dict[str, Any]) -> dict[str, Any]:
        return await self.request("consume", {
            "roomId": room_id, "transportId": transport_id, "producerId": producer_id,
            "rtpCapabilities": rtp_capabilities})

    # Plain transports (RTP without ICE/DTLS; pysfu.plain has the SDP/ffmpeg helpers).
    async def create_plain_transport(self, room_id: str, **options: Any) -> dict[str, Any]:
        """``options``: comedia, rtcpMux, enableSrtp, srtpCryptoSuite (mediasoup names)."""
        return await self.request("createPlainTransport", {"roomId": room_id, **options})

    async def connect_plain_transport(self, room_id: str, transport_id: str,
                                      **options: Any) -> dict[str, Any]:
        """``options``: ip, port, srtpParameters."""
        return await self.request("connectPlainTransport", {
            "roomId": room_id, "transportId": transport_id, **options})

    async def close_plain_transport(self, room_id: str, transport_id: str) -> dict[str, Any]:
        return await self.request("closePlainTransport",
                                  {"roomId": room_id, "transportId": transport_id})

    async def request_key_frame(self, room_id: str, consumer_id: str) -> dict[str, Any]:
        return await self.request("requestKeyFrame", {"roomId": room_id, "consumerId": consumer_id})

    async def resume_consumer(self, room_id: str, consumer_id: str) -> dict[str, Any]:
        return await self.request("resumeConsumer", {"roomId": room_id, "consumerId": consumer_id})

    async def close_producer(self, room_id: str, producer_id: str) -> dict[str, Any]:
        return await self.request("closeProducer", {"roomId": room_id, "producerId": producer_id})

    async def get_stats(self, room_id: str, **target: str) -> list[dict[str, Any]]:
        """Stats of one object: ``get_stats(room, consumerId=...)`` (or transportId,
        producerId)."""
        stats: list[dict[str, Any]] = (
            await self.request("getStats", {"roomId": room_id, **target}))["stats"]
        return stats

    async def aclose(self) -> None:
        await self.ws.aclose()


@asynccontextmanager
async def _open_ws(url: str, max_message_size: int,
                   local_host: str | None) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    if local_host is None:
        async with trio_websocket.open_websocket_url(url, max_message_size=max_message_size,
                                                     message_queue_size=16) as ws:
            yield ws
        return
    # From a chosen local address (a multi-homed bot; tests of per-address limits).
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError("local_host needs a ws:// URL")
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((local_host, 0))
    await sock.connect((parts.hostname, parts.port or 80))
    stream = trio.SocketStream(sock)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, parts.hostname, target,
            max_message_size=max_message_size, message_queue_size=16)
        try:
            yield ws
        finally:
            await ws.aclose()
            nursery.cancel_scope.cancel()


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=`` added to its query."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def connect(url: str, *, max_message_size: int = 1 << 20,
                  local_host: str | None = None,
                  token: str | None = None) -> AsyncIterator[SignalingClient]:
    """Open a signaling connection (from ``local_host`` if given; with ``token`` in the URL
    if given); the reader task lives as long as the context."""
    if token is not None:
        url = with_token(url, token)
    async with _open_ws(url, max_message_size, local_host) as ws:
        client = SignalingClient(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


__all__ = ["ConnectionLost", "RequestFailed", "SignalingClient", "connect", "with_token"]
