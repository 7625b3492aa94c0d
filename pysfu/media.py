"""The Python side of the data plane: owns the native Engine and dispatches its upcalls.

The engine runs on its own threads. STUN and DTLS datagrams it cannot handle alone are queued
and an event fd becomes readable; one Trio task here drains them and hands each to the
``UpcallSink`` registered for that transport handle. RTP and RTCP never come up here. This
module knows no transport, room or server: only the engine and that interface.

One rule for every call naming an object (transport, producer, consumer) the engine no longer
has: nothing happens, a debug line is logged, and a call that returns something returns None.
The engine alone decides what a removal takes with it (removing a transport removes its
producers, its consumers and the consumers of its producers; removing a producer its
consumers) and answers what went (``Removed``), from which the control plane updates its
registries; a transport task may still answer a queued datagram after its room removed it:
not an error. Bad input raises ValueError; a panic
inside the engine raises ``EnginePanic`` (the engine goes on; the call did nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

import pysfu._native as _native
from pysfu.log import log_event

logger = logging.getLogger("pysfu.media")


T = TypeVar("T")

# What the engine's control calls answer when a panic was caught inside them (a ValueError),
# and the exception type pyo3 raises for a panic in the binding itself (a BaseException).
_PANIC_MARK = "(panic)"
_PYO3_PANIC = "PanicException"


class EnginePanic(RuntimeError):
    """A panic inside the native engine during a call: a bug of the engine, not bad input.
    The engine caught it and goes on; the call did nothing."""


class UpcallSink(Protocol):
    """Where the engine's STUN and DTLS datagrams for one transport handle go."""

    def deliver(self, kind: str, ip: str, port: int, data: bytes, protocol: str = "udp") -> None:
        """``kind`` is "stun", "dtls", "media" or "consent_lost"; ``protocol`` "udp" or "tcp"
        (an ICE-TCP connection from ip:port); must not block (called by the dispatcher
        task)."""


class MediaEngine:
    def __init__(self, host: str, port: int, *, udp: bool = True, tcp: bool = True,
                 gso: bool = True, workers: int = 1, consent_timeout: float = 30.0,
                 gro: bool = False, pin_workers: bool = False) -> None:
        self.native = _native.Engine(host, port, udp, tcp, gso, workers, gro, pin_workers)
        # RFC 7675 consent (the engine answers the checks and tells a transport it lost
        # consent as the upcall "consent_lost"); <= 0: never lost.
        self.native.set_consent_timeout(consent_timeout)
        self.port: int = self.native.port
        self.udp = udp
        self.tcp = tcp  # ICE-TCP connections accepted on the same port number
        self._transports: dict[int, UpcallSink] = {}
        self.panics = 0  # panics caught on the engine's I/O thread (each logged)
        log_event(logger, "engine.started", ip=host, port=self.port, udp=udp, tcp=tcp, gso=gso,
                  gro=self.native.gro, workers=self.native.workers,
                  cpus=[w["cpu"] for w in self.native.worker_stats()])

    async def run(self) -> None:
        """Drain the engine's upcalls until cancelled."""
        fd = self.native.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            for kind, handle, ip, port, data, protocol in self.native.drain():
                transport = self._transports.get(handle)
                if transport is not None:  # else removed since the engine queued it
                    transport.deliver(kind, ip, port, data, protocol)
            # A panic on the engine's I/O thread cost one datagram (counted as drop "panic");
            # the thread carries on. Say so loudly.
            message = self.native.take_panic()
            if message is not None:
                self.panics += 1
                log_event(logger, "engine.panic", level=logging.ERROR, panic=message,
                          total=self.drops().get("panic", 0))

    def close(self) -> None:
        self.native.close()

    def _call(self, method: Callable[..., T], handle: int, *args: Any) -> T | None:
        """``method(handle, *args)`` under this module's rule: an object the engine no longer
        has is a no-op (None), a panic inside the engine is EnginePanic."""
        try:
            return method(handle, *args)
        except KeyError:
            logger.debug("engine.%s: object %d is gone, nothing to do", method.__name__, handle)
            return None
        except ValueError as exc:
            if _PANIC_MARK in str(exc):
                raise EnginePanic(f"{method.__name__}: {exc}") from exc
            raise
        except BaseException as exc:
            if type(exc).__name__ == _PYO3_PANIC:
                raise EnginePanic(f"{method.__name__}: {exc}") from exc
            raise

    # Transports register their Python object so upcalls can reach them. The engine checks
    # STUN MESSAGE-INTEGRITY with the ICE password before anything is queued up here.
    def add_transport(self, handle: int, ufrag: str, password: str,
                      transport: UpcallSink) -> None:
        self._call(self.native.add_transport, handle, ufrag, password)
        self._transports[handle] = transport

    # ICE restart: the engine refuses the old credentials from now on; tuples, SRTP keys,
    # producers and consumers stay.
    def set_ice_credentials(self, handle: int, ufrag: str, password: str) -> None:
        self._call(self.native.set_ice_credentials, handle, ufrag, password)

    # Removing a transport in the engine also removes its producers and consumers (and
    # consumers of its producers): the answer says which (None: the engine had nothing).
    def remove_transport(self, handle: int) -> _native.Removed | None:
        if self._transports.pop(handle, None) is None:
            return None
        return self._call(self.native.remove_transport, handle)

    # Plain (and pipe) transports: a UDP socket of their own in the engine, no ICE or DTLS;
    # `sink` gets no upcalls (nothing is handed up for them) but is registered like any
    # transport so that removal goes through one path.
    def add_plain_transport(self, handle: int, host: str, ports: tuple[int, int], *,
                            comedia: bool, srtp: bool, sink: UpcallSink,
                            rtcp_mux: bool = True) -> tuple[int, int | None]:
        """The local ports the transport's sockets were bound to: (RTP, RTCP if not muxed)."""
        ports_bound = self.native.add_plain_transport(handle, host, ports, comedia, srtp,
                                                      rtcp_mux)
        self._transports[handle] = sink
        return ports_bound

    def connect_plain(self, handle: int, remote: tuple[str, int] | None,
                      keys: _native.SrtpKeys | None, rtcp_port: int | None = None) -> None:
        ip, port = remote if remote is not None else (None, None)
        self._call(self.native.connect_plain, handle, ip, port, keys, rtcp_port)

    def request_key_frame(self, consumer: int) -> None:
        self._call(self.native.request_key_frame, consumer)

    def plain_sockets(self) -> int:
        return self.native.plain_sockets()

    def send(self, handle: int, ip: str, port: int, data: bytes, protocol: str = "udp") -> None:
        self._call(self.native.send, handle, ip, port, data, protocol)

    def send_many(self, items: list[tuple[int, str, int, bytes, str]]) -> int:
        """Datagrams (transport, ip, port, data, "udp"|"tcp") of many transports in one engine
        call (data channel fan-out); those of
        transports the engine no longer has are skipped. Returns how many went."""
        return self.native.send_many(items)

    # ICE reports validated and nominated tuples; the engine sends media to a nominated tuple
    # only once it has proven itself (authenticated SRTP/SRTCP from it, or the DTLS handshake
    # completed with it: ``remote`` of set_srtp), so a spoofed nomination redirects nothing.
    def bind_tuple(self, handle: int, ip: str, port: int, selected: bool,
                   protocol: str = "udp") -> None:
        self._call(self.native.bind_tuple, handle, ip, port, selected, protocol)

    def set_srtp(self, handle: int, keys: _native.SrtpKeys,
                 remote: tuple[str, int] | tuple[str, int, str] | None = None) -> None:
        self._call(self.native.set_srtp, handle, keys, remote)

    def add_producer(self, handle: int, transport: int, spec: _native.ProducerSpec) -> None:
        self._call(self.native.add_producer, handle, transport, spec)

    def remove_producer(self, handle: int) -> _native.Removed | None:
        """Also removes its consumers: the answer says which (None: the producer is gone)."""
        return self._call(self.native.remove_producer, handle)

    def pause_producer(self, handle: int) -> None:
        self._call(self.native.pause_producer, handle)

    def resume_producer(self, handle: int) -> None:
        self._call(self.native.resume_producer, handle)

    def add_consumer(
        self, handle: int, transport: int, producer: int, spec: _native.ConsumerSpec
    ) -> None:
        self._call(self.native.add_consumer, handle, transport, producer, spec)

    def remove_consumer(self, handle: int) -> None:
        self._call(self.native.remove_consumer, handle)

    def pause_consumer(self, handle: int) -> None:
        self._call(self.native.pause_consumer, handle)

    def resume_consumer(self, handle: int) -> None:
        self._call(self.native.resume_consumer, handle)

    def set_preferred_layers(
        self, handle: int, spatial: int, temporal: int | None
    ) -> tuple[int, int] | None:
        """The (spatial, temporal) layers set, clamped to what the producer has."""
        layers: tuple[int, int] | None = self._call(self.native.set_preferred_layers, handle,
                                                    spatial, temporal)
        return layers

    def counts(self) -> dict[str, int]:
        return dict(self.native.counts())

    def stats(self, handle: int) -> dict[str, Any] | None:
        """The engine's own view of one object (snake_case keys: packets_out,
        waiting_key_frame, current_layer, ...), for the control plane's decisions."""
        stats = self._call(self.native.stats, handle)
        return None if stats is None else dict(stats)

    def rtp_stats(self, handle: int) -> list[dict[str, Any]] | None:
        """Per-stream RTP statistics (loss, NACK, PLI, RTT, jitter, bitrate) of an object, in
        mediasoup's getStats shapes (camelCase keys), as signaling answers them."""
        records = self._call(self.native.rtp_stats, handle)
        return None if records is None else [dict(r) for r in records]

    def drops(self) -> dict[str, int]:
        return dict(self.native.drops())

    def worker_stats(self) -> list[dict[str, int | None]]:
        """Per media worker: datagrams received, sent, handed to other workers, taken from
        its inbox, dropped with its inbox full, protected as the owner of their transport;
        nanoseconds spent waiting for and holding the router's lock, protecting and sending,
        and the kernel messages sent; the CPU it is pinned to or None
        (``Engine.worker_stats``)."""
        return [dict(w) for w in self.native.worker_stats()]

    def totals(self) -> dict[str, int]:
        """Engine-wide counters that never go down (``Engine.totals``), read at a scrape."""
        return dict(self.native.totals())
