"""The cluster's message bus: node-to-node messages over Redis pub/sub.

Each node reads one channel, its inbox (``pysfu:inbox:{id}``). Every message on it is sealed
with the shared ``cluster_secret`` (``pysfu.cluster.messages``): addressed to that node, from
a named node, fresh, never replayed. A message is either told (events, no answer) or a
request that the other node answers with a ``reply`` carrying the request's id.

Redis pub/sub delivers only to a subscriber that is there: a message is published again
every ``UNHEARD_RETRY`` until the target's inbox has a subscriber (``PUBLISH`` answers how
many heard it), within the caller's deadline; the inbox subscribes again every
``INBOX_RETRY`` after it is lost (Redis restarted or unreachable: what was published
meanwhile is lost).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from pysfu.cluster.messages import NONCE_BYTES, MessageError, Opener, seal
from pysfu.log import log_event

logger = logging.getLogger("pysfu.cluster")

PREFIX = "pysfu"
INBOX_RETRY = 1.0  # seconds between attempts to subscribe the inbox again
UNHEARD_RETRY = 0.1  # seconds before a message nobody subscribed to hear is published again
REQUEST_TIMEOUT = 3.0  # seconds a node waits for another node's answer
MAX_PENDING_REQUESTS = 1024  # requests of this node waiting for an answer

# What a Redis call can raise when Redis is unreachable or slow.
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


def inbox(node_id: str) -> str:
    return f"{PREFIX}:inbox:{node_id}"


class RequestFailed(Exception):
    """Another node refused a request, did not answer in time, or Redis is unreachable."""


class Bus:
    """This node's end of the bus: ``tell`` and ``request`` other nodes, ``listen`` to the
    inbox. Replies are matched to requests here; every other message that opens goes to
    ``on_message`` (which must not raise for bad content; a bug in it is logged)."""

    def __init__(self, redis: coredis.Redis[str], secret: bytes, node_id: str, *,
                 clock: Callable[[], float],
                 on_message: Callable[[dict[str, Any]], None]) -> None:
        self.redis = redis
        self.node_id = node_id
        self._secret = secret
        self._clock = clock
        self._on_message = on_message
        self._opener = Opener(secret, node_id)
        self._pending: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def tell(self, node: str, message: dict[str, Any]) -> None:
        """A message that needs no answer (events, detach, replies); lost (logged) if Redis
        is unreachable or the node does not subscribe within ``REQUEST_TIMEOUT``."""
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await self._publish_heard(node, message)
        except REDIS_ERRORS as exc:
            log_event(logger, "cluster.send_failed", level=logging.WARNING, to=node,
                      type=message.get("type"), error=str(exc) or type(exc).__name__)

    async def request(self, node: str, message: dict[str, Any]) -> dict[str, Any]:
        """Ask ``node`` and wait for its answer's data (``RequestFailed``: refused, no
        answer within ``REQUEST_TIMEOUT``, or Redis unreachable)."""
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            raise RequestFailed("too many requests in flight")
        request_id = secrets.token_hex(8)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[request_id] = send
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                await self._publish_heard(node, {**message, "id": request_id})
                answer = await recv.receive()
        except trio.TooSlowError:
            raise RequestFailed(f"no answer from {node} within {REQUEST_TIMEOUT:g} s") from None
        except REDIS_ERRORS as exc:
            raise RequestFailed(f"redis: {exc}") from None
        finally:
            self._pending.pop(request_id, None)
        if not answer.get("ok"):
            raise RequestFailed(str(answer.get("error"))[:200])
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    async def reply(self, request: dict[str, Any], data: dict[str, Any] | None = None,
                    error: str | None = None) -> None:
        """Answer ``request`` (a message that came with an id): ``data``, or ``error``."""
        answer: dict[str, Any] = {"type": "reply", "re": request.get("id"), "ok": error is None}
        if error is None:
            answer["data"] = data or {}
        else:
            answer["error"] = error
        await self.tell(request["from"], answer)

    async def _publish_heard(self, node: str, message: dict[str, Any]) -> None:
        """Publish until the node's inbox has a subscriber (a node whose subscription is
        being renewed after a Redis restart hears nothing meanwhile); the caller's deadline
        bounds the wait."""
        while not await self.redis.publish(inbox(node), self._seal(node, message)):
            await trio.sleep(UNHEARD_RETRY)

    def _seal(self, to: str, message: dict[str, Any]) -> str:
        return seal(self._secret, message, sender=self.node_id, to=to, now=self._clock(),
                    nonce=secrets.token_hex(NONCE_BYTES))

    async def listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
        """Read the inbox; subscribe again whenever the subscription is lost. Started once
        the first subscription is there (its failure is raised)."""
        started = False
        while True:
            try:
                # No retry inside coredis: its default backs off exponentially (up to 16 s),
                # which would leave the inbox deaf for seconds after Redis is back.
                async with self.redis.pubsub(channels=[inbox(self.node_id)],
                                             ignore_subscribe_messages=True,
                                             retry_policy=NoRetryPolicy()) as pubsub:
                    if not started:
                        task_status.started()
                        started = True
                    await self._read(pubsub)
            except Exception as exc:  # coredis errors, possibly in exception groups
                if not started:
                    raise
                cause: BaseException = exc
                while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
                    cause = cause.exceptions[0]  # the cause, not the nursery around it
                log_event(logger, "cluster.inbox_lost", level=logging.WARNING,
                          node=self.node_id, error=str(cause) or type(cause).__name__)
            await trio.sleep(INBOX_RETRY)

    async def _read(self, pubsub: Any) -> None:
        async for item in pubsub:
            data = item.get("data")
            if item.get("type") != "message" or not isinstance(data, str | bytes):
                continue
            try:
                msg = self._opener.open(data, self._clock())
            except MessageError as exc:
                log_event(logger, "cluster.message_rejected", level=logging.WARNING,
                          node=self.node_id, error=str(exc),
                          rejected=self._opener.rejected)
                continue
            if msg["type"] == "reply":
                self._deliver(msg)
                continue
            try:
                self._on_message(msg)
            except Exception:  # a bug: logged, the inbox keeps being read
                log_event(logger, "cluster.message_crashed", level=logging.ERROR,
                          node=self.node_id, type=msg.get("type"), exc_info=True)

    def _deliver(self, reply: dict[str, Any]) -> None:
        pending = self._pending.get(str(reply.get("re")))
        if pending is not None:
            try:
                pending.send_nowait(reply)
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass
