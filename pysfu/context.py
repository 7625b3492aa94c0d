"""What every room of a server shares: its config, DTLS certificate, router capabilities, media
engine, per-address limits, join-token verifier, metrics counters, and the counter of native
object handles.

Built once by ``pysfu.server.Server``; rooms and signaling sessions read it. Nothing here
imports a room, a session or the server.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pysfu.auth import Verifier
from pysfu.config import Config
from pysfu.dtls import Certificate
from pysfu.limits import AddressLimits
from pysfu.media import MediaEngine
from pysfu.metrics import Metrics


@dataclass
class ServerContext:
    config: Config
    certificate: Certificate
    router_rtp_capabilities: dict[str, Any]
    media: MediaEngine
    limits: AddressLimits | None = None  # per-address limits (None: built from config)
    verifier: Verifier | None = None  # join tokens; None = open rooms
    metrics: Metrics = field(default_factory=Metrics)  # counters for /metrics
    _handles: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = AddressLimits(self.config)
        if self.verifier is None and self.config.auth_enabled:
            self.verifier = Verifier(self.config.auth_secret, self.config.auth_keys)

    def next_handle(self) -> int:
        """Native object handles: small ints, never reused within a server's life."""
        return next(self._handles)
