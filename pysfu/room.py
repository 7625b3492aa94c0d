"""Rooms: one router per roomId, its own Trio nursery, registries with owners.

Owns: ``Room`` (peers, their transports, producers and consumers; who may do what to which),
``RoomRegistry`` (every room of a server, room-creation limits) and the room's domain errors
(``RoomError`` and its kinds), which the signaling layer maps to protocol codes.

Everything a room owns (transports, producers, consumers, and every task working for them)
lives in the room's nursery, so closing a room is one cancel: nothing outlives it.
"""

from __future__ import annotations

import hmac
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio

from pysfu import ortc, stats
from pysfu._native import sctp_fanout
from pysfu.data import DataConsumer, DataLimits, DataProducer, StreamParameters
from pysfu.ids import new_id, new_secret
from pysfu.layers import watch_consumer_layers
from pysfu.log import log_event
from pysfu.pipe import (
    MAX_PIPES_PER_ROOM,
    PIPE_OWNER,
    PipeError,
    PipeTransport,
    pipe_consumer_spec,
    pipe_offer,
)
from pysfu.plain import (
    ADMIN_OWNER,
    MAX_ADMIN_CONSUMERS_PER_ROOM,
    MAX_PLAIN_TRANSPORTS_PER_PEER,
    MAX_PLAIN_TRANSPORTS_PER_ROOM,
    PlainTransport,
)
from pysfu.transport import Consumer, MediaTransport, Producer, WebRtcTransport

if TYPE_CHECKING:
    from pysfu._native import Removed
    from pysfu.context import ServerContext

logger = logging.getLogger("pysfu.room")

_CREATION_WINDOW = 60.0  # seconds over which max_rooms_per_address_per_minute counts
_MAX_TRACKED_ADDRESSES = 10_000  # past this, addresses with no recent creation are forgotten

Role = Literal["host", "viewer"]
Notify = Callable[[str, dict[str, Any]], None]
# What a room tells its observers (the cluster: pysfu/cluster/): newProducer, producerClosed,
# roomClosed, with the data its peers get.
Observer = Callable[[str, dict[str, Any]], None]


class Placement(Protocol):
    """Where a new room lives when there are several nodes (``pysfu.cluster``): ``place``
    claims the room for this node or makes it an edge of its origin node (raising a
    ``RoomError`` to refuse the join, ``Redirect`` to send a host elsewhere);
    ``leave_to_another_node`` may send a host opening a room on a draining node elsewhere
    (``Redirect``); ``room_closed`` is told of every room that closes."""

    async def place(self, room: Room, role: Role, *, redirected: bool = False) -> None: ...
    async def leave_to_another_node(self, room_id: str) -> None: ...
    def room_closed(self, room: Room) -> None: ...


class Redirect(Exception):  # noqa: N818 (an answer, not a failure)
    """Placement sends a host opening a new room to another node: the ``join`` answer is
    ``redirect {url}`` (``pysfu.cluster.placement``)."""

    def __init__(self, url: str, node: str) -> None:
        super().__init__(f"redirected to node {node}")
        self.url = url
        self.node = node


class RoomError(Exception):
    """A room refused a request. Each subclass is one reason; ``str(exc)`` is for people."""


class RoomClosed(RoomError):
    """The room is closed (or closing)."""


class Forbidden(RoomError):
    """Not allowed for this peer, role or room, or the object belongs to another peer."""


class LimitExceeded(RoomError):
    """A configured limit (rooms, peers, transports, producers, consumers, bitrate)."""


class RateLimited(RoomError):
    """Too many new rooms from one address in a minute."""


class NotFound(RoomError):
    """No such object in this room (or it is closing)."""


class TransportNotFound(NotFound):
    pass


class PeerNotFound(NotFound):
    pass


class ProducerNotFound(NotFound):
    pass


class ConsumerNotFound(NotFound):
    pass


class DataProducerNotFound(ProducerNotFound):
    """No such data producer (the protocol's producer_not_found)."""


class AlreadyConsuming(RoomError):
    """This transport already consumes that producer."""


class Unavailable(RoomError):
    """The server is draining (or shutting down): no new rooms here."""


class CannotConsume(RoomError):
    """The viewer's device cannot receive this producer."""


def _temporal_layers(producer: Producer) -> int:
    """The most temporal layers any of the producer's encodings declares (scalabilityMode)."""
    return max((ortc.parse_scalability_mode(e.get("scalabilityMode"))[1]
                for e in producer.rtp_parameters["encodings"]), default=1)


def _layers(producer: Producer) -> tuple[int, int]:
    """The most spatial and temporal layers any of the producer's encodings declares
    (scalabilityMode; an AV1 L2T1 stream has spatial layers its consumers move between)."""
    modes = [ortc.parse_scalability_mode(e.get("scalabilityMode"))
             for e in producer.rtp_parameters["encodings"]]
    return max((m[0] for m in modes), default=1), max((m[1] for m in modes), default=1)


@dataclass(eq=False)
class Peer:
    id: str
    role: Role
    notify: Notify | None  # None while the peer has no live socket (reconnect grace)
    transports: dict[str, WebRtcTransport] = field(default_factory=dict)
    plain_transports: dict[str, PlainTransport] = field(default_factory=dict)
    producers: dict[str, Producer] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    grace_scope: trio.CancelScope | None = None
    produced: bool = False  # has had a producer (a host that never did gets no grace period)
    joined_at: float = field(default_factory=trio.current_time)  # this join (or reconnect)
    got_media: bool = False  # a first forwarded packet reached it since joined_at
    # A host's resume secret (``resume``): handed out in its join (and resume) answer, good
    # for one resume of this peer in this room; never logged.
    resume_secret: str | None = field(default=None, repr=False)
    data_producers: dict[str, DataProducer] = field(default_factory=dict)
    data_consumers: dict[str, DataConsumer] = field(default_factory=dict)
    # What others see as its name (a data producer's sender): the token's name claim, or the
    # join's displayName in open rooms; the peer id without one.
    name: str | None = None

    @property
    def display_name(self) -> str:
        return self.name if self.name is not None else self.id


class Room:
    """A router: peers, their transports, producers and consumers, and a nursery."""

    def __init__(self, room_id: str, ctx: ServerContext, on_closed: Callable[[Room], None]):
        self.id = room_id
        self.ctx = ctx
        self.peers: dict[str, Peer] = {}
        self.transports: dict[str, WebRtcTransport] = {}
        self.plain_transports: dict[str, PlainTransport] = {}
        # Who follows a producer's pause/resume/close (pipes to other rooms: pysfu.pipe).
        self._producer_watchers: dict[str, list[Callable[[str], None]]] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.data_producers: dict[str, DataProducer] = {}
        self.data_consumers: dict[str, DataConsumer] = {}
        # (transport id, SCTP stream id) -> the data producer whose messages come in there.
        self._data_routes: dict[tuple[str, int], DataProducer] = {}
        self.data_unrouted = 0  # messages on a stream no data producer declared: dropped
        self.closed = False
        # Cluster (pysfu/cluster/): the node where the room's host is, when it is another
        # node (this room is an edge: its producers are pipes from there); observers of the
        # events the origin relays to the other nodes.
        self.origin_node: str | None = None
        self.observers: list[Observer] = []
        self.placed = trio.Event()  # set once the room may be joined (placement done)
        self.started = trio.Event()  # set once the nursery runs
        self.finished = trio.Event()  # set once the nursery has exited
        self._on_closed = on_closed
        self._nursery: trio.Nursery | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The room's nursery. It is also the room's crash boundary: a bug in any of its tasks
        closes this room (peers told ``roomClosed`` with reason ``internal_error``) and no
        other; Cancelled (a BaseException) still goes through."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                log_event(logger, "room.created", room=self.id)
                self.started.set()
                task_status.started()
                await trio.sleep_forever()
        except Exception:
            log_event(logger, "room.crashed", level=logging.ERROR, room=self.id, exc_info=True)
            self.close("internal_error")
        finally:
            self._release_all()
            self.finished.set()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "room not started"
        return self._nursery

    def close(self, reason: str) -> None:
        """Close everything of the room, tell the peers, cancel the room's tasks."""
        if self.closed:
            return
        self.closed = True
        for peer in list(self.peers.values()):
            if peer.notify is not None:
                peer.notify("roomClosed", {"roomId": self.id, "reason": reason})
        self._release_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        log_event(logger, "room.closed", room=self.id, reason=reason)
        self._emit("roomClosed", {"roomId": self.id, "reason": reason})
        self._on_closed(self)

    def _release_all(self) -> None:
        for peer in list(self.peers.values()):
            self._release_peer(peer)
        self.peers.clear()
        for pipe in list(self.plain_transports.values()):  # pipes: no peer owns them
            self._close_transport(pipe)

    # ---- peers ------------------------------------------------------------------------------

    @property
    def host(self) -> Peer | None:
        return next((p for p in self.peers.values() if p.role == "host"), None)

    def join(self, peer_id: str, role: Role, notify: Notify, *,
             display_name: str | None = None) -> tuple[Peer, bool]:
        """Add a peer, or re-attach a known one (reconnect). Returns (peer, reconnected)."""
        self._check_open()
        peer = self.peers.get(peer_id)
        if peer is not None:
            if peer.role != role:
                raise Forbidden("peerId is in use with another role")
            # Reconnect: the old socket's transports and producers go, and only those.
            if peer.grace_scope is not None:
                peer.grace_scope.cancel()
                peer.grace_scope = None
            self._release_peer(peer)
            peer.notify = notify
            peer.name = display_name
            peer.joined_at, peer.got_media = trio.current_time(), False
            if role == "host":
                peer.resume_secret = new_secret()  # the old one goes with the old transports
            log_event(logger, "peer.reconnected", room=self.id, peer=peer_id, role=role)
            return peer, True
        if role == "host" and self.host is not None:
            raise Forbidden("the room already has a host")
        if role == "host" and self.origin_node is not None:
            raise Forbidden("the room has a host on another node")
        if len(self.peers) >= self.ctx.config.max_peers_per_room:
            raise LimitExceeded("the room is full")
        peer = Peer(peer_id, role, notify, name=display_name)
        if role == "host":
            peer.resume_secret = new_secret()
        self.peers[peer_id] = peer
        log_event(logger, "peer.joined", room=self.id, peer=peer_id, role=role)
        return peer, False

    def leave(self, peer: Peer) -> None:
        """A peer leaves for good: the host takes the room with it."""
        if self.peers.get(peer.id) is not peer:
            return
        if peer.role == "host":
            self.close("host_left")
            return
        self._release_peer(peer)
        del self.peers[peer.id]
        log_event(logger, "peer.left", room=self.id, peer=peer.id)
        if not self.peers:
            self.close("empty")

    def disconnected(self, peer: Peer) -> None:
        """The peer's socket closed. Viewers leave; the host gets a grace period to return."""
        if self.closed or self.peers.get(peer.id) is not peer:
            return
        peer.notify = None
        if peer.role != "host":
            self.leave(peer)
            return
        if self.ctx.config.host_grace_period == 0 or (
                not peer.produced and len(self.peers) == 1):
            # No grace period configured; or nothing to keep alive and nobody waiting: a host
            # that joined alone and hung up without ever producing takes its room now, not
            # after the grace period (so churning hosts cannot keep max_rooms full).
            self.close("host_left")
            return
        log_event(logger, "peer.disconnected", room=self.id, peer=peer.id,
                  grace=self.ctx.config.host_grace_period)
        scope = trio.CancelScope()
        peer.grace_scope = scope
        try:
            self.nursery.start_soon(self._host_grace, peer, scope)
        except RuntimeError:  # the room's nursery is ending (server stopping): no grace
            self.close("host_left")

    def resume(self, peer_id: str, secret: str, notify: Notify) -> Peer:
        """The host comes back on a new socket with the secret of its last join (or resume)
        answer: it gets its peer back with everything it had (transports, producers; the
        viewers' consumers never went), and a new secret (each is good once). Video
        producers are asked for a key frame (the viewers' video goes on from it).

        Anything else (no such peer, not a host, a wrong or spent secret) is Forbidden, with
        one message for all, so a guess learns nothing. A resume may also take over from a
        socket the server still believes alive (the client saw it die first): the old
        session's requests are refused from then on."""
        self._check_open()
        peer = self.peers.get(peer_id)
        expected = peer.resume_secret if peer is not None else None
        if peer is None or expected is None or not hmac.compare_digest(
                expected.encode(), secret.encode()):
            raise Forbidden("cannot resume: unknown peer or resume token")
        if peer.grace_scope is not None:
            peer.grace_scope.cancel()
            peer.grace_scope = None
        peer.notify = notify
        peer.resume_secret = new_secret()
        for producer in peer.producers.values():
            if producer.kind == "video" and not producer.paused:
                producer.transport.request_key_frame(producer)
        log_event(logger, "peer.resumed", room=self.id, peer=peer.id,
                  transports=len(peer.transports), producers=len(peer.producers))
        return peer

    async def _host_grace(self, peer: Peer, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.ctx.config.host_grace_period)
            if peer.notify is None and self.peers.get(peer.id) is peer:
                self.close("host_left")

    def _release_peer(self, peer: Peer) -> None:
        # Its producers and consumers live on its transports: they go with them.
        for transport in list(peer.transports.values()):
            self._close_transport(transport)
        for plain in list(peer.plain_transports.values()):
            self._close_transport(plain)

    def notify_all(self, event: str, data: dict[str, Any]) -> None:
        """Tell every connected peer (``serverShuttingDown``, ...)."""
        self._broadcast(event, data)

    def remove_peer(self, peer_id: str, reason: str) -> None:
        """An operator removes a peer: it is told ``peerRemoved`` and its transports,
        producers and consumers are freed; removing the host closes the room."""
        peer = self.peers.get(peer_id)
        if peer is None:
            raise PeerNotFound("no such peer in this room")
        if peer.notify is not None:
            peer.notify("peerRemoved", {"roomId": self.id, "peerId": peer.id, "reason": reason})
        if peer.grace_scope is not None:
            peer.grace_scope.cancel()
        log_event(logger, "peer.removed", room=self.id, peer=peer.id, reason=reason)
        if peer.role == "host":
            self.close(reason)
            return
        self._release_peer(peer)
        del self.peers[peer.id]
        if not self.peers:
            self.close("empty")

    def producer_by_id(self, producer_id: str) -> Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise ProducerNotFound("no such producer in this room")
        return producer

    def describe(self) -> dict[str, Any]:
        """The room for the admin API: peers with their producers and consumers, and the
        bitrates in (producers) and out (consumers), bits/s, as the engine measures them."""
        media = self.ctx.media

        def bitrate(handle: int) -> int:
            return int(sum(s.get("bitrate", 0) for s in media.rtp_stats(handle) or ()))

        producers = {p.id: {"id": p.id, "kind": p.kind, "paused": p.paused,
                            "consumers": len(p.consumers), "bitrate": bitrate(p.handle)}
                     for p in self.producers.values()}
        consumers = {c.id: {"id": c.id, "kind": c.kind, "producerId": c.producer.id,
                            "paused": c.paused, "bitrate": bitrate(c.handle)}
                     for c in self.consumers.values()}
        peers = [{"id": peer.id, "role": peer.role, "connected": peer.notify is not None,
                  "transports": len(peer.transports),
                  "producers": [producers[i] for i in peer.producers if i in producers],
                  "consumers": [consumers[i] for i in peer.consumers if i in consumers]}
                 for peer in self.peers.values()]
        return {"id": self.id, "peers": peers, "producers": len(producers),
                "consumers": len(consumers),
                "bitrateIn": sum(p["bitrate"] for p in producers.values()),
                "bitrateOut": sum(c["bitrate"] for c in consumers.values())}

    def _broadcast(self, event: str, data: dict[str, Any], *, exclude: Peer | None = None) -> None:
        for peer in self.peers.values():
            if peer is not exclude and peer.notify is not None:
                peer.notify(event, data)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        for observer in list(self.observers):
            observer(event, data)

    def _check_open(self) -> None:
        if self.closed:
            raise RoomClosed("the room is closed")

    # ---- transports -------------------------------------------------------------------------

    def create_transport(self, peer: Peer, direction: str, *,
                         sctp: bool = False) -> WebRtcTransport:
        """``sctp``: with data channels (createTransport's sctpCapabilities). A viewer may
        have a send transport only for data, and only where viewers may send data."""
        from pysfu.transport import WebRtcTransport

        self._check_open()
        if direction == "send" and peer.role != "host" and not (
                sctp and self.may_produce_data(peer)):
            raise Forbidden("only the host may create a send transport")
        if len(peer.transports) >= self.ctx.config.max_transports_per_peer:
            raise LimitExceeded("too many transports for this peer")
        ctx = self.ctx
        transport = WebRtcTransport(
            new_id(), peer.id, direction, handle=ctx.next_handle(), media=ctx.media,
            config=ctx.config, certificate=ctx.certificate, on_failed=self.transport_closed,
            room_id=self.id, metrics=ctx.metrics, on_media=self._first_media, sctp=sctp)
        transport.on_data = self._on_data
        transport.start(self.nursery)
        peer.transports[transport.id] = transport
        self.transports[transport.id] = transport
        log_event(logger, "transport.created", room=self.id, peer=peer.id,
                  transport=transport.id, direction=direction)
        return transport

    def owned_transport(self, peer: Peer, transport_id: str) -> WebRtcTransport:
        transport = self.transports.get(transport_id)
        if transport is None:
            raise TransportNotFound("no such transport in this room")
        if transport.owner != peer.id:
            raise Forbidden("the transport belongs to another peer")
        return transport

    def _media_transport(self, peer: Peer, transport_id: str) -> MediaTransport:
        """A transport of the peer of either kind (WebRTC or plain), for produce/consume."""
        plain = self.plain_transports.get(transport_id)
        if plain is not None:
            if plain.owner != peer.id:
                raise Forbidden("the transport belongs to another peer")
            return plain
        return self.owned_transport(peer, transport_id)

    # ---- plain transports (RTP without ICE/DTLS: ffmpeg, GStreamer, recorders) --------------

    def create_plain_transport(self, peer: Peer | None, *, comedia: bool, enable_srtp: bool,
                               srtp_suite: str, rtcp_mux: bool = True) -> PlainTransport:
        """The host (or, ``peer`` None, the operator through the admin API) opens a plain
        transport: a UDP port of its own in the engine (two without ``rtcp_mux``)."""
        self._check_open()
        if peer is not None and peer.role != "host":
            raise Forbidden("only the host may create a plain transport")
        if peer is not None and len(peer.plain_transports) >= MAX_PLAIN_TRANSPORTS_PER_PEER:
            raise LimitExceeded("too many plain transports for this peer")
        # Pipes live in plain_transports too but have their own limit (MAX_PIPES_PER_ROOM).
        plain = sum(not isinstance(t, PipeTransport) for t in self.plain_transports.values())
        if plain >= MAX_PLAIN_TRANSPORTS_PER_ROOM:
            raise LimitExceeded("too many plain transports in this room")
        ctx = self.ctx
        owner = peer.id if peer is not None else ADMIN_OWNER
        transport = PlainTransport(new_id(), owner, handle=ctx.next_handle(), media=ctx.media,
                                   config=ctx.config, comedia=comedia, enable_srtp=enable_srtp,
                                   srtp_suite=srtp_suite, room_id=self.id, rtcp_mux=rtcp_mux)
        try:
            transport.open()
        except (OSError, ValueError) as exc:
            log_event(logger, "plain_transport.no_port", level=logging.WARNING, room=self.id,
                      peer=owner, error=str(exc))
            raise LimitExceeded("no free port for a plain transport") from None
        if peer is not None:
            peer.plain_transports[transport.id] = transport
        self.plain_transports[transport.id] = transport
        log_event(logger, "plain_transport.created", room=self.id, peer=owner,
                  transport=transport.id, port=transport.local_port,
                  rtcp_port=transport.local_rtcp_port, comedia=comedia, srtp=enable_srtp)
        return transport

    def owned_plain_transport(self, peer: Peer | None, transport_id: str) -> PlainTransport:
        """A plain transport of ``peer`` (None: of the operator, admin API)."""
        transport = self.plain_transports.get(transport_id)
        if transport is None or isinstance(transport, PipeTransport):
            raise TransportNotFound("no such plain transport in this room")
        if transport.owner != (peer.id if peer is not None else ADMIN_OWNER):
            raise Forbidden("the transport belongs to another peer")
        return transport

    def admin_consume(self, transport: PlainTransport, producer_id: str) -> Consumer:
        """The operator's consumer of ``producer_id`` on its plain transport (a recorder):
        the router's codecs, no RTX, paused until resumed (``admin_consumer``)."""
        self._check_open()
        producer = self.producer_by_id(producer_id)
        if any(c.producer is producer and c.transport is transport
               for c in self.consumers.values()):
            raise AlreadyConsuming("this transport already consumes that producer")
        if sum(c.owner == ADMIN_OWNER for c in self.consumers.values()) >= \
                MAX_ADMIN_CONSUMERS_PER_ROOM:
            raise LimitExceeded("too many operator consumers in this room")
        caps = ortc.validate_rtp_capabilities(self.ctx.router_rtp_capabilities)
        rtp = ortc.get_consumer_rtp_parameters(producer.consumable, caps, enable_rtx=False)
        consumer = Consumer(new_id(), ADMIN_OWNER, transport, producer, producer.kind, rtp,
                            handle=self.ctx.next_handle())
        transport.add_consumer(consumer)
        producer.consumers.add(consumer.id)
        self.consumers[consumer.id] = consumer
        log_event(logger, "consumer.created", room=self.id, peer=ADMIN_OWNER,
                  transport=transport.id, consumer=consumer.id, producer=producer.id)
        return consumer

    def admin_consumer(self, consumer_id: str) -> Consumer:
        consumer = self.consumers.get(consumer_id)
        if consumer is None or consumer.owner != ADMIN_OWNER:
            raise ConsumerNotFound("no such operator consumer in this room")
        return consumer

    def close_plain_transport(self, peer: Peer | None, transport_id: str) -> None:
        self._close_transport(self.owned_plain_transport(peer, transport_id))

    # ---- pipes (router to router: pysfu.pipe) ------------------------------------------------

    def open_pipe(self) -> PipeTransport:
        """A pipe transport of this room (SRTP; its end goes to the other side)."""
        self._check_open()
        pipes = sum(isinstance(t, PipeTransport) for t in self.plain_transports.values())
        if pipes >= MAX_PIPES_PER_ROOM:
            raise LimitExceeded("too many pipes in this room")
        ctx = self.ctx
        pipe = PipeTransport(new_id(), handle=ctx.next_handle(), media=ctx.media,
                             config=ctx.config, room_id=self.id)
        try:
            pipe.open()
        except (OSError, ValueError) as exc:
            log_event(logger, "pipe.no_port", level=logging.WARNING, room=self.id,
                      error=str(exc))
            raise LimitExceeded("no free port for a pipe") from None
        self.plain_transports[pipe.id] = pipe
        log_event(logger, "pipe.transport_created", room=self.id, transport=pipe.id,
                  port=pipe.local_port)
        return pipe

    def close_pipe(self, pipe: PipeTransport) -> None:
        """Close a pipe transport (its producers and consumers go with it); idempotent."""
        if self.plain_transports.get(pipe.id) is pipe:
            self._close_transport(pipe)

    def pipe_consume(self, pipe: PipeTransport, producer_id: str
                     ) -> tuple[Consumer, dict[str, Any]]:
        """A pipe consumer of ``producer_id`` on ``pipe``; the offer the far side's
        ``pipe_produce`` takes."""
        self._check_open()
        if self.plain_transports.get(pipe.id) is not pipe:
            raise TransportNotFound("no such pipe in this room")
        producer = self.producer_by_id(producer_id)
        offer, streams = pipe_offer(producer)
        consumer = Consumer(new_id(), PIPE_OWNER, pipe, producer, producer.kind,
                            offer["rtpParameters"], handle=self.ctx.next_handle(), paused=False)
        self.ctx.media.add_consumer(consumer.handle, pipe.handle, producer.handle,
                                    pipe_consumer_spec(consumer, streams))
        producer.consumers.add(consumer.id)
        self.consumers[consumer.id] = consumer
        log_event(logger, "pipe.consumer_created", room=self.id, transport=pipe.id,
                  consumer=consumer.id, producer=producer.id)
        return consumer, offer

    def pipe_produce(self, pipe: PipeTransport, offer: Any) -> Producer:
        """The far side of ``pipe_consume``: a producer of this room fed by the pipe,
        announced to the peers (``newProducer``) like any other."""
        self._check_open()
        if self.plain_transports.get(pipe.id) is not pipe:
            raise TransportNotFound("no such pipe in this room")
        if not isinstance(offer, dict) or offer.get("kind") not in ("audio", "video"):
            raise PipeError("pipe offer: {kind, rtpParameters}")
        kind = offer["kind"]
        caps = self.ctx.router_rtp_capabilities
        params = ortc.validate_producer_rtp_parameters(
            kind, offer.get("rtpParameters"), pipe.producer_mids(), pipe.producer_ssrcs())
        mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
        consumable = ortc.get_consumable_rtp_parameters(kind, params, caps, mapping)
        consumable["rtcp"]["cname"] = pipe.claim_cname(params.get("rtcp", {}).get("cname"))
        producer = Producer(new_id(), PIPE_OWNER, pipe, kind, params, mapping, consumable,
                            handle=self.ctx.next_handle(), paused=bool(offer.get("paused")))
        pipe.add_producer(producer)
        self.producers[producer.id] = producer
        log_event(logger, "pipe.producer_created", room=self.id, transport=pipe.id,
                  producer=producer.id, kind=kind)
        self._broadcast("newProducer", {"producerId": producer.id, "kind": kind})
        return producer

    def watch_producer(self, producer_id: str, callback: Callable[[str], None]) -> None:
        """``callback("paused" | "resumed" | "closed")`` as the producer changes (a pipe's
        far side follows its origin)."""
        self.producer_by_id(producer_id)
        self._producer_watchers.setdefault(producer_id, []).append(callback)

    def set_pipe_producer_paused(self, producer: Producer, paused: bool) -> None:
        """A pipe producer follows its origin's pause: the peers are told as for a host's."""
        if self.producers.get(producer.id) is not producer or producer.paused == paused:
            return
        producer.paused = paused
        producer.transport.set_producer_paused(producer, paused)
        self._broadcast("producerPaused" if paused else "producerResumed",
                        {"producerId": producer.id})

    def close_pipe_producer(self, producer: Producer) -> None:
        """A pipe producer whose origin closed goes (``producerClosed``); idempotent."""
        if self.producers.get(producer.id) is not producer:
            return
        removed = producer.transport.remove_producer(producer)
        self._forget(removed or {"producers": [producer.handle], "consumers": []})

    def request_key_frame(self, peer: Peer, consumer_id: str) -> Consumer:
        """The consumer's producer is asked for a key frame (for a receiver without RTCP,
        e.g. ffmpeg starting to record)."""
        consumer = self.owned_consumer(peer, consumer_id)
        self.ctx.media.request_key_frame(consumer.handle)
        return consumer

    def _first_media(self, transport: WebRtcTransport) -> None:
        """The engine forwarded a transport's first media packet: the first for its owner
        since it joined gives the join-to-first-packet time."""
        peer = self.peers.get(transport.owner)
        if peer is None or peer.got_media:
            return
        peer.got_media = True
        self.ctx.metrics.first_packet(trio.current_time() - peer.joined_at)

    def transport_closed(self, transport: WebRtcTransport, reason: str) -> None:
        """Called by a transport whose ICE consent or DTLS failed: tell its owner, clean up."""
        if self.transports.get(transport.id) is not transport:
            return
        owner = self.peers.get(transport.owner)
        self._close_transport(transport)
        if owner is not None and owner.notify is not None:
            owner.notify("transportClosed", {"transportId": transport.id, "reason": reason})

    def _close_transport(self, transport: MediaTransport) -> None:
        owner = self.peers.get(transport.owner)
        self.transports.pop(transport.id, None)
        self.plain_transports.pop(transport.id, None)
        if owner is not None:
            owner.transports.pop(transport.id, None)
            owner.plain_transports.pop(transport.id, None)
        self._forget_data(transport)
        self._forget(transport.close())
        log_event(logger, "transport.closed", room=self.id, peer=transport.owner,
                  transport=transport.id)

    def _forget(self, removed: Removed) -> None:
        """Drop what the engine removed from the room's registries and tell the others
        about each producer that went (``producerClosed``).

        The engine is the one place that decides what a removal takes with it (a transport
        its producers and consumers, a producer its consumers): it owns the objects that
        carry media, so its answer is what is true, and deciding again here could only
        disagree with it. The room applies the answer and keeps the notifications."""
        gone_consumers = set(removed["consumers"])
        gone_producers = set(removed["producers"])
        for consumer in [c for c in self.consumers.values() if c.handle in gone_consumers]:
            consumer.producer.consumers.discard(consumer.id)
            del self.consumers[consumer.id]
            viewer = self.peers.get(consumer.owner)
            if viewer is not None:
                viewer.consumers.pop(consumer.id, None)
        for producer in [p for p in self.producers.values() if p.handle in gone_producers]:
            del self.producers[producer.id]
            owner = self.peers.get(producer.owner)
            if owner is not None:
                owner.producers.pop(producer.id, None)
            log_event(logger, "producer.closed", room=self.id, peer=producer.owner,
                      producer=producer.id)
            self._broadcast("producerClosed", {"producerId": producer.id}, exclude=owner)
            for watcher in self._producer_watchers.pop(producer.id, []):
                watcher("closed")
            self._emit("producerClosed", {"producerId": producer.id})

    # ---- producers --------------------------------------------------------------------------

    def produce(self, peer: Peer, transport_id: str, kind: str, rtp_parameters: Any) -> Producer:
        self._check_open()
        if peer.role != "host":
            raise Forbidden("viewers cannot produce")
        transport = self._media_transport(peer, transport_id)
        if not transport.can_produce:
            raise Forbidden("produce needs a send transport")
        if len(peer.producers) >= self.ctx.config.max_producers_per_peer:
            raise LimitExceeded("too many producers for this peer")
        caps = self.ctx.router_rtp_capabilities
        # Bad parameters raise ortc.OrtcError, whose code is the protocol's.
        params = ortc.validate_producer_rtp_parameters(
            kind, rtp_parameters, transport.producer_mids(), transport.producer_ssrcs()
        )
        mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
        consumable = ortc.get_consumable_rtp_parameters(kind, params, caps, mapping)
        # The transport's first CNAME wins for every later producer (A/V sync at the viewer).
        consumable["rtcp"]["cname"] = transport.claim_cname(params.get("rtcp", {}).get("cname"))
        producer = Producer(new_id(), peer.id, transport, kind, params, mapping, consumable,
                            handle=self.ctx.next_handle())
        transport.add_producer(producer)
        peer.produced = True
        peer.producers[producer.id] = producer
        self.producers[producer.id] = producer
        log_event(logger, "producer.created", room=self.id, peer=peer.id,
                  transport=transport.id, producer=producer.id, kind=kind)
        self._broadcast("newProducer", {"producerId": producer.id, "kind": kind}, exclude=peer)
        self._emit("newProducer", {"producerId": producer.id, "kind": kind})
        return producer

    def close_producer(self, peer: Peer, producer_id: str) -> None:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise ProducerNotFound("no such producer in this room")
        if producer.owner != peer.id:
            raise Forbidden("the producer belongs to another peer")
        removed = producer.transport.remove_producer(producer)
        self._forget(removed or {"producers": [producer.handle], "consumers": []})

    def set_producer_paused(self, peer: Peer, producer_id: str, paused: bool) -> Producer:
        """The host pauses (mutes) or resumes one of its producers: the engine stops
        forwarding it (and asks for a key frame on resume); the other peers are told
        ``producerPaused`` / ``producerResumed``."""
        self._check_open()
        producer = self.owned_producer(peer, producer_id)
        if producer.paused != paused:
            producer.paused = paused
            producer.transport.set_producer_paused(producer, paused)
            log_event(logger, "producer.paused" if paused else "producer.resumed", room=self.id,
                      peer=peer.id, producer=producer.id)
            self._broadcast("producerPaused" if paused else "producerResumed",
                            {"producerId": producer.id}, exclude=peer)
            for watcher in list(self._producer_watchers.get(producer.id, [])):
                watcher("paused" if paused else "resumed")
        return producer

    def producer_list(self, peer: Peer) -> list[dict[str, str]]:
        return [{"id": p.id, "kind": p.kind} for p in self.producers.values() if p.owner != peer.id]

    # ---- consumers --------------------------------------------------------------------------

    def consume(self, peer: Peer, transport_id: str, producer_id: str, caps: Any) -> Consumer:
        self._check_open()
        transport = self._media_transport(peer, transport_id)
        if not transport.can_consume:
            raise Forbidden("consume needs a recv transport")
        producer = self.producers.get(producer_id)
        if producer is None:
            raise ProducerNotFound("no such producer in this room")
        if len(peer.consumers) >= self.ctx.config.max_consumers_per_peer:
            raise LimitExceeded("too many consumers for this peer")
        if any(c.producer is producer and c.transport is transport
               for c in peer.consumers.values()):
            raise AlreadyConsuming("this transport already consumes that producer")
        pulled = sum(self._producer_bitrate(c.producer) for c in peer.consumers.values())
        if pulled + self._producer_bitrate(producer) > \
                self.ctx.config.max_consumed_bitrate_per_peer:
            raise LimitExceeded("too much bitrate for this peer")
        caps = ortc.validate_rtp_capabilities(caps)  # ortc.OrtcError if malformed
        if not ortc.can_consume(producer.consumable, caps):
            raise CannotConsume("device cannot receive this producer")
        rtp = ortc.get_consumer_rtp_parameters(
            producer.consumable, caps, enable_rtx=producer.kind == "video"
        )
        rtp["mid"] = transport.next_mid()
        consumer = Consumer(new_id(), peer.id, transport, producer, producer.kind, rtp,
                            handle=self.ctx.next_handle())
        transport.add_consumer(consumer)
        producer.consumers.add(consumer.id)
        peer.consumers[consumer.id] = consumer
        self.consumers[consumer.id] = consumer
        log_event(logger, "consumer.created", room=self.id, peer=peer.id,
                  transport=transport.id, consumer=consumer.id, producer=producer.id)
        if len(producer.mapping["encodings"]) > 1 or max(_layers(producer)) > 1 \
                or ortc.svc_layers(producer.rtp_parameters) is not None:
            self.nursery.start_soon(self._watch_layers, consumer)
        return consumer

    async def _watch_layers(self, consumer: Consumer) -> None:
        def notify(spatial: int, temporal: int) -> None:
            owner = self.peers.get(consumer.owner)
            if owner is not None and owner.notify is not None:
                owner.notify("consumerLayersChanged",
                             {"consumerId": consumer.id, "spatialLayer": spatial,
                              "temporalLayer": temporal})
            log_event(logger, "consumer.layers_changed", room=self.id, peer=consumer.owner,
                      consumer=consumer.id, spatial=spatial, temporal=temporal)

        await watch_consumer_layers(
            self.ctx.media, consumer.handle,
            still_open=lambda: self.consumers.get(consumer.id) is consumer, on_change=notify)

    def _producer_bitrate(self, producer: Producer) -> int:
        """What one consumer of ``producer`` may pull, bits/s: its highest encoding's declared
        maxBitrate or measured bitrate, whichever is larger."""
        declared = max((e.get("maxBitrate") or 0 for e in producer.rtp_parameters["encodings"]),
                       default=0)
        measured = max((s.get("bitrate", 0) for s in
                        self.ctx.media.rtp_stats(producer.handle) or ()), default=0)
        return max(int(declared), int(measured))

    def owned_consumer(self, peer: Peer, consumer_id: str) -> Consumer:
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            raise ConsumerNotFound("no such consumer in this room")
        if consumer.owner != peer.id:
            raise Forbidden("the consumer belongs to another peer")
        return consumer

    def set_consumer_paused(self, peer: Peer, consumer_id: str, paused: bool) -> Consumer:
        consumer = self.owned_consumer(peer, consumer_id)
        if consumer.paused != paused:
            consumer.paused = paused
            consumer.transport.set_consumer_paused(consumer, paused)
        return consumer

    def set_consumer_preferred_layers(
        self, peer: Peer, consumer_id: str, spatial: int, temporal: int | None
    ) -> tuple[Consumer, int, int | None]:
        """The highest spatial (simulcast stream or VP9 SVC layer) and temporal (VP8 TID,
        VP9 TID, H264 and AV1 decode targets) layers the viewer wants, clamped to what
        exists; a temporal layer of None means every one."""
        consumer = self.owned_consumer(peer, consumer_id)
        requested_spatial = spatial
        declared = _temporal_layers(consumer.producer)
        selectable = ortc.temporal_layers_selectable(consumer.producer.rtp_parameters)
        if not selectable:
            # H264 without the dependency descriptor: nothing tells its layers apart; the
            # viewer gets every one, and is told so (the top declared layer).
            temporal = None
        elif temporal is not None and declared > 1:
            # Clamped to the temporal layers the producer declares, when it declares some (a
            # sender may use layers it does not declare: the engine goes by the TIDs it sees).
            temporal = min(temporal, declared - 1)
        layers = consumer.transport.set_consumer_preferred_layers(consumer, spatial, temporal)
        if layers is None:
            raise ConsumerNotFound("the consumer is closing")
        spatial = layers[0]
        if not selectable and declared > 1:
            temporal = declared - 1
        encodings = consumer.producer.rtp_parameters["encodings"]
        if len(encodings) == 1:
            # One stream with spatial layers (AV1 SVC): the engine selects within it.
            spatial_layers = ortc.parse_scalability_mode(encodings[0].get("scalabilityMode"))[0]
            spatial = max(spatial, min(requested_spatial, spatial_layers - 1))
        log_event(logger, "consumer.preferred_layers", room=self.id, peer=peer.id,
                  consumer=consumer.id, spatial=spatial, temporal=temporal)
        return consumer, spatial, temporal

    def owned_producer(self, peer: Peer, producer_id: str) -> Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise ProducerNotFound("no such producer in this room")
        if producer.owner != peer.id:
            raise Forbidden("the producer belongs to another peer")
        return producer

    def stats(self, peer: Peer, target: str, object_id: str) -> list[dict[str, Any]]:
        """getStats for a transport, producer or consumer the peer owns."""
        self._check_open()
        media = self.ctx.media
        if target == "transportId" and object_id in self.plain_transports:
            records = stats.plain_transport_stats(media,
                                                  self.owned_plain_transport(peer, object_id))
        elif target == "transportId":
            records = stats.transport_stats(media, self.owned_transport(peer, object_id))
        elif target == "producerId":
            records = stats.producer_stats(media, self.owned_producer(peer, object_id))
        else:
            records = stats.consumer_stats(media, self.owned_consumer(peer, object_id))
        if records is None:  # closing in the engine already (e.g. its transport just failed)
            gone = {"transportId": TransportNotFound,
                    "producerId": ProducerNotFound}.get(target, ConsumerNotFound)
            raise gone("the object is closing")
        return records

    # ---- data channels ----------------------------------------------------------------------

    def may_produce_data(self, peer: Peer) -> bool:
        return peer.role == "host" or self.ctx.config.viewer_data_channels

    def produce_data(self, peer: Peer, transport_id: str, params: StreamParameters,
                     label: str, protocol: str) -> DataProducer:
        self._check_open()
        if not self.may_produce_data(peer):
            raise Forbidden("viewers cannot send data in this room")
        transport = self.owned_transport(peer, transport_id)
        if transport.direction != "send":
            raise Forbidden("produceData needs a send transport")
        if transport.sctp is None:
            raise Forbidden("the transport was created without sctpCapabilities")
        if len(peer.data_producers) >= self.ctx.config.max_data_producers_per_peer:
            raise LimitExceeded("too many data producers for this peer")
        route = (transport.id, params.stream_id)
        if route in self._data_routes:
            raise Forbidden("that streamId is in use on this transport")
        producer = DataProducer(new_id(), peer.id, transport, params, label, protocol,
                                DataLimits(self.ctx.config, trio.current_time()),
                                owner_name=peer.display_name)
        self._data_routes[route] = producer
        peer.data_producers[producer.id] = producer
        self.data_producers[producer.id] = producer
        log_event(logger, "data_producer.created", room=self.id, peer=peer.id,
                  transport=transport.id, data_producer=producer.id, stream=params.stream_id)
        self._broadcast("newDataProducer", {"dataProducerId": producer.id, "label": label,
                                            "protocol": protocol, "peerId": peer.id,
                                            "displayName": producer.owner_name},
                        exclude=peer)
        return producer

    def data_producer_list(self, peer: Peer) -> list[dict[str, Any]]:
        return [p.describe() for p in self.data_producers.values() if p.owner != peer.id]

    def consume_data(self, peer: Peer, transport_id: str, data_producer_id: str) -> DataConsumer:
        self._check_open()
        transport = self.owned_transport(peer, transport_id)
        if transport.direction != "recv":
            raise Forbidden("consumeData needs a recv transport")
        if transport.sctp is None:
            raise Forbidden("the transport was created without sctpCapabilities")
        producer = self.data_producers.get(data_producer_id)
        if producer is None:
            raise DataProducerNotFound("no such data producer in this room")
        if len(peer.data_consumers) >= self.ctx.config.max_data_consumers_per_peer:
            raise LimitExceeded("too many data consumers for this peer")
        if any(c.transport is transport for c in producer.consumers.values()):
            raise AlreadyConsuming("this transport already consumes that data producer")
        stream = transport.allocate_stream()
        if stream is None:
            raise LimitExceeded("no free SCTP stream on this transport")
        consumer = DataConsumer(new_id(), peer.id, transport, producer, stream)
        transport.open_data_stream(stream, producer.stream)
        producer.consumers[consumer.id] = consumer
        peer.data_consumers[consumer.id] = consumer
        self.data_consumers[consumer.id] = consumer
        log_event(logger, "data_consumer.created", room=self.id, peer=peer.id,
                  transport=transport.id, data_consumer=consumer.id,
                  data_producer=producer.id, stream=stream)
        return consumer

    def close_data_producer(self, peer: Peer, data_producer_id: str) -> None:
        producer = self.data_producers.get(data_producer_id)
        if producer is None:
            raise DataProducerNotFound("no such data producer in this room")
        if producer.owner != peer.id:
            raise Forbidden("the data producer belongs to another peer")
        self._remove_data_producer(producer)

    def _remove_data_producer(self, producer: DataProducer) -> None:
        for consumer in list(producer.consumers.values()):
            self._remove_data_consumer(consumer)
            consumer.transport.release_stream(consumer.stream_id)
        self.data_producers.pop(producer.id, None)
        self._data_routes.pop((producer.transport.id, producer.stream.stream_id), None)
        owner = self.peers.get(producer.owner)
        if owner is not None:
            owner.data_producers.pop(producer.id, None)
        log_event(logger, "data_producer.closed", room=self.id, peer=producer.owner,
                  data_producer=producer.id, messages=producer.messages,
                  dropped=sum(producer.dropped.values()))
        self._broadcast("dataProducerClosed", {"dataProducerId": producer.id}, exclude=owner)

    def _remove_data_consumer(self, consumer: DataConsumer) -> None:
        consumer.producer.consumers.pop(consumer.id, None)
        self.data_consumers.pop(consumer.id, None)
        viewer = self.peers.get(consumer.owner)
        if viewer is not None:
            viewer.data_consumers.pop(consumer.id, None)

    def _forget_data(self, transport: MediaTransport) -> None:
        """A transport closes: its data producers (and their consumers) and its data
        consumers go with it."""
        for producer in [p for p in self.data_producers.values() if p.transport.id == transport.id]:
            self._remove_data_producer(producer)
        for consumer in [c for c in self.data_consumers.values() if c.transport.id == transport.id]:
            self._remove_data_consumer(consumer)

    def _on_data(self, transport: WebRtcTransport, stream: int, ppid: int, data: bytes) -> None:
        """A whole message from a transport's association: checked against its data
        producer's limits, then written into every data consumer's association in one native
        call, and every resulting datagram sent in one engine call."""
        producer = self._data_routes.get((transport.id, stream))
        if producer is None:
            self.data_unrouted += 1
            return
        now = trio.current_time()
        why = producer.limits.check(len(data), now)
        if why is not None:
            producer.dropped[why] = producer.dropped.get(why, 0) + 1
            self.ctx.metrics.data_dropped_over_limit(why)
            if not producer.told:
                producer.told = True
                owner = self.peers.get(producer.owner)
                if owner is not None and owner.notify is not None:
                    owner.notify("dataProducerLimited",
                                 {"dataProducerId": producer.id, "reason": why})
                log_event(logger, "data_producer.limited", level=logging.WARNING, room=self.id,
                          peer=producer.owner, data_producer=producer.id, reason=why)
            return
        producer.messages += 1
        targets = [(c, sctp) for c in producer.consumers.values()
                   if (sctp := c.transport.sctp) is not None]
        if not targets:
            return
        results = sctp_fanout([(sctp, c.stream_id) for c, sctp in targets], ppid, data, now)
        items: list[tuple[int, str, int, bytes, str]] = []
        for (consumer, _), (result, packets) in zip(targets, results, strict=True):
            if result != "sent":
                consumer.dropped += 1
            items.extend(consumer.transport.protect_data(packets))
        if items:
            self.ctx.media.send_many(items)

    def data_snapshot(self) -> dict[str, int]:
        """Data channel registry sizes, for tests and metrics."""
        return {"dataProducers": len(self.data_producers),
                "dataConsumers": len(self.data_consumers),
                "dataRoutes": len(self._data_routes)}

    def snapshot(self) -> dict[str, int]:
        """Registry sizes, for tests and metrics."""
        return {
            "peers": len(self.peers),
            "transports": len(self.transports),
            "producers": len(self.producers),
            "consumers": len(self.consumers),
        }


class RoomRegistry:
    """All rooms of a server; rooms run as tasks in the server's nursery."""

    def __init__(self, ctx: ServerContext, nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self._nursery = nursery
        self.rooms: dict[str, Room] = {}
        # Draining: no new rooms (a join of an unknown room is Unavailable); the rooms there
        # are keep being served. Set by the admin API and at shutdown.
        self.draining = False
        self._created_by: dict[str, deque[float]] = {}  # address -> times it created rooms
        self.placement: Placement | None = None  # several nodes (pysfu.cluster); None = one

    def get(self, room_id: str) -> Room | None:
        return self.rooms.get(room_id)

    async def get_or_create(self, room_id: str, *, address: str = "",
                            role: Role = "viewer", redirected: bool = False) -> Room:
        """The open room ``room_id``, created on first use (by ``address``, an IP, which may
        create at most max_rooms_per_address_per_minute rooms a minute). With several nodes
        a new room is placed first (``Placement.place``: origin here, or an edge of the
        origin node, or ``Redirect`` to another node unless the client arrives through a
        redirect); a refused placement closes it again and raises."""
        room = self.rooms.get(room_id)
        if room is not None and not room.closed:
            await room.started.wait()  # a concurrent join may still be starting it
            await room.placed.wait()
            if not room.closed:
                return room
            # Its placement was refused meanwhile (e.g. redirected): this join is placed anew.
        if self.draining:
            if self.placement is not None and role == "host" and not redirected:
                await self.placement.leave_to_another_node(room_id)  # Redirect, or on:
            raise Unavailable("this server takes no new rooms (draining); try another")
        if len(self.rooms) >= self.ctx.config.max_rooms:
            raise LimitExceeded("too many rooms on this server")
        self._note_creation(address)
        room = Room(room_id, self.ctx, self._forget)
        self.rooms[room_id] = room
        await self._nursery.start(room.run)
        if self.placement is not None:
            try:
                await self.placement.place(room, role, redirected=redirected)
            except BaseException:
                room.close("placement_refused")
                raise
            finally:
                room.placed.set()
        else:
            room.placed.set()
        return room

    def _note_creation(self, address: str) -> None:
        now = trio.current_time()
        if len(self._created_by) > _MAX_TRACKED_ADDRESSES:
            self._created_by = {a: t for a, t in self._created_by.items()
                                if t and t[-1] > now - _CREATION_WINDOW}
        times = self._created_by.setdefault(address, deque())
        while times and times[0] <= now - _CREATION_WINDOW:
            times.popleft()
        if len(times) >= self.ctx.config.max_rooms_per_address_per_minute:
            # Counted, and logged at a bounded rate (a flood would otherwise be a log flood).
            limits = getattr(self.ctx, "limits", None)
            if limits is not None:
                limits.refusals.note("rooms_per_address", address, now)
            raise RateLimited("too many new rooms from this address")
        times.append(now)

    def _forget(self, room: Room) -> None:
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
        if self.placement is not None:
            self.placement.room_closed(room)
