"""Prometheus metrics: what the control plane counts, and a collector that reads the engine once
per scrape.

Nothing here runs per packet. The engine's counters (``Engine.totals()``: packets and bytes
received and forwarded by kind, NACKs, retransmissions, PLI/FIR, key frame requests; and
``drops()`` by reason) are read when ``/metrics`` is scraped; the control plane counts what
it handles anyway (signaling requests, DTLS handshakes) in plain dictionaries; the room
gauges come from a snapshot function the server passes in (this module imports no room,
session or server: ``ServerContext`` holds a ``Metrics``).

Served on its own listener (``metrics_host``:``metrics_port``, default 127.0.0.1:9464, 0 =
off) so that it is never on the public signaling port by accident.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pysfu.media import MediaEngine

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "RoomGauges", "EngineCollector", "render"]

# DTLS handshake time buckets, seconds (a LAN handshake takes a few ms, a lossy path seconds).
_DTLS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FIRST_PACKET_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)

# Engine totals key -> (metric name, help, kind label or None).
_TOTALS: tuple[tuple[str, str, str], ...] = (
    ("PacketsReceived", "received_packets", "RTP packets received from producers"),
    ("BytesReceived", "received_bytes", "RTP bytes received from producers"),
    ("PacketsForwarded", "forwarded_packets", "RTP packets forwarded to consumers"),
    ("BytesForwarded", "forwarded_bytes", "RTP bytes forwarded to consumers"),
)
_PLAIN_TOTALS: tuple[tuple[str, str, str], ...] = (
    ("nacksReceived", "nacks_received", "NACK feedback items received from viewers"),
    ("nacksSent", "nacks_sent", "NACK packets sent to producers"),
    ("packetsRetransmitted", "retransmitted_packets", "packets resent to viewers for NACKs"),
    ("bytesRetransmitted", "retransmitted_bytes", "bytes resent to viewers for NACKs"),
    ("plisReceived", "plis_received", "PLIs received from viewers"),
    ("firsReceived", "firs_received", "FIRs received from viewers"),
    ("plisSent", "plis_sent", "PLIs sent to producers"),
    ("firsSent", "firs_sent", "FIRs sent to producers"),
    ("keyFramesRequested", "key_frames_requested", "key frame requests sent to producers"),
    ("tcpConnectionsAccepted", "tcp_connections_accepted", "ICE-TCP connections accepted"),
    ("gsoMessages", "gso_messages", "UDP GSO messages sent (several datagrams in one send)"),
    ("gsoDatagrams", "gso_datagrams", "datagrams sent inside UDP GSO messages"),
    ("gsoRefused", "gso_refused", "times the kernel refused UDP GSO (then sent without)"),
    ("groBuffers", "gro_buffers", "received UDP GRO buffers that held several datagrams"),
    ("groDatagrams", "gro_datagrams", "datagrams received inside coalesced UDP GRO buffers"),
    ("groRefused", "gro_refused", "1 if the kernel refused UDP GRO (then received without)"),
)

# Engine.worker_stats() key -> phase label of pysfu_worker_seconds_total.
_WORKER_PHASES = (("lockWaitNs", "lock_wait"), ("routerNs", "router"), ("sealNs", "seal"),
                  ("sendNs", "send"))


@dataclass
class RoomGauges:
    """What the rooms hold right now (built by the server at scrape time)."""

    rooms: int = 0
    peers: Counter[str] = field(default_factory=Counter)  # role -> count
    transports: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ice, dtls)
    producers: Counter[str] = field(default_factory=Counter)  # kind -> count
    consumers: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    draining: bool = False


class Metrics:
    """The control plane's own counters and histograms (cheap: a dict increment per event)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests: Counter[tuple[str, str]] = Counter()  # (event, code or "ok")
        self.dtls_handshakes: Counter[str] = Counter()  # outcome
        self.data_dropped: Counter[str] = Counter()  # data messages over a limit, by reason
        self.dtls_seconds = Histogram(
            "pysfu_dtls_handshake_seconds", "DTLS handshake time, first flight to connected",
            buckets=_DTLS_BUCKETS, registry=self.registry)
        self.join_to_first_packet = Histogram(
            "pysfu_join_to_first_packet_seconds",
            "From a peer's join to the first media packet forwarded to it",
            buckets=_FIRST_PACKET_BUCKETS, registry=self.registry)

    def request(self, event: str | None, code: str) -> None:
        """One signaling request answered (``code`` "ok" or the error code)."""
        self.requests[(event or "other", code)] += 1

    def first_packet(self, seconds: float) -> None:
        """A peer got its first forwarded media packet ``seconds`` after it joined."""
        self.join_to_first_packet.observe(seconds)

    def data_dropped_over_limit(self, reason: str) -> None:
        """A data channel message was dropped over its producer's limit (``reason``)."""
        self.data_dropped[reason] += 1

    def dtls_done(self, outcome: str, seconds: float | None = None) -> None:
        """A DTLS handshake ended: "connected" (with its time), "failed" or "timeout"."""
        self.dtls_handshakes[outcome] += 1
        if seconds is not None:
            self.dtls_seconds.observe(seconds)


class EngineCollector(Collector):
    """Reads the engine, the rooms and the control plane's counters at each scrape."""

    def __init__(self, media: MediaEngine, metrics: Metrics,
                 rooms: Callable[[], RoomGauges],
                 refusals: Callable[[], Mapping[str, int]]) -> None:
        self.media = media
        self.metrics = metrics
        self.rooms = rooms
        self.refusals = refusals

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._engine()
        yield from self._control()
        yield from _io_thread_cpu()

    def _gauges(self) -> Iterator[Metric]:
        g = self.rooms()
        yield GaugeMetricFamily("pysfu_rooms", "rooms open", value=g.rooms)
        yield GaugeMetricFamily("pysfu_signaling_sessions", "signaling WebSocket connections",
                                value=g.sessions)
        yield GaugeMetricFamily("pysfu_draining", "1 while the node refuses new rooms",
                                value=int(g.draining))
        peers = GaugeMetricFamily("pysfu_peers", "peers in rooms", labels=["role"])
        for role in ("host", "viewer"):
            peers.add_metric([role], g.peers.get(role, 0))
        yield peers
        transports = GaugeMetricFamily("pysfu_transports", "WebRTC transports by state",
                                       labels=["ice_state", "dtls_state"])
        for (ice, dtls), n in sorted(g.transports.items()):
            transports.add_metric([ice, dtls], n)
        yield transports
        for name, counts in (("producers", g.producers), ("consumers", g.consumers)):
            family = GaugeMetricFamily(f"pysfu_{name}", f"{name} by kind", labels=["kind"])
            for kind in ("audio", "video"):
                family.add_metric([kind], counts.get(kind, 0))
            yield family
        engine = GaugeMetricFamily("pysfu_engine_objects", "objects in the media engine",
                                   labels=["kind"])
        for kind, n in sorted(self.media.counts().items()):
            engine.add_metric([kind], n)
        yield engine

    def _engine(self) -> Iterator[Metric]:
        totals = self.media.totals()
        for suffix, name, text in _TOTALS:
            family = CounterMetricFamily(f"pysfu_{name}", text, labels=["kind"])
            for kind in ("audio", "video"):
                family.add_metric([kind], totals.get(kind + suffix, 0))
            yield family
        for key, name, text in _PLAIN_TOTALS:
            yield CounterMetricFamily(f"pysfu_{name}", text, value=totals.get(key, 0))
        drops = CounterMetricFamily("pysfu_dropped_datagrams",
                                    "datagrams and packets the engine dropped, by reason",
                                    labels=["reason"])
        for reason, n in sorted(self.media.drops().items()):
            drops.add_metric([reason], n)
        yield drops
        yield from self._workers()

    def _workers(self) -> Iterator[Metric]:
        """Per media worker: where its time goes and the kernel messages it sent (the cost of
        one message = send seconds / messages)."""
        seconds = CounterMetricFamily(
            "pysfu_worker_seconds", "media worker time by phase: waiting for the router's lock, "
            "holding it, protecting (SRTP), in the kernel's send calls", labels=["worker", "phase"])
        messages = CounterMetricFamily("pysfu_worker_messages_sent",
                                       "kernel messages a media worker sent (GSO or plain)",
                                       labels=["worker"])
        for i, w in enumerate(self.media.worker_stats()):
            for key, phase in _WORKER_PHASES:
                seconds.add_metric([str(i), phase], (w.get(key) or 0) / 1e9)
            messages.add_metric([str(i)], w.get("messages") or 0)
        yield seconds
        yield messages

    def _control(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily("pysfu_signaling_requests",
                                       "signaling requests by event and answer code",
                                       labels=["event", "code"])
        for (event, code), n in sorted(m.requests.items()):
            requests.add_metric([event, code], n)
        yield requests
        refused = CounterMetricFamily(
            "pysfu_refused", "connections, requests, joins and handshakes refused by a "
            "per-address or global limit (rate limits included), by reason", labels=["reason"])
        for reason, n in sorted(self.refusals().items()):
            refused.add_metric([reason], n)
        yield refused
        dtls = CounterMetricFamily("pysfu_dtls_handshakes", "DTLS handshakes by outcome",
                                   labels=["outcome"])
        for outcome in sorted(set(m.dtls_handshakes) | {"connected", "failed", "timeout"}):
            dtls.add_metric([outcome], m.dtls_handshakes.get(outcome, 0))
        yield dtls
        data = CounterMetricFamily("pysfu_data_messages_dropped",
                                   "data channel messages dropped over a producer's limits, "
                                   "by reason", labels=["reason"])
        for reason, n in sorted(m.data_dropped.items()):
            data.add_metric([reason], n)
        yield data


def _io_thread_cpu() -> Iterator[Metric]:
    """CPU seconds of the engine's I/O threads (named ``pysfu-io``), from /proc."""
    family = CounterMetricFamily("pysfu_engine_io_cpu_seconds",
                                 "CPU time of the media engine's I/O threads")
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pysfu-io":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        # After the command: state is field 3; utime and stime are fields 14 and 15.
        total += (int(fields[11]) + int(fields[12])) / tick
    family.add_metric([], total)
    yield family


def build_registry(metrics: Metrics, collector: EngineCollector) -> CollectorRegistry:
    """The scrape registry: ours, and the process collector (RSS, open fds, CPU) from /proc."""
    registry = metrics.registry
    registry.register(collector)
    ProcessCollector(namespace="pysfu", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
