"""A UDP relay between one test peer and the server that drops, delays and reorders a
configurable share of packets, per direction, from a seeded RNG (so a run is repeatable).

    relay = LossyRelay(server_addr, up=Impairment(loss=0.05), down=Impairment(loss=0.05))
    await nursery.start(relay.run)
    peer.server = relay.address        # the peer now talks to the server through the relay

Only SRTP/SRTCP datagrams (first byte 128..191) are impaired, and only while ``impair`` is
true, so ICE and DTLS set-up stay reliable and a test chooses when loss starts and stops.

A bandwidth cap (``Impairment(rate=700_000)``, bits per second) makes a direction a
bottleneck link: datagrams leave one after another at that rate (each waits for the ones
queued before it, which is how a queue builds and delay grows when a sender exceeds the
link), and one that would wait longer than ``queue_limit`` seconds is dropped (a full
router buffer). Setting ``rate`` back to 0 lifts the cap; what is queued still drains, and
datagrams that come meanwhile leave after it (in order, as from a real queue).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

Address = tuple[str, int]


@dataclass
class Impairment:
    loss: float = 0.0  # share of datagrams dropped
    reorder: float = 0.0  # share held back by ``reorder_delay`` (overtaken by later ones)
    reorder_delay: float = 0.015
    delay: float = 0.0  # one-way delay added to every datagram
    # Targeted drops (e.g. every packet of a key frame): called with the raw datagram.
    drop: Callable[[bytes], bool] | None = None
    rate: float = 0.0  # bottleneck bits per second (0: no cap)
    queue_limit: float = 0.25  # seconds of queue before the bottleneck drops


@dataclass
class _Bottleneck:
    busy_until: float = 0.0  # trio time the link has sent everything queued

    def wait(self, now: float, size: int, rate: float, limit: float) -> float | None:
        """Seconds until a ``size``-byte datagram has crossed the link (None: dropped)."""
        start = max(now, self.busy_until)
        if start - now > limit:
            return None
        self.busy_until = start + size * 8 / rate
        return self.busy_until - now


@dataclass
class DirectionStats:
    forwarded: int = 0
    dropped: int = 0
    reordered: int = 0
    rate_limited: int = 0  # dropped by the bandwidth cap's full queue (also in ``dropped``)
    dropped_datagrams: list[bytes] = field(default_factory=list)


class LossyRelay:
    def __init__(self, server: Address, *, up: Impairment | None = None,
                 down: Impairment | None = None, seed: int = 1) -> None:
        self.server = server
        self.up = up or Impairment()  # peer → server
        self.down = down or Impairment()  # server → peer
        self.up_stats = DirectionStats()
        self.down_stats = DirectionStats()
        self.impair = False
        self._rng = random.Random(seed)
        self._front = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self._back = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self._peer: Address | None = None
        self._links = {True: _Bottleneck(), False: _Bottleneck()}
        self.address: Address = ("127.0.0.1", 0)

    async def run(self, *, task_status: trio.TaskStatus[LossyRelay] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await self._front.bind(("127.0.0.1", 0))
        await self._back.bind(("127.0.0.1", 0))
        self.address = self._front.getsockname()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, nursery, True)
                nursery.start_soon(self._pump, nursery, False)
                task_status.started(self)
        finally:
            self._front.close()
            self._back.close()

    @property
    def back_address(self) -> Address:
        """Where the relay sends to the server from (a peer of the server sees this)."""
        addr: Address = self._back.getsockname()
        return addr

    async def _pump(self, nursery: trio.Nursery, upstream: bool) -> None:
        src = self._front if upstream else self._back
        while True:
            data, addr = await src.recvfrom(65536)
            if upstream:
                self._peer = addr
                dest, sock, imp, stats = self.server, self._back, self.up, self.up_stats
            else:
                if self._peer is None:
                    continue
                dest, sock, imp, stats = self._peer, self._front, self.down, self.down_stats
            delay = imp.delay
            if self.impair and 128 <= data[0] <= 191:
                if (imp.drop is not None and imp.drop(data)) or self._rng.random() < imp.loss:
                    stats.dropped += 1
                    stats.dropped_datagrams.append(data)
                    continue
                if self._rng.random() < imp.reorder:
                    stats.reordered += 1
                    delay += imp.reorder_delay
                link = self._links[upstream]
                if imp.rate > 0:
                    wait = link.wait(trio.current_time(), len(data), imp.rate, imp.queue_limit)
                    if wait is None:
                        stats.dropped += 1
                        stats.rate_limited += 1
                        continue
                    delay += wait
                else:
                    # No cap (any more): still behind what the cap queued, as on a link
                    # whose queue drains first (a datagram does not overtake the queue).
                    delay += max(0.0, link.busy_until - trio.current_time())
            stats.forwarded += 1
            if delay <= 0:
                await sock.sendto(data, dest)
            else:
                nursery.start_soon(self._later, sock, data, dest, delay)

    @staticmethod
    async def _later(sock: trio.socket.SocketType, data: bytes, dest: Address,
                     delay: float) -> None:
        await trio.sleep(delay)
        await sock.sendto(data, dest)
