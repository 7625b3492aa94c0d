"""Limits per client address, shared by all of its connections (sans-IO: time passed in).

An address is an IPv4 address, or the /64 prefix of an IPv6 address (one host usually holds
a whole /64, so counting its single addresses would count nothing). What one address does
costs it, and only it: every check here is a dictionary look-up and a few arithmetic
operations, and the state kept is bounded by the addresses seen in the last few seconds.

Refusals are counted (``Refusals.counts``, in ``/healthz``) and logged at most once a second
per reason, with the number of refusals not logged since (``suppressed``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pysfu.config import Config
from pysfu.log import log_event

logger = logging.getLogger("pysfu.limits")

LOG_INTERVAL = 1.0  # seconds between two log lines of one refusal reason


def address_key(ip: str) -> str:
    """The unit per-address limits count in: the IPv4 address, or the IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class TokenBucket:
    """``rate`` per second with a ``burst`` allowance."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled (a fresh one would be the same)."""
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.burst


class Refusals:
    """Counts refusals by reason; logs each reason at most once per LOG_INTERVAL."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last log time, count then)

    def note(self, reason: str, address: str, now: float, **fields: object) -> None:
        count = self.counts.get(reason, 0) + 1
        self.counts[reason] = count
        last, then = self._logged.get(reason, (-LOG_INTERVAL, 0))
        if now - last >= LOG_INTERVAL:
            self._logged[reason] = (now, count)
            log_event(logger, "limit.refused", level=logging.WARNING, reason=reason,
                      address=address, suppressed=count - then - 1 or None, **fields)


@dataclass(eq=False)
class _Address:
    connections: int
    new_connections: TokenBucket
    requests: TokenBucket
    handshakes: int = 0
    plain_transports: int = 0  # open plain transports (each holds a UDP port)


@dataclass(eq=False)
class AddressLimits:
    """The per-address state of one server."""

    config: Config
    refusals: Refusals = field(default_factory=Refusals)
    handshakes: int = 0  # DTLS handshakes in progress, all addresses
    _addresses: dict[str, _Address] = field(default_factory=dict)
    _sweep_at: int = 1024  # sweep idle entries when the table grows past this

    def _get(self, key: str, now: float) -> _Address:
        state = self._addresses.get(key)
        if state is None:
            cfg = self.config
            if len(self._addresses) >= self._sweep_at:
                self._sweep(now)
            state = _Address(
                0, TokenBucket(cfg.connections_per_second_per_address,
                               cfg.connection_burst_per_address, now),
                TokenBucket(cfg.address_request_rate, cfg.address_request_burst, now))
            self._addresses[key] = state
        return state

    def _idle(self, state: _Address, now: float) -> bool:
        return (state.connections == 0 and state.handshakes == 0
                and state.plain_transports == 0 and state.new_connections.full(now)
                and state.requests.full(now))

    def _sweep(self, now: float) -> None:
        self._addresses = {k: s for k, s in self._addresses.items() if not self._idle(s, now)}
        self._sweep_at = max(1024, 2 * len(self._addresses))

    def _release(self, key: str, state: _Address, now: float) -> None:
        if self._idle(state, now) and self._addresses.get(key) is state:
            del self._addresses[key]

    def __len__(self) -> int:
        return len(self._addresses)

    # ---- connections --------------------------------------------------------------------------

    def open_connection(self, key: str, now: float) -> Callable[[float], None] | None:
        """Admit a new TCP connection from ``key``: a function to call (with the time) when
        it closes, or None (refused, counted and logged)."""
        state = self._get(key, now)
        if state.connections >= self.config.max_connections_per_address:
            self.refusals.note("connections_per_address", key, now,
                               limit=self.config.max_connections_per_address)
            return None
        if not state.new_connections.take(now):
            self.refusals.note("new_connections_per_address", key, now)
            return None
        state.connections += 1
        done = False

        def close(later: float) -> None:
            nonlocal done
            if not done:
                done = True
                state.connections -= 1
                self._release(key, state, later)

        return close

    # ---- signaling requests -------------------------------------------------------------------

    def take_request(self, key: str, now: float) -> bool:
        """One signaling request of ``key`` (after its connection's own bucket allowed it)."""
        if self._get(key, now).requests.take(now):
            return True
        self.refusals.note("requests_per_address", key, now)
        return False

    # ---- plain transports ---------------------------------------------------------------------

    def open_plain_transport(self, key: str, now: float, limit: int) -> Callable[[], None] | None:
        """A plain transport (a UDP port of the plain range) for ``key``, at most ``limit``
        open at once: the function that frees the slot, or None (refused, counted)."""
        state = self._get(key, now)
        if state.plain_transports >= limit:
            self.refusals.note("plain_transports_per_address", key, now, limit=limit)
            return None
        state.plain_transports += 1
        done = False

        def end() -> None:
            nonlocal done
            if not done:
                done = True
                state.plain_transports -= 1

        return end

    # ---- DTLS handshakes ----------------------------------------------------------------------

    def start_handshake(self, key: str, now: float) -> Callable[[], None] | None:
        """A DTLS handshake slot for ``key``: the function that frees it, or None."""
        cfg = self.config
        if self.handshakes >= cfg.max_dtls_handshakes:
            self.refusals.note("dtls_handshakes", key, now, limit=cfg.max_dtls_handshakes)
            return None
        state = self._get(key, now)
        if state.handshakes >= cfg.max_dtls_handshakes_per_address:
            self.refusals.note("dtls_handshakes_per_address", key, now,
                               limit=cfg.max_dtls_handshakes_per_address)
            return None
        state.handshakes += 1
        self.handshakes += 1
        done = False

        def end() -> None:
            nonlocal done
            if not done:
                done = True
                state.handshakes -= 1
                self.handshakes -= 1
                # Removed at the next sweep if idle (no clock here).

        return end
