"""Server settings: embedded defaults, then a TOML file, then ``PYSFU_*`` variables, then CLI.

Every setting is a flat key (``rtc_port``); its environment variable is ``PYSFU_RTC_PORT``.
Anything invalid raises :class:`ConfigError` naming the setting, so the server refuses to
start instead of running with a surprise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Config:
    # Signaling (HTTP + WebSocket at /ws).
    host: str = "127.0.0.1"
    port: int = 8080
    # Media: one UDP port for every WebRTC transport.
    rtc_ip: str = "127.0.0.1"
    rtc_port: int = 40000
    announced_ip: str | None = None
    # Lifetimes, seconds.
    host_grace_period: float = 10.0
    consent_timeout: float = 30.0
    dtls_timeout: float = 30.0
    # HTTP/WebSocket listener deadlines, seconds: the request head, and connect -> WebSocket
    # accepted (http_timeout); one write to a client that does not read (write_timeout).
    http_timeout: float = 10.0
    write_timeout: float = 10.0
    # Connections between TCP accept and a sent answer / accepted WebSocket, at once; over
    # this a new connection is closed at once.
    max_handshakes: int = 256
    # Limits on what a peer (or everyone) can create.
    max_message_size: int = 64 * 1024
    max_rooms: int = 1000
    max_peers_per_room: int = 500
    max_transports_per_peer: int = 4
    max_producers_per_peer: int = 8
    max_consumers_per_peer: int = 64
    # What one peer may pull: the producers' bitrates (declared maxBitrate or measured, the
    # larger) summed over its consumers, bits/s.
    max_consumed_bitrate_per_peer: int = 50_000_000
    # Rooms one address (IP) may create per minute; a connection must join within
    # join_timeout seconds or it is closed.
    max_rooms_per_address_per_minute: int = 30
    join_timeout: float = 10.0
    requests_per_second: float = 50.0
    request_burst: int = 100
    log_level: str = "info"
    # ORTC: router media codecs (mediasoup RtpCodecCapability shapes); None = the defaults.
    media_codecs: list[dict[str, Any]] | None = field(default=None, compare=False)

    @property
    def candidate_ip(self) -> str:
        """The address put in ICE candidates: announced, else the listen address."""
        return self.announced_ip or self.rtc_ip


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_LEVELS = ("debug", "info", "warning", "error")
_TIMEOUTS = ("host_grace_period", "consent_timeout", "dtls_timeout", "join_timeout",
             "http_timeout", "write_timeout")
MAX_TIMEOUT = 3600.0  # seconds; a longer time-out is a mistake (or infinite), not a choice
MAX_HANDSHAKES = 100_000
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_hostname(name: str) -> bool:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens,
    1..63 characters each, 253 in all (one trailing dot allowed); the last label is not all
    digits (RFC 3696 2), so a malformed IPv4 address is not taken for a name."""
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    return (0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def _coerce(name: str, raw: Any, *, from_text: bool) -> Any:
    """Turn a raw value (TOML value, or text from env/CLI) into the setting's type."""
    kind = _FIELDS[name].type
    try:
        if name == "media_codecs":
            if from_text or not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
                raise ValueError("must be a list of tables in the config file")
            return raw
        if name == "announced_ip":
            return None if raw in (None, "") else str(raw)
        if kind == "int":
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int)):
                raise ValueError("must be an integer")
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int | float)):
                raise ValueError("must be a number")
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        return raw
    except ValueError as exc:
        raise ConfigError(f"invalid setting {name}={raw!r}: {exc}") from None


def _check(cfg: Config) -> Config:
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"invalid setting {name}={getattr(cfg, name)!r}: {why}")

    for name in ("port", "rtc_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            fail(name, "must be a port number 0..65535")
    for name in ("host", "rtc_ip"):
        try:
            ipaddress.ip_address(getattr(cfg, name))
        except ValueError:
            fail(name, "must be an IP address")
    if cfg.announced_ip is not None:
        try:
            announced = ipaddress.ip_address(cfg.announced_ip)
        except ValueError:
            if not is_hostname(cfg.announced_ip):
                fail("announced_ip", "must be an IP address or a host name (RFC 1123)")
        else:
            if announced.is_unspecified or announced.is_multicast:
                fail("announced_ip", "must be an address viewers can reach (not unspecified "
                     "or multicast)")
    if ipaddress.ip_address(cfg.rtc_ip).is_unspecified and cfg.announced_ip is None:
        fail("rtc_ip", "listening on all addresses needs announced_ip (the address viewers reach)")
    for name in _TIMEOUTS:
        if not 0 < getattr(cfg, name) <= MAX_TIMEOUT:
            fail(name, f"must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}")
    if not 0 < cfg.requests_per_second < math.inf:
        fail("requests_per_second", "must be > 0 and finite")
    if not 1 <= cfg.max_handshakes <= MAX_HANDSHAKES:
        fail("max_handshakes", f"must be 1..{MAX_HANDSHAKES}")
    for name in (
        "max_message_size", "max_rooms", "max_peers_per_room", "max_transports_per_peer",
        "max_producers_per_peer", "max_consumers_per_peer", "request_burst",
        "max_consumed_bitrate_per_peer", "max_rooms_per_address_per_minute",
    ):
        if getattr(cfg, name) < 1:
            fail(name, "must be >= 1")
    if cfg.log_level not in _LEVELS:
        fail("log_level", f"must be one of {', '.join(_LEVELS)}")
    return cfg


def load_config(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config: defaults < file < environment < overrides (CLI)."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        for key, raw in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r} in {file}")
            values[key] = _coerce(key, raw, from_text=False)
    for key, raw in (env or {}).items():
        if not key.startswith("PYSFU_"):
            continue
        name = key[len("PYSFU_"):].lower()
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting in environment variable {key}")
        values[name] = _coerce(name, raw, from_text=True)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw, from_text=isinstance(raw, str))
    cfg = Config(**values)
    if cfg.media_codecs is not None:
        from pysfu import ortc

        try:
            ortc.generate_router_rtp_capabilities(cfg.media_codecs)
        except ortc.OrtcError as exc:
            raise ConfigError(f"invalid setting media_codecs: {exc}") from None
    return _check(cfg)
