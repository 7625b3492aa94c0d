"""One WebSocket connection: parse, validate, rate-limit and dispatch requests; push notifications.

Requests of one connection are handled in order. Notifications from the room go through a
bounded queue to a writer task, so a slow or stuck socket cannot block the room: when its
queue is full the connection is closed (code 1008) and the room goes on.

Requests are rate-limited twice before parsing: by the connection's own bucket
(``requests_per_second``: one connection cannot use up its address's share) and by its
address's bucket, shared by every connection of that address (``pysfu.limits``: opening more
connections, or reconnecting, buys no fresh budget).

With a secret configured, ``join`` needs a signed token (``data.token``, or ``?token=`` in
the WebSocket URL): its ``sub`` is the peer id, its room and role must match the request.
After ``max_failed_joins`` (5) failed joins the connection is closed (1008).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from pysfu import data as datachannels
from pysfu import errors, ortc
from pysfu.auth import AuthError
from pysfu.errors import SignalingError
from pysfu.limits import TokenBucket, address_key
from pysfu.log import log_event
from pysfu.ortc import OrtcError
from pysfu.room import (
    AlreadyConsuming,
    CannotConsume,
    ConsumerNotFound,
    DataProducerNotFound,
    Forbidden,
    LimitExceeded,
    Peer,
    PeerNotFound,
    ProducerNotFound,
    RateLimited,
    Redirect,
    Room,
    RoomClosed,
    RoomError,
    RoomRegistry,
    TransportNotFound,
    Unavailable,
)
from pysfu.signaling.plain_requests import plain_handlers
from pysfu.signaling.schema import (
    Request,
    RequestError,
    encode,
    encode_error,
    get_display_name,
    get_dtls_parameters,
    get_layer,
    get_name,
    get_object,
    get_stats_target,
    get_str,
    parse_request,
    peek_request_id,
)
from pysfu.transport import AlreadyConnected

if TYPE_CHECKING:
    from pysfu.context import ServerContext

logger = logging.getLogger("pysfu.signaling")

Answer = tuple[str, dict[str, Any]]  # (event, data) of a request's answer

_OUTBOX_SIZE = 256
_ROLES = frozenset({"host", "viewer"})
_DIRECTIONS = frozenset({"send", "recv"})
_KINDS = frozenset({"audio", "video"})


# The protocol code of each domain error of the layers below (most specific class first).
_DOMAIN_CODES: tuple[tuple[type[Exception], str], ...] = (
    (RoomClosed, errors.NOT_JOINED),
    (Forbidden, errors.FORBIDDEN),
    (LimitExceeded, errors.LIMIT_EXCEEDED),
    (RateLimited, errors.RATE_LIMITED),
    (TransportNotFound, errors.TRANSPORT_NOT_FOUND),
    (PeerNotFound, errors.PEER_NOT_FOUND),
    (DataProducerNotFound, errors.PRODUCER_NOT_FOUND),
    (ProducerNotFound, errors.PRODUCER_NOT_FOUND),
    (ConsumerNotFound, errors.CONSUMER_NOT_FOUND),
    (AlreadyConsuming, errors.ALREADY_CONSUMING),
    (CannotConsume, errors.CANNOT_CONSUME),
    (Unavailable, errors.UNAVAILABLE),
    (AlreadyConnected, errors.ALREADY_CONNECTED),
)


def protocol_error(exc: RoomError | AlreadyConnected | OrtcError | AuthError
                   ) -> SignalingError:
    """The answer to a request that a room, a transport, ORTC negotiation or a join token
    refused. ORTC and token errors carry their protocol code already."""
    if isinstance(exc, OrtcError | AuthError):
        return SignalingError(exc.code, exc.message)
    for kind, code in _DOMAIN_CODES:
        if isinstance(exc, kind):
            return SignalingError(code, str(exc))
    raise TypeError(f"no protocol code for {type(exc).__name__}")  # a missing table row


def resume_answer(room: Room, peer: Peer) -> dict[str, Any]:
    """What a resumed peer has: each live transport (mediasoup TransportOptions, its current
    iceParameters, whether DTLS is done) with its producers (id, kind, paused,
    rtpParameters), and the peer's new resume secret."""
    transports = []
    for transport in peer.transports.values():
        producers = [{"id": p.id, "kind": p.kind, "paused": p.paused,
                      "rtpParameters": p.rtp_parameters}
                     for p in peer.producers.values() if p.transport is transport]
        transports.append({**transport.parameters(),
                           "connected": transport.srtp_profile is not None,
                           "producers": producers})
    return {"roomId": room.id, "peerId": peer.id, "role": peer.role,
            "resumeToken": peer.resume_secret, "transports": transports}


class Session:
    def __init__(
        self, ws: trio_websocket.WebSocketConnection, ctx: ServerContext, rooms: RoomRegistry,
        *, remote: str = "", address: str | None = None, url_token: str | None = None,
    ) -> None:
        self.ws = ws
        self.remote = remote  # "ip:port" of the client, for logs and per-address limits
        # The unit of per-address limits (its IP, or IPv6 /64: pysfu.limits.address_key).
        self.address = address or address_key(remote.rpartition(":")[0] or remote)
        self._url_token = url_token  # ?token= of the WebSocket URL; never logged
        self.failed_joins = 0
        self._closing = False  # a close is queued: no more requests are handled
        self.joined = trio.Event()  # set on the first successful join
        self.ctx = ctx
        self.rooms = rooms
        self.room: Room | None = None
        self.peer: Peer | None = None
        # Text frames, or a (code, reason) close queued behind them.
        self._out_send, self._out_recv = trio.open_memory_channel[str | tuple[int, str]](
            _OUTBOX_SIZE)
        self._bucket = TokenBucket(ctx.config.requests_per_second, ctx.config.request_burst,
                                   trio.current_time())
        self._overflowed = False
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Answer]]] = {
            "join": self._join,
            "resume": self._resume,
            "leave": self._leave,
            "getRouterRtpCapabilities": self._get_caps,
            "createTransport": self._create_transport,
            "connectTransport": self._connect_transport,
            "restartIce": self._restart_ice,
            "produce": self._produce,
            "getProducers": self._get_producers,
            "consume": self._consume,
            "resumeConsumer": functools.partial(self._set_consumer_paused, False),
            "pauseConsumer": functools.partial(self._set_consumer_paused, True),
            "closeProducer": self._close_producer,
            "pauseProducer": functools.partial(self._set_producer_paused, True),
            "resumeProducer": functools.partial(self._set_producer_paused, False),
            "setPreferredLayers": self._set_preferred_layers,
            "getStats": self._get_stats,
            # Data channels (pysfu.data).
            "produceData": self._produce_data,
            "getDataProducers": self._get_data_producers,
            "consumeData": self._consume_data,
            "closeDataProducer": self._close_data_producer,
            # Plain transports (pysfu/signaling/plain_requests.py).
            **plain_handlers(self),
        }

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._join_deadline)
                try:
                    await self._reader()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._detach()

    async def _reader(self) -> None:
        while True:
            try:
                text = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            await self._handle(text)

    async def _join_deadline(self) -> None:
        """A connection that has not joined a room within join_timeout is closed (1008)."""
        with trio.move_on_after(self.ctx.config.join_timeout):
            await self.joined.wait()
            return
        log_event(logger, "session.join_timeout", level=logging.INFO, remote=self.remote)
        await self.ws.aclose(1008, "join timeout")

    async def _writer(self) -> None:
        async for item in self._out_recv:
            try:
                if isinstance(item, tuple):
                    await self.ws.aclose(*item)
                    return
                await self.ws.send_message(item)
            except trio_websocket.ConnectionClosed:
                return

    def _queue(self, text: str | tuple[int, str]) -> None:
        if self._overflowed:
            return  # closing already: one log line, one close
        try:
            self._out_send.send_nowait(text)
        except trio.WouldBlock:
            self._overflowed = True
            # The client does not read: drop it rather than let it hold up the room.
            log_event(logger, "session.overflow", level=logging.WARNING,
                      room=self.room.id if self.room else None,
                      peer=self.peer.id if self.peer else None)
            self._detach()
            # Closed by a task of this session (its nursery is within the connection's
            # boundary), never a system task: an error there would end the whole run.
            if self._nursery is not None:
                self._nursery.start_soon(self.ws.aclose, 1008, "outbound queue overflow")

    def notify(self, event: str, data: dict[str, Any]) -> None:
        self._queue(encode(event, data))

    async def _handle(self, text: str | bytes) -> None:
        req_id: int | str | None = None
        event: str | None = None
        closing = self._closing  # (a local: a request handled below may set the attribute)
        if closing:
            return
        # The rate limits come before any parsing: a flood costs two token checks and, for
        # the answer, a look for the id among the frame's first bytes. The address's bucket
        # is charged only for what the connection's own bucket let through.
        limits = self.ctx.limits
        if not self._bucket.take(trio.current_time()) or (
                limits is not None and not limits.take_request(self.address,
                                                               trio.current_time())):
            self._queue(encode_error(peek_request_id(text), errors.RATE_LIMITED,
                                     "too many requests, slow down", None))
            self.ctx.metrics.request(None, errors.RATE_LIMITED)
            return
        code = "ok"
        try:
            request = parse_request(text)
            req_id, event = request.id, request.event
            handler = self._handlers.get(request.event)
            if handler is None:
                raise SignalingError(errors.UNKNOWN_EVENT, f"unknown event {request.event!r}")
            try:
                answer, data = await handler(request.data)
            except (RoomError, AlreadyConnected, OrtcError) as exc:
                raise protocol_error(exc) from None
            self._queue(encode(answer, data, req_id))
        except RequestError as exc:
            code = exc.code
            self._queue(encode_error(exc.request_id, exc.code, exc.message, event))
        except SignalingError as exc:
            code = exc.code
            self._queue(encode_error(req_id, exc.code, exc.message, event))
            if self._closing:  # after the answer: the writer closes when it gets here
                self._queue((1008, "too many failed joins"))
        except Exception:
            log_event(logger, "request.crashed", level=logging.ERROR, request=event,
                      room=self.room.id if self.room else None,
                      peer=self.peer.id if self.peer else None, exc_info=True)
            code = errors.INTERNAL_ERROR
            self._queue(encode_error(req_id, errors.INTERNAL_ERROR, "internal error", event))
        # Counted by event (only the protocol's events: a client's made-up names would make
        # the label set unbounded) and answer code.
        self.ctx.metrics.request(event if event in self._handlers else None, code)

    # ---- helpers ------------------------------------------------------------------------------

    def _joined(self, data: dict[str, Any]) -> tuple[Room, Peer]:
        """The room and peer of this connection; the request's roomId must name that room."""
        room_id = get_name(data, "roomId")
        room, peer = self.room, self.peer
        if room is None or peer is None or room.closed or room.peers.get(peer.id) is not peer:
            raise SignalingError(errors.NOT_JOINED, "join the room first")
        if peer.notify != self.notify:
            raise SignalingError(errors.NOT_JOINED, "this peer reconnected on another connection")
        if room_id != room.id:
            raise SignalingError(errors.FORBIDDEN, "this connection is joined to another room")
        return room, peer

    def _detach(self) -> None:
        room, peer = self.room, self.peer
        self.room = self.peer = None
        if room is not None and peer is not None and peer.notify == self.notify:
            room.disconnected(peer)

    # ---- requests -----------------------------------------------------------------------------

    async def _join(self, data: dict[str, Any]) -> Answer:
        return await self._counting_failures(self._try_join, data)

    async def _resume(self, data: dict[str, Any]) -> Answer:
        """A host back on a new socket within host_grace_period: counted like a join."""
        return await self._counting_failures(self._try_resume, data)

    async def _counting_failures(
            self, attempt: Callable[[dict[str, Any]], Awaitable[Answer]],
            data: dict[str, Any]) -> Answer:
        """A join or resume; its failures count toward max_failed_joins."""
        try:
            return await attempt(data)
        except (SignalingError, RoomError):
            self.failed_joins += 1
            if self.failed_joins >= self.ctx.config.max_failed_joins:
                # The error answer goes out, then the close (both through the outbox).
                self._closing = True
                if self.ctx.limits is not None:  # counted, logged at a bounded rate
                    self.ctx.limits.refusals.note("failed_joins", self.address,
                                                  trio.current_time())
            raise

    def _identity(self, data: dict[str, Any], room_id: str,
                  role: str) -> tuple[str, str | None]:
        """The peer id a join (or resume) may use and its display name: named by the client
        in open rooms (``peerId``, ``displayName``), the token's identity and ``name`` when
        tokens are required (the token valid for this room and role)."""
        if self.room is not None and not self.room.closed:
            raise SignalingError(errors.ALREADY_JOINED, "this connection already joined a room")
        verifier = self.ctx.verifier
        if verifier is None:  # open rooms: the client names itself
            return get_name(data, "peerId"), get_display_name(data)
        token = data.get("token")
        if token is None:
            token = self._url_token
        try:
            grant = verifier.verify(token, now=time.time())
            grant.check(room_id, role)
        except AuthError as exc:
            raise protocol_error(exc) from None
        peer_id = grant.identity  # the token's sub is the peer's identity
        if data.get("peerId") is not None and data.get("peerId") != peer_id:
            raise SignalingError(errors.FORBIDDEN, "peerId must be the token's identity")
        return peer_id, grant.name  # the token names the peer: a join's displayName is ignored

    async def _try_join(self, data: dict[str, Any]) -> Answer:
        room_id = get_name(data, "roomId")
        role = get_str(data, "role", choices=_ROLES)
        peer_id, display_name = self._identity(data, room_id, role)
        try:
            room = await self.rooms.get_or_create(
                room_id, address=self.address, role=role,  # type: ignore[arg-type]
                redirected=data.get("redirected") is True)
        except Redirect as redirect:  # (cluster placement) join again at that node
            return "redirect", {"roomId": room_id, "url": redirect.url, "node": redirect.node}
        peer, reconnected = room.join(peer_id, role, self.notify,  # type: ignore[arg-type]
                                      display_name=display_name)
        self.room, self.peer = room, peer
        self.joined.set()
        answer: dict[str, Any] = {"roomId": room_id, "peerId": peer_id, "role": role,
                                  "reconnected": reconnected}
        if peer.name is not None:
            answer["displayName"] = peer.name
        if peer.resume_secret is not None:
            answer["resumeToken"] = peer.resume_secret
        return "joined", answer

    async def _try_resume(self, data: dict[str, Any]) -> Answer:
        """``resume {roomId, peerId, resumeToken, token?}``: the host's peer back, with the
        transports and producers it kept (mediasoup-client goes on with its Transport and
        Producer objects; after a network change it restarts ICE). Checked without an await
        from here on, so two resumes cannot both win: the secret changes with the first."""
        room_id = get_name(data, "roomId")
        secret = get_str(data, "resumeToken")
        peer_id, _ = self._identity(data, room_id, "host")
        room = self.rooms.get(room_id)
        if room is None or room.closed:
            raise Forbidden("cannot resume: unknown peer or resume token")
        peer = room.resume(peer_id, secret, self.notify)
        self.room, self.peer = room, peer
        self.joined.set()
        return "resumed", resume_answer(room, peer)

    async def _leave(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        self.room = self.peer = None
        room.leave(peer)
        return "left", {"roomId": room.id}

    async def _get_caps(self, data: dict[str, Any]) -> Answer:
        get_name(data, "roomId")  # capabilities are the same for every room of this server
        return "routerRtpCapabilities", {"rtpCapabilities": self.ctx.router_rtp_capabilities}

    async def _create_transport(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        direction = get_str(data, "direction", choices=_DIRECTIONS)
        sctp = datachannels.parse_sctp_capabilities(data.get("sctpCapabilities"))
        transport = room.create_transport(peer, direction, sctp=sctp)
        return "transportCreated", transport.parameters()

    async def _connect_transport(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        transport = room.owned_transport(peer, get_str(data, "transportId"))
        params = get_dtls_parameters(data)
        if transport.remote_dtls is not None:
            raise SignalingError(errors.ALREADY_CONNECTED, "transport already connected")
        # A DTLS handshake slot of this address (and of the server), held until the
        # handshake completes or fails or the transport closes.
        limits = self.ctx.limits
        end = None
        if limits is not None:
            end = limits.start_handshake(self.address, trio.current_time())
            if end is None:
                raise SignalingError(errors.LIMIT_EXCEEDED,
                                     "too many DTLS handshakes in progress; try again shortly")
        try:
            transport.connect(params, on_handshake_end=end)
        except BaseException:
            if end is not None:
                end()
            raise
        return "transportConnected", {"transportId": transport.id}

    async def _restart_ice(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        transport = room.owned_transport(peer, get_str(data, "transportId"))
        return "iceRestarted", {"transportId": transport.id,
                                "iceParameters": transport.restart_ice()}

    async def _produce(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        transport_id = get_str(data, "transportId")
        kind = get_str(data, "kind", choices=_KINDS)
        rtp_parameters = get_object(data, "rtpParameters")
        producer = room.produce(peer, transport_id, kind, rtp_parameters)
        return "produced", {"kind": kind, "id": producer.id}

    async def _get_producers(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        return "producers", {"producers": room.producer_list(peer)}

    async def _consume(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        consumer = room.consume(
            peer,
            get_str(data, "transportId"),
            get_str(data, "producerId"),
            get_object(data, "rtpCapabilities"),
        )
        return "consumed", {
            "id": consumer.id,
            "producerId": consumer.producer.id,
            "kind": consumer.kind,
            "rtpParameters": consumer.rtp_parameters,
            "type": ortc.producer_type(consumer.producer.rtp_parameters),
            "producerPaused": consumer.producer.paused,
        }

    async def _set_consumer_paused(self, paused: bool, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        consumer = room.set_consumer_paused(peer, get_str(data, "consumerId"), paused)
        return "consumerPaused" if paused else "consumerResumed", {"consumerId": consumer.id}

    async def _set_preferred_layers(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        spatial = get_layer(data, "spatialLayer")
        temporal = get_layer(data, "temporalLayer") if data.get("temporalLayer") is not None \
            else None
        consumer, spatial, temporal = room.set_consumer_preferred_layers(
            peer, get_str(data, "consumerId"), spatial, temporal)
        answer: dict[str, Any] = {"consumerId": consumer.id, "spatialLayer": spatial}
        if temporal is not None:
            answer["temporalLayer"] = temporal
        return "preferredLayersSet", answer

    async def _close_producer(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        producer_id = get_str(data, "producerId")
        room.close_producer(peer, producer_id)
        return "producerClosed", {"producerId": producer_id}

    async def _set_producer_paused(self, paused: bool, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        producer = room.set_producer_paused(peer, get_str(data, "producerId"), paused)
        return "producerPaused" if paused else "producerResumed", {"producerId": producer.id}

    async def _get_stats(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        target, object_id = get_stats_target(data)
        return "stats", {target: object_id, "stats": room.stats(peer, target, object_id)}

    # ---- data channels ------------------------------------------------------------------------

    async def _produce_data(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        transport_id = get_str(data, "transportId")
        params = datachannels.parse_stream_parameters(data.get("sctpStreamParameters"))
        producer = room.produce_data(peer, transport_id, params,
                                     datachannels.parse_label(data, "label"),
                                     datachannels.parse_label(data, "protocol"))
        return "dataProduced", {"id": producer.id}

    async def _get_data_producers(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        return "dataProducers", {"dataProducers": room.data_producer_list(peer)}

    async def _consume_data(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        consumer = room.consume_data(peer, get_str(data, "transportId"),
                                     get_str(data, "dataProducerId"))
        return "dataConsumed", consumer.answer()

    async def _close_data_producer(self, data: dict[str, Any]) -> Answer:
        room, peer = self._joined(data)
        data_producer_id = get_str(data, "dataProducerId")
        room.close_data_producer(peer, data_producer_id)
        return "dataProducerClosed", {"dataProducerId": data_producer_id}


__all__ = ["Request", "Session"]
