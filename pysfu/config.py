"""Server settings: embedded defaults, then a TOML file, then ``PYSFU_*`` variables, then CLI.

Every setting is a flat key (``rtc_port``); its environment variable is ``PYSFU_RTC_PORT``.
Anything invalid raises :class:`ConfigError` naming the setting, so the server refuses to
start instead of running with a surprise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysfu.auth import MIN_SECRET_BYTES

_MAX_WORKERS = 64  # the engine's limit (native workers.rs MAX_WORKERS)


def default_workers() -> int:
    """The ``workers`` default: the cores this process may run on (its CPU affinity, which
    follows a container's cpuset), 1.._MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS))


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Config:
    # Signaling (HTTP + WebSocket at /ws).
    host: str = "127.0.0.1"
    port: int = 8080
    # Media: one UDP port for every WebRTC transport, and ICE-TCP (RFC 6544 passive
    # candidates, RFC 4571 framing) on the same port number. enable_udp / enable_tcp: offer
    # that candidate (not both off); prefer_udp: the UDP candidate gets the higher priority
    # (mediasoup's preferUdp: local preference + 1000).
    rtc_ip: str = "127.0.0.1"
    rtc_port: int = 40000
    announced_ip: str | None = None
    enable_udp: bool = True
    enable_tcp: bool = True
    prefer_udp: bool = True
    # UDP GSO (UDP_SEGMENT): a burst of equal-size datagrams to one destination leaves as one
    # send, segmented by the kernel; off by setting, or by itself if the kernel refuses it.
    gso: bool = True
    # UDP GRO (UDP_GRO) on receive: the kernel may hand up several equal-size datagrams of one
    # source as one buffer, split into datagrams before routing. Off by default: an SFU's
    # ingress is small and it measured no gain (bench/results, README); off by itself if the
    # kernel refuses it.
    gro: bool = False
    # Media I/O worker threads, each with its own UDP socket on rtc_port (SO_REUSEPORT): a
    # remote's datagrams go to one worker (its ingress worker), each transport given keys is
    # owned by one worker (the least loaded), which makes, protects and sends its consumers'
    # copies of every producer packet (the ingress worker leaves it a share of the decrypted
    # packet: native router/share.rs). By default one per core this process may run on:
    # 2 workers forward 1.68x the packets/s of one on 2 cores (bench/engine_fanout.py).
    workers: int = field(default_factory=default_workers)
    # With more than one worker and at least one per CPU this process may run on (the workers
    # default), pin worker i to the i-th of those CPUs (round robin over its affinity): each
    # worker keeps its consumers' state and contexts in one core's caches, and a woken worker
    # is not queued behind its waker. Fewer workers than CPUs stay unpinned (nodes sharing a
    # host would all land on the first cores); place such processes with taskset/cpusets.
    # Measured on 2 vCPUs (GCM, 100-500 viewers): -7 to -15 % CPU per forwarded packet and
    # -15 to -22 % p50 against unpinned (README "Pinned workers"). Turn off where the cores
    # are shared with other heavy work placed by hand.
    pin_workers: bool = True
    # Plain transports (RTP in/out without ICE/DTLS, ffmpeg/GStreamer): one UDP port each,
    # from this range ("first-last"), bound on rtc_ip.
    plain_port_range: str = "41000-41999"
    # Pipes (router to router, pysfu/pipe.py) are SRTP. True: a pipe whose socket is bound on
    # a loopback rtc_ip carries plain RTP instead (both sides must say so; its far end must
    # be a loopback address too). A pipe on any other address stays SRTP.
    pipe_plain_rtp: bool = False
    # Lifetimes, seconds. host_grace_period: how long a host whose WebSocket dropped keeps
    # its room, transports and producers (media flows on) for a ``resume``; 0 = none (the
    # room closes when the host's socket does).
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
    # Signaling requests: a token bucket per connection, and one per client address shared
    # by all its connections (a reconnect gets no fresh address budget); None = 4x the
    # per-connection figure.
    requests_per_second: float = 50.0
    request_burst: int = 100
    requests_per_second_per_address: float | None = None
    request_burst_per_address: int | None = None
    # Access control. With auth_secret (or auth_keys, key id -> secret, for rotation: a
    # token's ``kid`` header picks the key) every join needs a signed token (pysfu.auth).
    # Without either, rooms are open: allowed on a loopback ``host`` only, unless
    # allow_open_rooms says so explicitly.
    auth_secret: str | None = field(default=None, repr=False)
    auth_keys: dict[str, str] | None = field(default=None, repr=False)
    allow_open_rooms: bool = False
    # Origins whose pages may open the WebSocket (browsers send Origin; clients that send
    # none are allowed). None = this server's own origins; "*" = any.
    allowed_origins: list[str] | None = None
    # Failed joins (any error) one connection may have; the next failure closes it (1008).
    max_failed_joins: int = 5
    # Per client address (an IPv4 address, or an IPv6 /64): TCP connections open at once,
    # new connections per second (token bucket with a burst), DTLS handshakes in progress
    # (connectTransport until DTLS completes or fails), and in progress in all.
    max_connections_per_address: int = 32
    connections_per_second_per_address: float = 20.0
    connection_burst_per_address: int = 40
    max_dtls_handshakes_per_address: int = 16
    max_dtls_handshakes: int = 256
    log_level: str = "info"
    # Log lines as logfmt (key=value) or json (one object a line). Repeated warnings of one
    # kind (limit refusals, ...) are logged once per log_aggregate_interval seconds, with a
    # count of those not logged.
    log_format: str = "logfmt"
    log_aggregate_interval: float = 10.0
    # Prometheus /metrics on its own listener (never the public port by accident); 0 = off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Admin API (/admin/ on the signaling listener): a bearer token; without one only
    # loopback clients are answered.
    admin_token: str | None = field(default=None, repr=False)
    # SIGTERM/SIGINT: peers are told serverShuttingDown, rooms closed after this long.
    shutdown_grace: float = 5.0
    # What a peer told serverShuttingDown is asked to wait before reconnecting, ms.
    shutdown_reconnect_ms: int = 2000
    # Data channels (SCTP, pysfu.data): the host may always produce data; viewers too when
    # viewer_data_channels (e.g. chat). Each data producer is held to messages/s and bytes/s
    # (token buckets with a burst) and a message size; over-limit messages are dropped,
    # counted, and the sender is told once (dataProducerLimited).
    viewer_data_channels: bool = False
    data_messages_per_second: float = 100.0
    data_message_burst: int = 500
    data_bytes_per_second: float = 1_000_000.0
    data_bytes_burst: int = 1_048_576
    max_data_message_size: int = 262_144
    max_data_producers_per_peer: int = 4
    max_data_consumers_per_peer: int = 64
    # ORTC: router media codecs (mediasoup RtpCodecCapability shapes); None = the defaults.
    media_codecs: list[dict[str, Any]] | None = field(default=None, compare=False)
    # Several nodes around Redis (pysfu/cluster/). None = one node: no Redis is used (nor
    # imported). With a URL (redis://host:port/db), cluster_secret authenticates the
    # node-to-node requests (at least 32 bytes, the same on every node).
    cluster_redis_url: str | None = None
    cluster_secret: str | None = field(default=None, repr=False)
    node_id: str | None = None  # this node's name in the registry; None = random at start
    node_url: str | None = None  # signaling URL other nodes/clients use; None = ws://host:port/ws
    node_pipe_ip: str | None = None  # address other nodes send pipe media to; None = candidate_ip
    # Where a new room goes (pysfu/cluster/placement.py): "least_loaded" redirects a host
    # that opens a room on a busier node to the least loaded node that has a node_url;
    # "local" keeps every room on the node its host connected to.
    cluster_placement: str = "least_loaded"

    @property
    def candidate_ip(self) -> str:
        """The address put in ICE candidates: announced, else the listen address."""
        return self.announced_ip or self.rtc_ip

    @property
    def plain_ports(self) -> tuple[int, int]:
        """plain_port_range as (first, last)."""
        return _port_range(self.plain_port_range)

    @property
    def address_request_rate(self) -> float:
        """Signaling requests per second of one client address, all its connections."""
        if self.requests_per_second_per_address is not None:
            return self.requests_per_second_per_address
        return _ADDRESS_FACTOR * self.requests_per_second

    @property
    def address_request_burst(self) -> int:
        if self.request_burst_per_address is not None:
            return self.request_burst_per_address
        return _ADDRESS_FACTOR * self.request_burst

    @property
    def auth_enabled(self) -> bool:
        """Whether joins need a token."""
        return bool(self.auth_secret or self.auth_keys)

    @property
    def open_rooms(self) -> bool:
        """Anyone who reaches the server may join any room (no secret configured)."""
        return not self.auth_enabled

    @property
    def exposed(self) -> bool:
        """Signaling listens on a non-loopback address."""
        return not ipaddress.ip_address(self.host).is_loopback

    def __repr__(self) -> str:
        fields = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                  if f.repr]
        fields.append(f"auth_secret={_hidden(self.auth_secret)}")
        fields.append(f"admin_token={_hidden(self.admin_token)}")
        fields.append(f"cluster_secret={_hidden(self.cluster_secret)}")
        keys = None if self.auth_keys is None else {k: "***" for k in self.auth_keys}
        fields.append(f"auth_keys={keys!r}")
        return f"Config({', '.join(fields)})"


def _hidden(secret: str | None) -> str:
    return "None" if secret is None else "'***'"


_ADDRESS_FACTOR = 4  # per-address request budget over the per-connection one, by default
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Never echoed in messages or logs.
_SECRETS = frozenset({"auth_secret", "auth_keys", "admin_token", "cluster_secret"})
_KID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}
_LEVELS = ("debug", "info", "warning", "error")
_TIMEOUTS = ("host_grace_period", "consent_timeout", "dtls_timeout", "join_timeout",
             "http_timeout", "write_timeout", "shutdown_grace", "log_aggregate_interval")
_MAX_TIMEOUT = 3600.0  # seconds; a longer time-out is a mistake (or infinite), not a choice
_MAX_HANDSHAKES = 100_000
_MAX_COUNT = 1_000_000  # bound on the per-address and handshake counts
_MAX_DATA_COUNT = 1 << 30  # bound on the data channel bursts and counts
_SCTP_MAX_MESSAGE_SIZE = 262_144  # pysfu.data.MAX_MESSAGE_SIZE (not imported: no cycle)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_hostname(name: str) -> bool:
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
        if name == "auth_keys":
            return _coerce_keys(raw, from_text=from_text)
        if name == "allowed_origins":
            if from_text:
                raw = [o.strip() for o in str(raw).split(",") if o.strip()]
            if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
                raise ValueError("must be a list of origins (comma-separated in the "
                                 "environment)")
            return [_normal_origin(o) for o in raw]
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if from_text and str(raw).strip().lower() in _BOOLS:
                return _BOOLS[str(raw).strip().lower()]
            raise ValueError("must be true or false")
        if name in ("auth_secret", "admin_token", "cluster_secret"):
            if not isinstance(raw, str):
                raise ValueError("must be a string")
            return raw or None
        if raw is None and "None" in kind:
            return None
        if name == "media_codecs":
            if from_text or not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
                raise ValueError("must be a list of tables in the config file")
            return raw
        if name in ("announced_ip", "cluster_redis_url", "node_id", "node_url", "node_pipe_ip"):
            return None if raw in (None, "") else str(raw)
        if kind.startswith("int"):
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int)):
                raise ValueError("must be an integer")
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int | float)):
                raise ValueError("must be a number")
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        return raw
    except ValueError as exc:
        shown = "<hidden>" if name in _SECRETS else repr(raw)
        raise ConfigError(f"invalid setting {name}={shown}: {exc}") from None


def _coerce_keys(raw: Any, *, from_text: bool) -> dict[str, str] | None:
    """auth_keys: a TOML table kid -> secret, or ``kid1:secret1,kid2:secret2`` as text."""
    if from_text:
        keys: dict[str, str] = {}
        for item in str(raw).split(","):
            if not item.strip():
                continue
            kid, sep, secret = item.strip().partition(":")
            if not sep:
                raise ValueError("must be kid:secret pairs separated by commas")
            keys[kid] = secret
        raw = keys
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in raw.items()):
        raise ValueError("must be a table of key id -> secret")
    return dict(raw) or None


def _normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, default port dropped; "*" and "null" as is."""
    text = origin.strip()
    if text in ("*", "null"):
        return text
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{origin!r} is not an origin (http(s)://host[:port], nothing else)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def normal_origin(origin: str) -> str | None:
    """An Origin header's value in the form allowed_origins are kept in; None if malformed."""
    try:
        return _normal_origin(origin)
    except ValueError:
        return None


def _port_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{text!r} is not first-last")
    lo, hi = int(first), int(last)
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"{text!r}: need 1 <= first <= last <= 65535")
    return lo, hi


def _check(cfg: Config) -> Config:
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"invalid setting {name}={getattr(cfg, name)!r}: {why}")

    try:
        _port_range(cfg.plain_port_range)
    except ValueError:
        fail("plain_port_range", "must be two port numbers first-last (1..65535, first <= last)")

    for name in ("port", "rtc_port", "metrics_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            fail(name, "must be a port number 0..65535")
    for name in ("host", "rtc_ip", "metrics_host"):
        try:
            ipaddress.ip_address(getattr(cfg, name))
        except ValueError:
            fail(name, "must be an IP address")
    if cfg.announced_ip is not None:
        try:
            announced = ipaddress.ip_address(cfg.announced_ip)
        except ValueError:
            if not _is_hostname(cfg.announced_ip):
                fail("announced_ip", "must be an IP address or a host name (RFC 1123)")
        else:
            if announced.is_unspecified or announced.is_multicast:
                fail("announced_ip", "must be an address viewers can reach (not unspecified "
                     "or multicast)")
    if not cfg.enable_udp and not cfg.enable_tcp:
        fail("enable_tcp", "enable_udp and enable_tcp are both off: no ICE candidate to offer")
    if ipaddress.ip_address(cfg.rtc_ip).is_unspecified and cfg.announced_ip is None:
        fail("rtc_ip", "listening on all addresses needs announced_ip (the address viewers reach)")
    for name in _TIMEOUTS:
        if name == "host_grace_period" and cfg.host_grace_period == 0:
            continue  # no grace period: the room closes with the host's socket
        if not 0 < getattr(cfg, name) <= _MAX_TIMEOUT:
            fail(name, f"must be a number of seconds > 0 and <= {_MAX_TIMEOUT:g}")
    if not 0 < cfg.requests_per_second < math.inf:
        fail("requests_per_second", "must be > 0 and finite")
    if not 1 <= cfg.max_handshakes <= _MAX_HANDSHAKES:
        fail("max_handshakes", f"must be 1..{_MAX_HANDSHAKES}")
    for name in (
        "max_message_size", "max_rooms", "max_peers_per_room", "max_transports_per_peer",
        "max_producers_per_peer", "max_consumers_per_peer", "request_burst",
        "max_consumed_bitrate_per_peer", "max_rooms_per_address_per_minute",
        "max_failed_joins",
    ):
        if getattr(cfg, name) < 1:
            fail(name, "must be >= 1")
    for name in ("requests_per_second_per_address", "connections_per_second_per_address"):
        value = getattr(cfg, name)
        if value is not None and not 0 < value < math.inf:
            fail(name, "must be > 0 and finite")
    for name in ("max_connections_per_address", "connection_burst_per_address",
                 "max_dtls_handshakes_per_address", "max_dtls_handshakes"):
        if not 1 <= getattr(cfg, name) <= _MAX_COUNT:
            fail(name, f"must be 1..{_MAX_COUNT}")
    for name in ("data_messages_per_second", "data_bytes_per_second"):
        if not 0 < getattr(cfg, name) < math.inf:
            fail(name, "must be > 0 and finite")
    for name in ("data_message_burst", "data_bytes_burst", "max_data_producers_per_peer",
                 "max_data_consumers_per_peer"):
        if not 1 <= getattr(cfg, name) <= _MAX_DATA_COUNT:
            fail(name, f"must be 1..{_MAX_DATA_COUNT}")
    if not 1 <= cfg.max_data_message_size <= _SCTP_MAX_MESSAGE_SIZE:
        fail("max_data_message_size", f"must be 1..{_SCTP_MAX_MESSAGE_SIZE} (SCTP maxMessageSize)")
    if cfg.data_bytes_burst < cfg.max_data_message_size:
        # A message larger than the burst could never be let through.
        fail("data_bytes_burst", "must be >= max_data_message_size")
    if cfg.request_burst_per_address is not None and cfg.request_burst_per_address < 1:
        fail("request_burst_per_address", "must be >= 1")
    _check_auth(cfg)
    _check_cluster(cfg)
    if cfg.log_level not in _LEVELS:
        fail("log_level", f"must be one of {', '.join(_LEVELS)}")
    if cfg.log_format not in ("logfmt", "json"):
        fail("log_format", "must be logfmt or json")
    if not 1 <= cfg.workers <= _MAX_WORKERS:
        fail("workers", f"must be 1..{_MAX_WORKERS}")
    if not 0 <= cfg.shutdown_reconnect_ms <= 3_600_000:
        fail("shutdown_reconnect_ms", "must be 0..3600000")
    if cfg.admin_token is not None and len(cfg.admin_token.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"invalid setting admin_token: must be at least {MIN_SECRET_BYTES} "
                          "bytes")
    return cfg


_CLUSTER_PLACEMENTS = ("least_loaded", "local")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_cluster(cfg: Config) -> None:
    """The cluster settings: a Redis URL, a long enough shared secret, a node id that is
    safe in Redis keys, a pipe address that is an IP."""
    if cfg.node_id is not None and not _NODE_ID.fullmatch(cfg.node_id):
        raise ConfigError(f"invalid setting node_id={cfg.node_id[:64]!r}: 1-64 characters of "
                          "letters, digits, _ . -")
    if cfg.node_pipe_ip is not None:
        try:
            pipe_ip = ipaddress.ip_address(cfg.node_pipe_ip)
        except ValueError:
            raise ConfigError(f"invalid setting node_pipe_ip={cfg.node_pipe_ip!r}: must be an "
                              "IP address") from None
        if pipe_ip.is_unspecified or pipe_ip.is_multicast:
            raise ConfigError(f"invalid setting node_pipe_ip={cfg.node_pipe_ip!r}: must be an "
                              "address other nodes can reach")
    if cfg.node_url is not None and not re.fullmatch(r"wss?://\S{1,2000}", cfg.node_url):
        raise ConfigError(f"invalid setting node_url={cfg.node_url[:80]!r}: a ws:// or wss:// "
                          "URL")
    if cfg.cluster_placement not in _CLUSTER_PLACEMENTS:
        raise ConfigError(f"invalid setting cluster_placement={cfg.cluster_placement[:40]!r}: "
                          f"one of {', '.join(_CLUSTER_PLACEMENTS)}")
    if cfg.cluster_redis_url is None:
        return
    if not re.fullmatch(r"(rediss?|unix)://\S{1,2000}", cfg.cluster_redis_url):
        raise ConfigError("invalid setting cluster_redis_url: a redis://, rediss:// or "
                          "unix:// URL")
    if cfg.cluster_secret is None or len(cfg.cluster_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"invalid setting cluster_secret: cluster_redis_url needs a shared "
                          f"cluster_secret of at least {MIN_SECRET_BYTES} bytes (the same on "
                          "every node)")


def _check_auth(cfg: Config) -> None:
    """Secrets long enough (never echoed), and no open rooms on a reachable address unless
    asked for."""
    if cfg.auth_secret is not None and len(cfg.auth_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"invalid setting auth_secret: must be at least {MIN_SECRET_BYTES} "
                          "bytes (e.g. python -c 'import secrets; print(secrets.token_urlsafe"
                          "(32))')")
    for kid, secret in (cfg.auth_keys or {}).items():
        if not _KID.fullmatch(kid):
            raise ConfigError(f"invalid setting auth_keys: key id {kid[:64]!r} must be 1-64 "
                              "characters of letters, digits, _ . : -")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"invalid setting auth_keys: the secret of key id {kid!r} must "
                              f"be at least {MIN_SECRET_BYTES} bytes")
    if cfg.exposed and cfg.open_rooms and not cfg.allow_open_rooms:
        raise ConfigError(
            f"invalid setting host={cfg.host!r}: a non-loopback address needs auth_secret "
            "(or auth_keys) so that joining a room takes a signed token; set "
            "allow_open_rooms = true to let anyone who reaches it create and join rooms")


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


__all__ = ["Config", "ConfigError", "load_config", "normal_origin"]
