"""One node of a cluster: its registry entry, the room directory, the node-to-node requests
and the pipes between nodes. Redis (through coredis, which runs on anyio, so under Trio
natively) is the shared directory and the bus; media goes through pipe transports
(``pysfu.pipe``), UDP between the nodes' engines, never through Redis.

Keys (every value expires unless refreshed; ``TTL`` 6 s, refreshed every ``REFRESH`` 2 s):

- ``pysfu:node:{id}``: this node's entry (JSON: id, signaling URL, pipe address, load).
- ``pysfu:room:{room}``: the room's origin node id, created with SET NX: of two nodes racing
  for a new room exactly one gets it. The origin refreshes it while the room is open (and
  writes it again if it is missing, e.g. after a Redis restart) and deletes it when the room
  closes (only if it still names this node).
- channel ``pysfu:inbox:{id}``: the node's inbox. Requests, answers and room events
  addressed to it, each sealed with the shared ``cluster_secret`` (``messages``); sent and
  read by ``pysfu.cluster.bus``.

A viewer may join on any node. If the room's origin is another node, this node's room is an
*edge*: it asks the origin (``attach``) for the room's producers, then for one pipe per
producer (``pipe``: the two pipe ends and the pipe offer travel in the request and its
answer), however many viewers join here. The origin tells every attached node of
``newProducer`` (the edge asks for a pipe), ``producerClosed`` (both sides close that pipe)
and ``roomClosed`` (the edge room closes with the same reason). An edge room that empties
closes and tells the origin (``detach``), which closes that node's pipes.

Failures: a node whose registry entry has expired is gone. Edge rooms whose origin is gone
close with reason ``node_lost`` (checked every ``WATCH_INTERVAL``: within TTL + 1 s of the
last refresh); an origin closes the pipes it serves to a gone node.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import coredis
import trio
from coredis.tokens import PureToken

from pysfu.cluster.bus import PREFIX, REDIS_ERRORS, REQUEST_TIMEOUT, Bus, RequestFailed
from pysfu.cluster.placement import LoadMeter, Placer, Target
from pysfu.log import log_event
from pysfu.pipe import PipeEnd, PipeError, PipeTransport
from pysfu.plain import PlainTransportError
from pysfu.room import Forbidden, NotFound, Redirect, Role, Room, RoomError, Unavailable

if TYPE_CHECKING:
    from pysfu.config import Config
    from pysfu.room import RoomRegistry
    from pysfu.transport import Producer

logger = logging.getLogger("pysfu.cluster")

TTL = 6.0  # seconds a registry entry or a room's directory entry lives without a refresh
REFRESH = 2.0  # seconds between refreshes
WATCH_INTERVAL = 1.0  # seconds between checks that the nodes we depend on are alive
# A Redis that has just (re)started holds no registry entries until every node's next
# refresh: no node is declared lost while Redis's uptime is below this, seconds. Nor for
# this long after this node reaches Redis again: the others could not refresh either, and
# entries that expired meanwhile come back with their next refresh.
RESTART_QUIET = REFRESH + 1.0
# A producer added on the origin (newProducer) whose pipe could not be set up here (e.g. no
# free pipe port) is tried again this many times, this many seconds apart, while it lasts.
PIPE_RETRIES = 5
PIPE_RETRY_DELAY = 1.0
# A new room reserved in the directory for the node a host is redirected to lives this long
# before the host arrives there (then the node refreshes it like its other rooms).
RESERVATION_TTL = 10.0
MAX_NODES = 1000  # registry entries read when placing a room
MAX_ADDED_PIPES = 1024  # producers added on an origin being piped with retries, per edge

# Compare-and-delete / refresh-or-reclaim of a room's directory entry (atomic in Redis).
_DELETE_IF_OURS = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                   "return redis.call('del', KEYS[1]) else return 0 end")
_REFRESH_OR_CLAIM = ("local v = redis.call('get', KEYS[1]) "
                     "if v == false then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
                     "return 1 elseif v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) "
                     "return 1 else return 0 end")


def node_key(node_id: str) -> str:
    return f"{PREFIX}:node:{node_id}"


def room_key(room_id: str) -> str:
    return f"{PREFIX}:room:{room_id}"


@dataclass
class EdgeRoom:
    """A room of this node whose origin is another node: the pipes it gets from there."""

    room: Room
    origin: str
    pipes: dict[str, PipeTransport] = field(default_factory=dict)  # origin producer id ->
    producers: dict[str, Producer] = field(default_factory=dict)  # origin producer id ->
    pending: set[str] = field(default_factory=set)  # origin producer ids being piped
    wanted: set[str] = field(default_factory=set)  # added producers piped with retries


@dataclass
class Served:
    """A room of this node (its origin) and the pipes it serves to each attached node."""

    room: Room
    nodes: dict[str, dict[str, PipeTransport]] = field(default_factory=dict)


class Cluster:
    """This node in the cluster. ``run`` connects to Redis and keeps the node registered;
    the room registry calls ``place`` for each new room and ``room_closed`` for each closed
    one (``pysfu.room.Placement``)."""

    def __init__(self, config: Config, *, signaling_url: Callable[[], str],
                 load: Callable[[], dict[str, Any]], clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert config.cluster_redis_url is not None and config.cluster_secret is not None
        self.config = config
        self.node_id = config.node_id or "n-" + secrets.token_hex(6)
        self._secret = config.cluster_secret.encode()
        self._signaling_url = signaling_url
        self._load = load
        self._clock = clock
        self._monotonic = monotonic
        self.meter = LoadMeter()
        self.placer = Placer(self.node_id)
        self.redis: coredis.Redis[str] = coredis.Redis.from_url(
            config.cluster_redis_url, decode_responses=True)
        self.bus = Bus(self.redis, self._secret, self.node_id, clock=clock,
                       on_message=self._dispatch)
        self.edges: dict[str, EdgeRoom] = {}
        self.served: dict[str, Served] = {}
        self.rooms: RoomRegistry | None = None
        self._unreachable = False  # a Redis call failed since the last watch round
        self._judge_after = 0.0  # monotonic time before which no node is declared lost
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "attach": self._on_attach,
            "pipe": self._on_pipe,
        }

    @property
    def pipe_ip(self) -> str:
        return self.config.node_pipe_ip or self.config.candidate_ip

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, rooms: RoomRegistry, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, listen to the inbox, refresh and watch until cancelled."""
        self.rooms = rooms
        try:
            await self._run(rooms, task_status)
        except* anyio.ClosedResourceError:
            # Cancelled (the server stops): coredis's pubsub then unsubscribes on a
            # connection its pool has closed already. Nothing is lost: the node leaves.
            log_event(logger, "cluster.inbox_closed", node=self.node_id)

    async def _run(self, rooms: RoomRegistry, task_status: trio.TaskStatus[None]) -> None:
        async with self.redis, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._register()
            await nursery.start(self.bus.listen)
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._watch_loop)
            rooms.placement = self
            log_event(logger, "cluster.joined", node=self.node_id, url=self._signaling_url(),
                      pipe_ip=self.pipe_ip)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                rooms.placement = None
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._leave()

    def load(self) -> dict[str, Any]:
        """This node's load now: rooms, peers, draining (counted now), forwarded packets/s
        and CPU percent (over the last refresh period)."""
        raw = self._load()
        return {"rooms": raw.get("rooms", 0), "peers": raw.get("peers", 0),
                "pps": round(self.meter.pps, 1), "cpu": round(self.meter.cpu, 1),
                "draining": bool(raw.get("draining", False))}

    async def _register(self) -> None:
        raw = self._load()
        self.meter.sample(self._monotonic(), float(raw.get("cpuSeconds", 0.0)),
                          int(raw.get("forwarded", 0)))
        # nodeUrl: only a node_url set on purpose makes this node a redirect target.
        entry = {"id": self.node_id, "url": self._signaling_url(), "pipeIp": self.pipe_ip,
                 "nodeUrl": self.config.node_url, "load": self.load(), "ts": self._clock()}
        await self.redis.set(node_key(self.node_id), json.dumps(entry), px=int(TTL * 1000))

    async def _leave(self) -> None:
        """A clean stop: the node's entry and its rooms' entries go at once. Through a
        client of its own: the cancellation that stops the node has closed the connections
        of ``self.redis`` already."""
        assert self.config.cluster_redis_url is not None
        try:
            async with coredis.Redis.from_url(self.config.cluster_redis_url,
                                              decode_responses=True) as redis:
                await redis.delete([node_key(self.node_id)])
                for room_id in list(self.served):
                    await redis.eval(_DELETE_IF_OURS, [room_key(room_id)], [self.node_id])
        except (*REDIS_ERRORS, anyio.ClosedResourceError) as exc:
            log_event(logger, "cluster.leave_failed", level=logging.WARNING,
                      node=self.node_id, error=str(exc) or type(exc).__name__)

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(REFRESH)
            try:
                with trio.fail_after(REFRESH):
                    await self._register()
                    for room_id in list(self.served):
                        await self.redis.eval(_REFRESH_OR_CLAIM, [room_key(room_id)],
                                              [self.node_id, int(TTL * 1000)])
            except REDIS_ERRORS as exc:
                self._unreachable = True
                log_event(logger, "cluster.refresh_failed", level=logging.WARNING,
                          node=self.node_id, error=str(exc) or type(exc).__name__)

    async def _watch_loop(self) -> None:
        while True:
            await trio.sleep(WATCH_INTERVAL)
            await self._watch_once()

    async def _watch_once(self) -> None:
        """Edge rooms whose origin is gone close (``node_lost``); pipes served to a gone
        node close. Only the nodes looked up are judged: a node that attached (or an edge
        room that opened) while the lookups were under way waits for the next round."""
        nodes = {e.origin for e in self.edges.values()}
        nodes.update(n for s in self.served.values() for n in s.nodes)
        if not nodes:
            return
        try:
            with trio.fail_after(REFRESH):
                uptime = (await self.redis.info("server")).get("uptime_in_seconds")
                if not isinstance(uptime, int | float) or uptime < RESTART_QUIET:
                    return  # Redis restarted: the nodes have not re-registered yet
                lost = {n for n in nodes if not await self.redis.exists([node_key(n)])}
        except REDIS_ERRORS:
            self._unreachable = True
            return  # Redis unreachable: nothing is known to be gone
        now = self._monotonic()
        if self._unreachable:  # Redis answers again: the others re-register first
            self._unreachable = False
            self._judge_after = now + RESTART_QUIET
        if now < self._judge_after:
            return
        try:
            self._drop_lost(lost)
        except Exception:  # a bug: logged, the watch goes on
            log_event(logger, "cluster.watch_crashed", level=logging.ERROR,
                      node=self.node_id, exc_info=True)

    def _drop_lost(self, lost: set[str]) -> None:
        """Close the edge rooms of gone origins and the pipes served to gone nodes."""
        for edge in [e for e in self.edges.values() if e.origin in lost]:
            log_event(logger, "cluster.node_lost", node=self.node_id, lost=edge.origin,
                      room=edge.room.id)
            edge.room.close("node_lost")
        for served in list(self.served.values()):
            for node in [n for n in served.nodes if n in lost]:
                self._close_served(served, node)

    # ---- placement (pysfu.room.Placement) -----------------------------------------------

    async def place(self, room: Room, role: Role, *, redirected: bool = False) -> None:
        """Claim ``room`` for this node (SET NX), or make it an edge of its origin, or (a
        host, ``least_loaded``, not arriving through a redirect) send the host to the least
        loaded node (``Redirect``), the room reserved for that node in the directory."""
        may_redirect = (role == "host" and not redirected
                        and self.config.cluster_placement == "least_loaded")
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                origin: str | None = None
                origin_entry: dict[str, Any] | None = None
                target = await self._reserve_elsewhere(room.id) if may_redirect else None
                if target is None:
                    origin = await self._claim(room.id)
                    if origin is not None and origin != self.node_id:
                        origin_entry = await self._entry(origin)
        except REDIS_ERRORS as exc:
            log_event(logger, "cluster.directory_unreachable", level=logging.WARNING,
                      room=room.id, error=str(exc) or type(exc).__name__)
            raise Unavailable("the cluster directory is unreachable; try again") from None
        if target is not None:
            log_event(logger, "cluster.redirect", room=room.id, to=target.node_id,
                      score=round(target.score, 1))
            raise Redirect(target.url, target.node_id)
        if origin == self.node_id:
            self._serve(room)
            return
        if origin is None or origin_entry is None:
            raise Unavailable("the room's node was lost; try again in a few seconds")
        if role == "host":
            url = origin_entry.get("nodeUrl")
            if may_redirect and isinstance(url, str) and url:
                raise Redirect(url, origin)  # the host goes where its room is
            raise Forbidden("the room has a host on another node")
        await self._attach(room, origin)

    async def _claim(self, room_id: str) -> str | None:
        """The room's origin: this node if it won the directory entry (SET NX)."""
        key = room_key(room_id)
        won = await self.redis.set(key, self.node_id, condition=PureToken.NX,
                                   px=int(TTL * 1000))
        origin = self.node_id if won else await self.redis.get(key)
        if origin is None:  # expired in between: try once more
            won = await self.redis.set(key, self.node_id, condition=PureToken.NX,
                                       px=int(TTL * 1000))
            origin = self.node_id if won else await self.redis.get(key)
        return origin

    async def _entry(self, node: str) -> dict[str, Any] | None:
        """A live node's registry entry (None: gone)."""
        text = await self.redis.get(node_key(node))
        try:
            entry = json.loads(text) if text is not None else None
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    async def _entries(self) -> list[dict[str, Any]]:
        """Every live node's registry entry (at most MAX_NODES)."""
        keys: list[str] = []
        async for key in self.redis.scan_iter(match=f"{PREFIX}:node:*", count=100):
            keys.append(key)
            if len(keys) >= MAX_NODES:
                break
        entries = []
        for text in await self.redis.mget(keys) if keys else []:
            try:
                entry = json.loads(text) if text is not None else None
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    async def leave_to_another_node(self, room_id: str) -> None:
        """This node is draining: a host opening a new room here is redirected to the least
        loaded other node (``least_loaded``), if there is one; else nothing happens (the
        join is refused as unavailable)."""
        if self.config.cluster_placement != "least_loaded":
            return
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                target = await self._reserve_elsewhere(room_id, leaving=True)
        except REDIS_ERRORS:
            return
        if target is not None:
            log_event(logger, "cluster.redirect", room=room_id, to=target.node_id,
                      score=round(target.score, 1), draining=True)
            raise Redirect(target.url, target.node_id)

    async def _reserve_elsewhere(self, room_id: str, *, leaving: bool = False
                                 ) -> Target | None:
        """The least loaded node, if clearly less loaded than this one (``leaving``: any)
        and the new room is now reserved for it in the directory; None: the room is placed
        as usual."""
        now = self._monotonic()
        own = self.load()
        if not leaving:
            own["rooms"] = max(0, own["rooms"] - 1)  # (the room being placed is counted)
        target = self.placer.choose(own, await self._entries(), now, leaving=leaving)
        if target is None:
            return None
        reserved = await self.redis.set(room_key(room_id), target.node_id,
                                        condition=PureToken.NX, px=int(RESERVATION_TTL * 1000))
        if not reserved:
            return None  # the room has a node already (or is reserved): placed as usual
        self.placer.note_redirect(target, now)
        return target

    def room_closed(self, room: Room) -> None:
        served = self.served.get(room.id)
        if served is not None and served.room is room:
            del self.served[room.id]
            for node in list(served.nodes):
                self._close_served(served, node)
            self._spawn(self._delete_room_entry(room.id))
        edge = self.edges.get(room.id)
        if edge is not None and edge.room is room:
            del self.edges[room.id]
            self._spawn(self.bus.tell(edge.origin, {"type": "detach", "room": room.id}))

    async def _delete_room_entry(self, room_id: str) -> None:
        if room_id in self.served:
            return  # the room was opened again here meanwhile
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await self.redis.eval(_DELETE_IF_OURS, [room_key(room_id)], [self.node_id])
        except REDIS_ERRORS:
            pass  # it expires on its own

    def _spawn(self, job: Awaitable[object]) -> None:
        """Run ``job`` in the cluster's nursery; a bug in it is logged, never fatal to the
        node (this nursery is the server's)."""
        async def run() -> None:
            try:
                await job
            except Exception:
                log_event(logger, "cluster.task_crashed", level=logging.ERROR,
                          node=self.node_id, exc_info=True)

        if self._nursery is not None:
            self._nursery.start_soon(run)

    # ---- origin side ----------------------------------------------------------------------

    def _serve(self, room: Room) -> None:
        served = Served(room)
        self.served[room.id] = served
        room.observers.append(lambda event, data: self._room_event(served, event, data))

    def _room_event(self, served: Served, event: str, data: dict[str, Any]) -> None:
        """An event of an origin room: relayed to every attached node."""
        if event == "producerClosed":
            for pipes in served.nodes.values():
                pipe = pipes.pop(data["producerId"], None)
                if pipe is not None:
                    served.room.close_pipe(pipe)
        for node in list(served.nodes):
            self._spawn(self.bus.tell(node, {"type": event, "room": served.room.id, **data}))

    def _close_served(self, served: Served, node: str) -> None:
        for pipe in list(served.nodes.pop(node, {}).values()):
            served.room.close_pipe(pipe)  # (its on_closed edits that map)
        log_event(logger, "cluster.node_detached", room=served.room.id, node=node)

    def _served_room(self, msg: dict[str, Any]) -> Served:
        served = self.served.get(str(msg.get("room")))
        if served is None or served.room.closed:
            raise NotFound("no such room on this node")
        return served

    async def _on_attach(self, msg: dict[str, Any]) -> dict[str, Any]:
        served = self._served_room(msg)
        served.nodes.setdefault(msg["from"], {})
        room = served.room
        log_event(logger, "cluster.node_attached", room=room.id, node=msg["from"])
        return {"producers": [{"producerId": p.id, "kind": p.kind}
                              for p in room.producers.values()
                              if not isinstance(p.transport, PipeTransport)]}

    async def _on_pipe(self, msg: dict[str, Any]) -> dict[str, Any]:
        served = self._served_room(msg)
        pipes = served.nodes.get(msg["from"])
        if pipes is None:
            raise Forbidden("attach first")
        producer_id = str(msg.get("producerId"))
        if producer_id in pipes:
            raise Forbidden("that node has a pipe of this producer already")
        room = served.room
        room.producer_by_id(producer_id)  # ProducerNotFound
        far = PipeEnd.from_dict(msg.get("end"))
        pipe = room.open_pipe()
        try:
            pipe.connect_end(far)
            _, offer = room.pipe_consume(pipe, producer_id)
        except BaseException:
            room.close_pipe(pipe)
            raise
        pipes[producer_id] = pipe
        pipe.on_closed.append(lambda: _forget_pipe(pipes, producer_id, pipe))
        node = msg["from"]

        def follow(state: str) -> None:  # the far side follows pause and resume
            if state in ("paused", "resumed") and pipes.get(producer_id) is pipe:
                kind = "producerPaused" if state == "paused" else "producerResumed"
                self._spawn(self.bus.tell(node, {"type": kind, "room": room.id,
                                              "producerId": producer_id}))

        room.watch_producer(producer_id, follow)
        return {"end": self._end(pipe), "offer": offer}

    def _end(self, pipe: PipeTransport) -> dict[str, Any]:
        end = pipe.local_end().as_dict()
        end["ip"] = self.pipe_ip
        return end

    # ---- edge side ------------------------------------------------------------------------

    async def _attach(self, room: Room, origin: str) -> None:
        edge = EdgeRoom(room, origin)
        room.origin_node = origin
        self.edges[room.id] = edge
        try:
            answer = await self.bus.request(origin, {"type": "attach", "room": room.id})
        except RequestFailed as exc:
            raise Unavailable(f"the room's node does not answer ({exc})") from None
        producers = answer.get("producers")
        if not isinstance(producers, list):
            raise Unavailable("the room's node gave a bad answer")
        wanted = [entry["producerId"] for entry in producers
                  if isinstance(entry, dict) and isinstance(entry.get("producerId"), str)]
        failed = [producer_id for producer_id in wanted
                  if not await self._pipe_from(edge, producer_id)]
        if failed:  # the first viewer would sit in a room without that media: refused
            raise Unavailable(f"{len(failed)} of the room's {len(wanted)} producers could "
                              f"not be piped to this node; try again")
        log_event(logger, "cluster.edge_attached", room=room.id, origin=origin,
                  pipes=len(edge.pipes))

    async def _pipe_from(self, edge: EdgeRoom, producer_id: str) -> bool:
        """One pipe of the origin's producer ``producer_id`` into the edge room; False if
        it could not be set up (logged)."""
        room = edge.room
        if producer_id in edge.pipes or producer_id in edge.pending:
            return True  # (being piped: a newProducer event and the attach crossed)
        if room.closed:
            return False
        edge.pending.add(producer_id)
        try:
            pipe = room.open_pipe()
        except RoomError as exc:
            edge.pending.discard(producer_id)
            log_event(logger, "cluster.pipe_refused", level=logging.WARNING, room=room.id,
                      producer=producer_id, error=str(exc))
            return False
        try:
            answer = await self.bus.request(edge.origin, {
                "type": "pipe", "room": room.id, "producerId": producer_id,
                "end": self._end(pipe)})
            if room.closed or self.edges.get(room.id) is not edge:
                raise RequestFailed("the room closed meanwhile")
            pipe.connect_end(PipeEnd.from_dict(answer.get("end")))
            producer = room.pipe_produce(pipe, answer.get("offer"))
        except (RequestFailed, RoomError, PipeError, PlainTransportError) as exc:
            room.close_pipe(pipe)
            log_event(logger, "cluster.pipe_failed", level=logging.WARNING, room=room.id,
                      producer=producer_id, error=str(exc))
            return False
        finally:
            edge.pending.discard(producer_id)
        edge.pipes[producer_id] = pipe
        edge.producers[producer_id] = producer
        pipe.on_closed.append(lambda: _forget_pipe(edge.pipes, producer_id, pipe))
        log_event(logger, "cluster.piped", room=room.id, origin=edge.origin,
                  producer=producer_id, transport=pipe.id)
        return True

    async def _pipe_added(self, edge: EdgeRoom, producer_id: str) -> None:
        """A producer added on the origin, piped here; tried again (``PIPE_RETRIES``) while
        the edge room is attached and the producer open."""
        if len(edge.wanted) >= MAX_ADDED_PIPES:
            return
        edge.wanted.add(producer_id)
        try:
            for attempt in range(1 + PIPE_RETRIES):
                if attempt:
                    await trio.sleep(PIPE_RETRY_DELAY)
                if producer_id not in edge.wanted or self.edges.get(edge.room.id) is not edge:
                    return  # closed meanwhile
                if await self._pipe_from(edge, producer_id):
                    return
            log_event(logger, "cluster.pipe_given_up", level=logging.WARNING,
                      room=edge.room.id, producer=producer_id, attempts=1 + PIPE_RETRIES)
        finally:
            edge.wanted.discard(producer_id)

    def _on_room_event(self, msg: dict[str, Any]) -> None:
        edge = self.edges.get(str(msg.get("room")))
        if edge is None or edge.origin != msg["from"]:
            return
        kind, producer_id = msg["type"], msg.get("producerId")
        if kind == "newProducer" and isinstance(producer_id, str):
            self._spawn(self._pipe_added(edge, producer_id))
        elif kind in ("producerPaused", "producerResumed") and isinstance(producer_id, str):
            producer = edge.producers.get(producer_id)
            if producer is not None and edge.pipes.get(producer_id) is not None:
                edge.room.set_pipe_producer_paused(producer, kind == "producerPaused")
        elif kind == "producerClosed" and isinstance(producer_id, str):
            edge.wanted.discard(producer_id)
            edge.producers.pop(producer_id, None)
            pipe = edge.pipes.pop(producer_id, None)
            if pipe is not None:
                edge.room.close_pipe(pipe)  # its producer goes: producerClosed here
        elif kind == "roomClosed":
            reason = msg.get("reason")
            edge.room.close(reason if isinstance(reason, str) and len(reason) <= 64
                            else "origin_closed")

    def _on_detach(self, msg: dict[str, Any]) -> None:
        served = self.served.get(str(msg.get("room")))
        if served is not None and msg["from"] in served.nodes:
            self._close_served(served, msg["from"])

    # ---- messages (pysfu.cluster.bus) ---------------------------------------------------

    def _dispatch(self, msg: dict[str, Any]) -> None:
        """A message from another node (not a reply: the bus matches those)."""
        kind = msg["type"]
        if kind in self._handlers:
            self._spawn(self._answer(msg))
        elif kind == "detach":
            self._on_detach(msg)
        elif kind in ("newProducer", "producerClosed", "producerPaused", "producerResumed",
                      "roomClosed"):
            self._on_room_event(msg)

    async def _answer(self, msg: dict[str, Any]) -> None:
        try:
            data = await self._handlers[msg["type"]](msg)
        except (RoomError, PipeError, PlainTransportError) as exc:
            await self.bus.reply(msg, error=str(exc))
            return
        await self.bus.reply(msg, data)


def _forget_pipe(pipes: dict[str, PipeTransport], producer_id: str,
                 pipe: PipeTransport) -> None:
    """A closed pipe leaves its map (if it is still the one there)."""
    if pipes.get(producer_id) is pipe:
        del pipes[producer_id]


def default_load(rooms: RoomRegistry | None, totals: Callable[[], dict[str, int]] | None = None,
                 draining: bool = False) -> dict[str, Any]:
    """A node's raw load: rooms, peers, draining, the process's CPU seconds so far and the
    engine's RTP packets forwarded so far (``totals``: ``MediaEngine.totals``; the
    ``Cluster`` turns the last two into rates)."""
    all_rooms = list(rooms.rooms.values()) if rooms is not None else []
    times = os.times()
    counters = totals() if totals is not None else {}
    return {"rooms": len(all_rooms), "peers": sum(len(r.peers) for r in all_rooms),
            "draining": draining, "cpuSeconds": times.user + times.system,
            "forwarded": sum(counters.get(kind + "PacketsForwarded", 0)
                             for kind in ("audio", "video"))}


__all__ = ["Cluster", "RequestFailed", "default_load"]
