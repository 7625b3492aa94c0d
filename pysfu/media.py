"""The Python side of the data plane: owns the native Engine and dispatches its upcalls.

The engine runs on its own threads. STUN and DTLS datagrams it cannot handle alone are queued
and an event fd becomes readable; one Trio task here drains them and hands each to the
``UpcallSink`` registered for that transport handle. RTP and RTCP never come up here. This
module knows no transport, room or server: only the engine and that interface.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any, Protocol

import trio

import pysfu._native as _native
from pysfu.log import log_event

logger = logging.getLogger("pysfu.media")


class UpcallSink(Protocol):
    """Where the engine's STUN and DTLS datagrams for one transport handle go."""

    def deliver(self, kind: str, ip: str, port: int, data: bytes) -> None:
        """``kind`` is "stun" or "dtls"; must not block (called by the dispatcher task)."""


class MediaEngine:
    def __init__(self, host: str, port: int) -> None:
        self.native = _native.Engine(host, port)
        self.port: int = self.native.port
        self._transports: dict[int, UpcallSink] = {}
        self.undeliverable = 0
        self.panics = 0
        log_event(logger, "engine.started", ip=host, port=self.port)

    async def run(self) -> None:
        """Drain the engine's upcalls until cancelled."""
        fd = self.native.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            for kind, handle, ip, port, data in self.native.drain():
                transport = self._transports.get(handle)
                if transport is None:
                    self.undeliverable += 1
                else:
                    transport.deliver(kind, ip, port, data)
            # A panic on the engine's I/O thread cost one datagram (counted as drop "panic");
            # the thread carries on. Say so loudly.
            message = self.native.take_panic()
            if message is not None:
                self.panics += 1
                log_event(logger, "engine.panic", level=logging.ERROR, panic=message,
                          total=self.drops().get("panic", 0))

    def close(self) -> None:
        self.native.close()

    # Transports register their Python object so upcalls can reach them. The engine checks
    # STUN MESSAGE-INTEGRITY with the ICE password before anything is queued up here.
    def add_transport(self, handle: int, ufrag: str, password: str,
                      transport: UpcallSink) -> None:
        self.native.add_transport(handle, ufrag, password)
        self._transports[handle] = transport

    # Removal is idempotent: removing a transport in the engine also removes its producers
    # and consumers (and consumers of its producers), whichever side gets there first.
    def remove_transport(self, handle: int) -> None:
        if self._transports.pop(handle, None) is not None:
            with suppress(KeyError):
                self.native.remove_transport(handle)

    # A transport task may still answer a queued STUN/DTLS datagram after its room closed and
    # removed it from the engine: nothing to send then (an exception here would take the
    # room's nursery, and the server, down).
    def send(self, handle: int, ip: str, port: int, data: bytes) -> None:
        with suppress(KeyError):
            self.native.send(handle, ip, port, data)

    # ICE reports validated and nominated tuples; the engine sends media to a nominated tuple
    # only once it has proven itself (authenticated SRTP/SRTCP from it, or the DTLS handshake
    # completed with it: ``remote`` of set_srtp), so a spoofed nomination redirects nothing.
    def bind_tuple(self, handle: int, ip: str, port: int, selected: bool) -> None:
        with suppress(KeyError):
            self.native.bind_tuple(handle, ip, port, selected)

    def set_srtp(self, handle: int, profile: str, local_key: bytes, local_salt: bytes,
                 remote_key: bytes, remote_salt: bytes,
                 remote: tuple[str, int] | None = None) -> None:
        self.native.set_srtp(handle, profile, local_key, local_salt, remote_key, remote_salt,
                             remote)

    def add_producer(self, handle: int, transport: int, spec: dict[str, Any]) -> None:
        self.native.add_producer(handle, transport, spec)

    def remove_producer(self, handle: int) -> None:
        with suppress(KeyError):
            self.native.remove_producer(handle)

    def add_consumer(
        self, handle: int, transport: int, producer: int, spec: dict[str, Any]
    ) -> None:
        self.native.add_consumer(handle, transport, producer, spec)

    def remove_consumer(self, handle: int) -> None:
        with suppress(KeyError):
            self.native.remove_consumer(handle)

    def pause_consumer(self, handle: int) -> None:
        self.native.pause_consumer(handle)

    def resume_consumer(self, handle: int) -> None:
        self.native.resume_consumer(handle)

    def set_preferred_layers(
        self, handle: int, spatial: int, temporal: int | None
    ) -> tuple[int, int]:
        spatial_set, temporal_set = self.native.set_preferred_layers(handle, spatial, temporal)
        return spatial_set, temporal_set

    def counts(self) -> dict[str, int]:
        return dict(self.native.counts())

    def stats(self, handle: int) -> dict[str, Any]:
        return dict(self.native.stats(handle))

    def rtp_stats(self, handle: int) -> list[dict[str, Any]]:
        """Per-stream RTP statistics (loss, NACK, PLI, RTT, jitter, bitrate) of an object."""
        return [dict(r) for r in self.native.rtp_stats(handle)]

    def drops(self) -> dict[str, int]:
        return dict(self.native.drops())
