"""Signaling client for bots, services, tests and benchmarks (trio-websocket).

    async with connect("ws://127.0.0.1:8080/ws") as client:
        await client.join("room1", "viewer", "peer-42")
        caps = await client.request("getRouterRtpCapabilities", {"roomId": "room1"})
        event, data = await client.next_notification("newProducer")

With a server that requires join tokens (``auth_secret``): ``client.join("room1", "viewer",
token=token)`` (the peer id is the token's identity), or ``connect(url, token=token)``, which
puts it in the URL (``?token=``) for every join of that connection.

A host's join answer carries a resume secret. ``connect(url, auto_resume=True)`` uses it: when
the WebSocket drops, the client reconnects and sends ``resume`` (its transports, producers and
the viewers' consumers are still there, within the server's ``host_grace_period``); the same
``SignalingClient`` goes on, its notifications channel stays open, and ``wait_resumed()``
returns each ``resumed`` answer. Requests sent while the socket is down fail with
``ConnectionLost``; ``leave()``, ``aclose()`` or a ``roomClosed`` end the resuming.

With several nodes (``cluster_placement = least_loaded``) a host opening a new room may be
told to join on another node: ``join`` raises ``Redirected`` (its ``url`` is that node's
signaling URL). ``connect_and_join(url, room, role, peer_id)`` follows such redirects: it
reconnects to the URL and joins again there (saying ``redirected``, so that node keeps the
host), at most ``MAX_REDIRECTS`` times, and yields the joined client (``join_answer``,
``url``)::

    async with connect_and_join("ws://a:8080/ws", "room1", "host", "host-1") as client:
        transport = await client.create_transport("room1", "send")
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
import trio_websocket

SCTP_CAPABILITIES: dict[str, Any] = {"numStreams": {"OS": 1024, "MIS": 1024}}


class RequestFailed(Exception):
    """The server answered a request with ``error``; ``code`` is the stable protocol code."""

    def __init__(self, code: str, message: str, request: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request = request


class Redirected(RequestFailed):
    """A ``join`` answered ``redirect {url}``: join again on the node at ``url``."""

    def __init__(self, url: str, node: str | None = None) -> None:
        super().__init__("redirect", f"join again at {url}", "join")
        self.url = url
        self.node = node


MAX_REDIRECTS = 3  # redirects connect_and_join follows before giving up


class ConnectionLost(Exception):
    """The WebSocket closed while a request waited for its answer."""


# Automatic resume: reconnect attempts this far apart (doubling up to the maximum), given up
# after RESUME_PATIENCE seconds (the server's host_grace_period is 10 s by default).
RESUME_RETRY_MIN = 0.05
RESUME_RETRY_MAX = 1.0
RESUME_PATIENCE = 30.0


@dataclass
class ResumeState:
    """What a ``resume`` needs: the room, the peer and its current (single-use) secret."""
    room_id: str
    peer_id: str
    resume_token: str
    token: str | None = None  # the join token, when the server requires them


class SignalingClient:
    def __init__(self, ws: trio_websocket.WebSocketConnection, queue_size: int = 1024) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._notify_send, self.notifications = trio.open_memory_channel[
            tuple[str, dict[str, Any]]](queue_size)
        self.closed = trio.Event()
        self.resume_state: ResumeState | None = None  # from a host's joined/resumed answer
        self.resumed: list[dict[str, Any]] = []  # the answers of automatic resumes
        self.resume_error: Exception | None = None  # why an automatic resume gave up
        self._changed = trio.Event()  # set (and replaced) when ``resumed`` grows
        self.url: str | None = None  # the URL this client connected to (connect sets it)
        self.join_answer: dict[str, Any] | None = None  # the last ``joined`` answer

    async def _reader(self, *, final: bool = True) -> None:
        """Read the socket until it closes; ``final``: the client ends with it (otherwise an
        automatic resume may follow, and only the waiting requests fail)."""
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
                    if msg.get("event") in ("roomClosed", "peerRemoved"):
                        self.resume_state = None  # nothing left to resume
                    self._notify_send.send_nowait((msg["event"], msg.get("data", {})))
        finally:
            for waiter in self._pending.values():
                waiter.close()
            self._pending.clear()
            if final:
                self._end()

    def _end(self) -> None:
        self.closed.set()
        self._notify_send.close()
        self._changed.set()

    def _note_resumed(self, answer: dict[str, Any]) -> None:
        self.resumed.append(answer)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_resumed(self, count: int = 1, *, timeout: float = 10.0) -> dict[str, Any]:
        """The ``count``-th answer of an automatic resume, once there is one (ConnectionLost
        when the client gave up: ``resume_error`` says why)."""
        with trio.fail_after(timeout):
            while len(self.resumed) < count:
                if self.closed.is_set():
                    raise ConnectionLost(f"no resume: {self.resume_error}")
                await self._changed.wait()
        return self.resumed[count - 1]

    async def send_raw(self, text: str | bytes) -> None:
        """Send a frame as is (for tests of bad input)."""
        await self.ws.send_message(text)

    async def request(self, event: str, data: dict[str, Any] | None = None,
                      *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a request; return the answer's ``data``; raise RequestFailed on ``error``."""
        return (await self.request_answer(event, data, timeout=timeout))[1]

    async def request_answer(self, event: str, data: dict[str, Any] | None = None,
                             *, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """Send a request; return the answer's event and ``data``; raise RequestFailed on
        ``error``."""
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
        return str(msg.get("event")), answer

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
                   token: str | None = None, *, redirected: bool = False,
                   display_name: str | None = None) -> dict[str, Any]:
        """Join ``room_id`` as ``role``; ``peer_id`` is required by open rooms, optional with
        a token (whose identity it must equal). ``Redirected``: the server sends this join
        to another node (``redirected``: this join follows such a redirect).
        ``display_name``: what others see as this peer's name in open rooms (a token's
        ``name`` claim takes its place)."""
        data: dict[str, Any] = {"roomId": room_id, "role": role}
        if peer_id is not None:
            data["peerId"] = peer_id
        if display_name is not None:
            data["displayName"] = display_name
        if token is not None:
            data["token"] = token
        if redirected:
            data["redirected"] = True
        event, answer = await self.request_answer("join", data)
        if event == "redirect":
            url, node = answer.get("url"), answer.get("node")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
                raise RequestFailed("bad_redirect", f"redirect to {url!r}", "join")
            raise Redirected(url, node if isinstance(node, str) else None)
        self._remember(answer, token)
        self.join_answer = answer
        return answer

    async def resume(self, room_id: str, peer_id: str, resume_token: str,
                     token: str | None = None) -> dict[str, Any]:
        """Take our peer back on this connection (a host whose socket dropped, within the
        server's host_grace_period): its live transports and producers."""
        data: dict[str, Any] = {"roomId": room_id, "peerId": peer_id,
                                "resumeToken": resume_token}
        if token is not None:
            data["token"] = token
        answer = await self.request("resume", data)
        self._remember(answer, token)
        return answer

    def _remember(self, answer: dict[str, Any], token: str | None) -> None:
        secret = answer.get("resumeToken")
        if isinstance(secret, str):
            self.resume_state = ResumeState(str(answer["roomId"]), str(answer["peerId"]),
                                            secret, token)

    async def leave(self, room_id: str) -> dict[str, Any]:
        self.resume_state = None  # left on purpose: nothing to resume
        return await self.request("leave", {"roomId": room_id})

    async def router_rtp_capabilities(self, room_id: str) -> dict[str, Any]:
        data = await self.request("getRouterRtpCapabilities", {"roomId": room_id})
        caps: dict[str, Any] = data["rtpCapabilities"]
        return caps

    async def create_transport(self, room_id: str, direction: str, *,
                               sctp_capabilities: dict[str, Any] | None = None
                               ) -> dict[str, Any]:
        """``sctp_capabilities`` (e.g. ``SCTP_CAPABILITIES``): the transport carries data
        channels; the answer then has ``sctpParameters``."""
        data: dict[str, Any] = {"roomId": room_id, "direction": direction}
        if sctp_capabilities is not None:
            data["sctpCapabilities"] = sctp_capabilities
        return await self.request("createTransport", data)

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
        """``options``: ip, port, rtcpPort (rtcpMux false), srtpParameters."""
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

    # Data channels: signaling only. SCTP itself runs on the bot's side of the transport;
    # pysfu.testing.data_peer.DataPeer is one (pyOpenSSL DTLS + the native SCTP association).

    async def produce_data(self, room_id: str, transport_id: str, stream_id: int, *,
                           label: str = "", protocol: str = "", ordered: bool = True,
                           max_retransmits: int | None = None,
                           max_packet_life_time: int | None = None) -> str:
        """Declare a data producer on SCTP stream ``stream_id`` of a send transport."""
        params: dict[str, Any] = {"streamId": stream_id, "ordered": ordered}
        if max_retransmits is not None:
            params["maxRetransmits"] = max_retransmits
        if max_packet_life_time is not None:
            params["maxPacketLifeTime"] = max_packet_life_time
        data = await self.request("produceData", {
            "roomId": room_id, "transportId": transport_id, "sctpStreamParameters": params,
            "label": label, "protocol": protocol})
        return str(data["id"])

    async def consume_data(self, room_id: str, transport_id: str,
                           data_producer_id: str) -> dict[str, Any]:
        """A data consumer on a recv transport: ``sctpStreamParameters.streamId`` is the
        stream its messages arrive on."""
        return await self.request("consumeData", {"roomId": room_id, "transportId": transport_id,
                                                  "dataProducerId": data_producer_id})

    async def get_data_producers(self, room_id: str) -> list[dict[str, Any]]:
        producers: list[dict[str, Any]] = (
            await self.request("getDataProducers", {"roomId": room_id}))["dataProducers"]
        return producers

    async def close_data_producer(self, room_id: str, data_producer_id: str) -> dict[str, Any]:
        return await self.request("closeDataProducer", {"roomId": room_id,
                                                        "dataProducerId": data_producer_id})

    async def get_stats(self, room_id: str, **target: str) -> list[dict[str, Any]]:
        """Stats of one object: ``get_stats(room, consumerId=...)`` (or transportId,
        producerId)."""
        stats: list[dict[str, Any]] = (
            await self.request("getStats", {"roomId": room_id, **target}))["stats"]
        return stats

    async def aclose(self) -> None:
        self.resume_state = None  # closed on purpose: no automatic resume
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
                  local_host: str | None = None, token: str | None = None,
                  auto_resume: bool = False) -> AsyncIterator[SignalingClient]:
    """Open a signaling connection (from ``local_host`` if given; with ``token`` in the URL
    if given); the reader task lives as long as the context. ``auto_resume``: a host's
    client reconnects and resumes when its socket drops (see the module's text)."""
    if token is not None:
        url = with_token(url, token)
    if auto_resume:
        async with trio.open_nursery() as nursery:
            client: SignalingClient = await nursery.start(
                _keep_connected, url, max_message_size, local_host)
            client.url = url
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
        return
    async with _open_ws(url, max_message_size, local_host) as ws:
        client = SignalingClient(ws)
        client.url = url
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect_and_join(url: str, room_id: str, role: str, peer_id: str | None = None, *,
                           token: str | None = None, max_redirects: int = MAX_REDIRECTS,
                           **options: Any) -> AsyncIterator[SignalingClient]:
    """``connect`` and ``join``, following ``redirect`` answers: each one closes the
    connection, opens one to the given URL and joins again there (``redirected``), at most
    ``max_redirects`` times (then the last ``Redirected`` is raised). ``options`` go to
    every ``connect`` (``token`` there puts it in the URL; here it goes in the join)."""
    for hop in range(max_redirects + 1):
        refused: RequestFailed | None = None
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(connect(url, **options))
            try:
                await client.join(room_id, role, peer_id, token, redirected=hop > 0)
            except RequestFailed as exc:  # raised once the connection is closed (not in
                refused = exc  # connect's nursery, which would wrap it in a group)
            else:
                yield client
                return
        if not isinstance(refused, Redirected) or hop == max_redirects:
            raise refused
        url = refused.url
    raise AssertionError("unreachable")  # (the loop returns or raises)


async def _keep_connected(url: str, max_message_size: int, local_host: str | None, *,
                          task_status: trio.TaskStatus[SignalingClient]) -> None:
    """One client over successive sockets: after a drop, reconnect (with backoff) and
    ``resume``; ends (the client closed) when there is nothing to resume, the server refuses
    it, or RESUME_PATIENCE runs out."""
    client: SignalingClient | None = None
    delay, give_up_at = RESUME_RETRY_MIN, trio.current_time()
    try:
        while True:
            try:
                async with _open_ws(url, max_message_size, local_host) as ws:
                    delay = RESUME_RETRY_MIN
                    async with trio.open_nursery() as conn:
                        if client is None:
                            client = SignalingClient(ws)
                            conn.start_soon(functools.partial(client._reader, final=False))
                            task_status.started(client)
                        else:
                            client.ws = ws
                            conn.start_soon(functools.partial(client._reader, final=False))
                            state = client.resume_state
                            assert state is not None
                            try:
                                answer = await client.resume(state.room_id, state.peer_id,
                                                             state.resume_token, state.token)
                            except (RequestFailed, ConnectionLost) as exc:
                                client.resume_error = exc
                                conn.cancel_scope.cancel()  # the reader too: we are done
                                return
                            client._note_resumed(answer)
            except (OSError, trio_websocket.HandshakeError) as exc:
                if client is None:
                    raise  # the first connection: the caller's error
                client.resume_error = exc
                if trio.current_time() >= give_up_at:
                    return
                await trio.sleep(delay)
                delay = min(2 * delay, RESUME_RETRY_MAX)
                continue
            # The socket closed: resume if there is something to resume.
            if client is None or client.resume_state is None:
                return
            give_up_at = trio.current_time() + RESUME_PATIENCE
    finally:
        if client is not None:
            client._end()


__all__ = ["MAX_REDIRECTS", "SCTP_CAPABILITIES", "ConnectionLost", "Redirected", "RequestFailed",
           "ResumeState", "SignalingClient", "connect", "connect_and_join", "with_token"]
