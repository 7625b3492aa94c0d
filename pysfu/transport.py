"""WebRtcTransport: ICE-lite + DTLS for one peer connection, its handle in the engine, and the
producers and consumers that live on it (their engine specs included).

A transport is built from what it needs (the engine's face, the config, the DTLS certificate,
a handle and a callback for when it fails) and knows nothing of rooms. Each transport is one
task in its room's nursery. STUN and DTLS datagrams reach it from the engine (it is the
``UpcallSink`` of its handle); RTP/RTCP never do. The task's ``finally`` removes the transport
from the engine, so a cancelled room leaves nothing native behind.

What a removal takes with it is the engine's decision, not this module's: ``close`` and
``remove_producer`` hand back the engine's answer (``Removed``: every producer and consumer
that went) for the room to update its registries from.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import trio

from pysfu import data as datachannels
from pysfu import ortc
from pysfu._native import SctpAssociation
from pysfu.dtls import DtlsTransport
from pysfu.ice import (
    Address,
    IceLiteServer,
    TupleSelected,
    TupleValidated,
    make_address,
    protocol_of,
)
from pysfu.log import log_event

if TYPE_CHECKING:
    from pysfu._native import (
        CodecSpec,
        ConsumerSpec,
        EncodingSpec,
        ExtSpec,
        ProducerSpec,
        Removed,
    )
    from pysfu.config import Config
    from pysfu.dtls import Certificate
    from pysfu.media import MediaEngine
    from pysfu.metrics import Metrics

logger = logging.getLogger("pysfu.transport")

# Candidate priorities as mediasoup computes them (RFC 8445 5.1.2.1): host type preference
# 64, component 1, local preference 10000 for the first listen entry (UDP), 100 less for
# each next one (TCP), plus 1000 for the UDP one with prefer_udp.
_TYPE_PREFERENCE = 64
_LOCAL_PREFERENCE = 10000
_LOCAL_PREFERENCE_STEP = 100
_PREFER_BONUS = 1000


def _priority(local_preference: int) -> int:
    return (_TYPE_PREFERENCE << 24) + (local_preference << 8) + (256 - 1)


def ice_candidates(ip: str, port: int, *, udp: bool, tcp: bool,
                   prefer_udp: bool) -> list[dict[str, Any]]:
    """The host candidates of a transport (mediasoup IceCandidate shape): UDP, then a
    passive TCP one (RFC 6544) on the same port number."""
    candidates: list[dict[str, Any]] = []
    preference = _LOCAL_PREFERENCE
    if udp:
        candidates.append({
            "foundation": "udpcandidate",
            "priority": _priority(preference + (_PREFER_BONUS if prefer_udp else 0)),
            "ip": ip, "address": ip, "protocol": "udp", "port": port, "type": "host",
        })
        preference -= _LOCAL_PREFERENCE_STEP
    if tcp:
        candidates.append({
            "foundation": "tcpcandidate",
            "priority": _priority(preference),
            "ip": ip, "address": ip, "protocol": "tcp", "port": port, "type": "host",
            "tcpType": "passive",
        })
    return candidates

_INBOX_SIZE = 256
_CNAME_ALPHABET = string.ascii_letters + string.digits

Datagram = tuple[str, Address, bytes]  # (kind "stun" | "dtls" | "media", remote, data)


class AlreadyConnected(Exception):
    """``connect`` was called on a transport that already has the remote DTLS parameters."""


@dataclass(eq=False)
class Producer:
    id: str
    owner: str
    transport: MediaTransport
    kind: str
    rtp_parameters: dict[str, Any]
    mapping: dict[str, Any]
    consumable: dict[str, Any]
    handle: int
    paused: bool = False
    consumers: set[str] = field(default_factory=set)


@dataclass(eq=False)
class Consumer:
    id: str
    owner: str
    transport: MediaTransport
    producer: Producer
    kind: str
    rtp_parameters: dict[str, Any]
    handle: int
    paused: bool = True


class MediaTransport:
    """What every transport kind has: an id, an owner, a handle in the engine, and the
    producers and consumers that live on it (their engine specs included). WebRTC
    (``WebRtcTransport``) and plain (``pysfu.plain.PlainTransport``) transports add how the
    remote end connects."""

    def __init__(self, transport_id: str, owner: str, direction: str, *, handle: int,
                 media: MediaEngine, room_id: str = "") -> None:
        self.id = transport_id
        self.owner = owner
        self.direction = direction
        self.handle = handle
        self.room_id = room_id
        self._media = media
        self.cname: str | None = None
        self.closed = False
        self._mids = itertools.count()
        self._producers: dict[int, Producer] = {}  # its producers' parameters (mids, SSRCs)

    @property
    def can_produce(self) -> bool:
        return self.direction == "send"

    @property
    def can_consume(self) -> bool:
        return self.direction == "recv"

    def close(self) -> Removed:
        """Close it; what the engine removed with it (producers, consumers), once."""
        raise NotImplementedError

    def next_mid(self) -> str:
        # Never repeats on this transport (mediasoup-client recycles m-sections by mid).
        return str(next(self._mids) % 100_000_000)

    def claim_cname(self, cname: str | None) -> str:
        if self.cname is None:
            self.cname = cname or "".join(secrets.choice(_CNAME_ALPHABET) for _ in range(8))
        return self.cname

    def producer_mids(self) -> set[str]:
        return {p.rtp_parameters["mid"] for p in self._producers.values()
                if p.rtp_parameters.get("mid")}

    def producer_ssrcs(self) -> set[int]:
        ssrcs: set[int] = set()
        for p in self._producers.values():
            for enc in p.rtp_parameters.get("encodings", []):
                ssrcs.update(s for s in (enc.get("ssrc"), (enc.get("rtx") or {}).get("ssrc")) if s)
        return ssrcs

    # ---- engine objects ---------------------------------------------------------------------

    def add_producer(self, producer: Producer) -> None:
        self._media.add_producer(producer.handle, self.handle, producer_spec(producer))
        self._producers[producer.handle] = producer

    def remove_producer(self, producer: Producer) -> Removed | None:
        """The engine removes the producer and its consumers; its answer says which (None:
        not this transport's, or already gone)."""
        if self._producers.pop(producer.handle, None) is None:
            return None
        return self._media.remove_producer(producer.handle)

    def add_consumer(self, consumer: Consumer) -> None:
        self._media.add_consumer(
            consumer.handle, self.handle, consumer.producer.handle, consumer_spec(consumer)
        )

    def set_consumer_paused(self, consumer: Consumer, paused: bool) -> None:
        if paused:
            self._media.pause_consumer(consumer.handle)
        else:
            self._media.resume_consumer(consumer.handle)

    def set_producer_paused(self, producer: Producer, paused: bool) -> None:
        if paused:
            self._media.pause_producer(producer.handle)
        else:
            self._media.resume_producer(producer.handle)

    def request_key_frame(self, producer: Producer) -> None:
        """Ask the producer for a key frame now (its host resumed: what its viewers got in the
        meantime may not decode). The engine's resume of a paused producer is the path that
        asks (PLI or FIR, as negotiated) and has every consumer of it go on from that key
        frame; a producer the host paused is left alone."""
        if producer.paused or producer.handle not in self._producers:
            return
        self._media.pause_producer(producer.handle)
        self._media.resume_producer(producer.handle)

    def set_consumer_preferred_layers(
        self, consumer: Consumer, spatial: int, temporal: int | None
    ) -> tuple[int, int] | None:
        return self._media.set_preferred_layers(consumer.handle, spatial, temporal)


class WebRtcTransport(MediaTransport):
    def __init__(self, transport_id: str, owner: str, direction: str, *, handle: int,
                 media: MediaEngine, config: Config, certificate: Certificate,
                 on_failed: Callable[[WebRtcTransport, str], None], room_id: str = "",
                 metrics: Metrics | None = None,
                 on_media: Callable[[WebRtcTransport], None] | None = None,
                 sctp: bool = False) -> None:
        """``on_failed(transport, reason)``: ICE consent or DTLS failed, or connecting timed
        out; the owner of the transport closes it. ``on_media(transport)``: the engine sent
        it its first forwarded media packet. ``room_id`` only labels log lines. ``sctp``:
        the transport carries data channels (an SCTP association over its DTLS session)."""
        super().__init__(transport_id, owner, direction, handle=handle, media=media,
                         room_id=room_id)
        self._config = config
        self._certificate = certificate
        self._on_failed = on_failed
        self._on_media = on_media
        ufrag, password = IceLiteServer.generate_credentials()
        self.ice = IceLiteServer(ufrag, password)
        self.dtls: DtlsTransport | None = None
        self.remote_dtls: dict[str, Any] | None = None
        self.srtp_profile: str | None = None
        # What the engine removed with this transport, until ``close`` hands it over (the
        # task's ``finally`` may get there first).
        self._removed: Removed = {"producers": [], "consumers": []}
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[Datagram](_INBOX_SIZE)
        self.inbox_dropped = 0
        self._cancel = trio.CancelScope()
        self._registered = False
        # Set by connectTransport: ICE and DTLS must then complete within dtls_timeout, so a
        # peer that connects and goes silent does not hold a transport (and its port share).
        self._connect_deadline: float | None = None
        # Frees this handshake's slot in the per-address DTLS limits (pysfu.limits): called
        # once, when DTLS completes or fails or the transport closes.
        self._handshake_end: Callable[[], None] | None = None
        self._metrics = metrics
        self._dtls_started: float | None = None  # first DTLS flight either way (timing)
        self._dtls_counted = False
        # Data channels: the association (native, sans-IO), what a message goes to (set by
        # the room) and the stream ids taken by this transport's data consumers.
        self.sctp: SctpAssociation | None = (
            SctpAssociation("server", trio.current_time()) if sctp else None)
        self.on_data: Callable[[WebRtcTransport, int, int, bytes], None] | None = None
        self._data_streams: set[int] = set()

    # ---- signaling-facing ---------------------------------------------------------------------

    def parameters(self) -> dict[str, Any]:
        """The transportCreated payload (mediasoup TransportOptions shape)."""
        ip = self._config.candidate_ip
        return {
            "direction": self.direction,
            "transportId": self.id,
            "id": self.id,
            "iceParameters": self.ice_parameters(),
            "iceCandidates": ice_candidates(
                ip, self._media.port, udp=self._config.enable_udp,
                tcp=self._config.enable_tcp and self._media.tcp,
                prefer_udp=self._config.prefer_udp),
            "dtlsParameters": {
                "role": "auto",
                "fingerprints": self._certificate.dtls_fingerprints(),
            },
        } | ({"sctpParameters": datachannels.sctp_parameters()} if self.sctp is not None else {})

    def restart_ice(self) -> dict[str, Any]:
        """ICE restart: fresh local credentials here and in the engine (which refuses the old
        ones from now on). The DTLS session, SRTP keys, producers and consumers stay; media
        keeps going to the proven tuple until the new credentials nominate and prove another.
        Returns the new iceParameters."""
        self.ice.restart()
        if self._registered:
            self._media.set_ice_credentials(self.handle, self.ice.local_ufrag,
                                            self.ice.local_password)
        log_event(logger, "transport.ice_restart", room=self.room_id, peer=self.owner,
                  transport=self.id)
        return self.ice_parameters()

    def ice_parameters(self) -> dict[str, Any]:
        """mediasoup's IceParameters."""
        return {
            "usernameFragment": self.ice.local_ufrag,
            "password": self.ice.local_password,
            "iceLite": True,
        }

    def connect(self, dtls_parameters: dict[str, Any], *,
                on_handshake_end: Callable[[], None] | None = None) -> None:
        """Record the browser's DTLS fingerprint and role; the handshake follows ICE."""
        if self.remote_dtls is not None:
            raise AlreadyConnected("transport already connected")
        self._handshake_end = on_handshake_end
        self.remote_dtls = dtls_parameters
        self._connect_deadline = trio.current_time() + self._config.dtls_timeout
        # The browser says "client" (mediasoup-client always does): we are the DTLS server.
        role: Literal["client", "server"] = (
            "client" if dtls_parameters["role"] == "server" else "server")
        self.dtls = DtlsTransport(
            self._certificate,
            role=role,
            remote_fingerprint=dtls_parameters["fingerprints"][0],
        )
        if role == "client" and self.ice.state in ("connected", "completed"):
            self._dtls_started = trio.current_time()
            self.dtls.start(trio.current_time())
            self._flush_dtls()
        log_event(logger, "transport.connect", room=self.room_id, peer=self.owner,
                  transport=self.id, dtls_role=role)

    # ---- task ---------------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        # Registered with the engine before the first await, so STUN can find it at once.
        self._media.add_transport(self.handle, self.ice.local_ufrag, self.ice.local_password,
                                  self)
        self._registered = True
        nursery.start_soon(self._run)

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            removed = self._media.remove_transport(self.handle)
            if removed is not None:
                for handle in removed["producers"]:
                    self._producers.pop(handle, None)
                self._removed["producers"] += removed["producers"]
                self._removed["consumers"] += removed["consumers"]

    def _end_handshake(self) -> None:
        end, self._handshake_end = self._handshake_end, None
        if end is not None:
            end()

    def close(self) -> Removed:
        """Close it (the engine removes it with its producers and consumers, and the
        consumers of its producers); returns what the engine removed, once."""
        self._end_handshake()
        if not self.closed:
            self.closed = True
            if self.dtls is not None and self.dtls.state == "connected":
                for datagram in self.dtls.close():
                    self._send(datagram)
            self._cancel.cancel()
            self._unregister()
            self.sctp = None  # the association is freed with its last reference
        removed, self._removed = self._removed, {"producers": [], "consumers": []}
        return removed

    def deliver(self, kind: str, ip: str, port: int, data: bytes, protocol: str = "udp") -> None:
        """Called by the media dispatcher; never blocks (a flood is dropped and counted)."""
        try:
            self._inbox_send.send_nowait((kind, make_address(ip, port, protocol), data))
        except trio.WouldBlock:
            self.inbox_dropped += 1

    async def _run(self) -> None:
        try:
            with self._cancel:
                while True:
                    with trio.move_on_at(self._next_deadline()):
                        kind, remote, data = await self._inbox_recv.receive()
                        now = trio.current_time()
                        if kind == "stun":
                            self._on_stun(data, remote, now)
                        elif kind == "dtls" and self.dtls is not None:
                            if self._dtls_started is None:  # its first flight, we serve
                                self._dtls_started = now
                            self.dtls.receive(data, now)
                            self._after_dtls(remote)
                            self._sctp_input(now)
                        elif kind == "media" and self._on_media is not None:
                            self._on_media(self)
                        elif kind == "consent_lost":  # RFC 7675, decided by the engine
                            self._fail("ice_consent_timeout")
                    self._on_timer(trio.current_time())
        finally:
            self._end_handshake()
            self._unregister()
            self.sctp = None

    def _next_deadline(self) -> float:
        """The earliest of this transport's timers: the DTLS retransmission, the connect
        deadline and the SCTP association's timers. A connected transport without data
        channels has none: consent is the engine's (it answers the checks and says
        ``consent_lost``), so steady media costs this thread nothing per transport."""
        deadlines = [self._connect_deadline,
                     self.dtls.next_timeout() if self.dtls is not None else None,
                     self.sctp.poll_timeout() if self.sctp is not None else None]
        return min((d for d in deadlines if d is not None), default=math.inf)

    def _on_timer(self, now: float) -> None:
        if self.dtls is not None and self.dtls.state == "connecting":
            timeout = self.dtls.next_timeout()
            if timeout is not None and now >= timeout:
                self.dtls.handle_timeout(now)
                self._after_dtls()
        if self.sctp is not None:
            timeout = self.sctp.poll_timeout()
            if timeout is not None and now >= timeout:
                self.sctp.handle_timeout(now)
                self._sctp_pump(now)
        if self._connect_deadline is not None and now >= self._connect_deadline:
            self._connect_deadline = None
            if self.srtp_profile is None:
                self._count_dtls("timeout")
                self._fail("connect_timeout")

    def _on_stun(self, data: bytes, addr: Address, now: float) -> None:
        out = self.ice.handle_datagram(data, addr)
        if out.response is not None:
            self._media.send(self.handle, addr[0], addr[1], out.response, protocol_of(addr))
        for event in out.events:
            if isinstance(event, TupleValidated | TupleSelected):
                selected = isinstance(event, TupleSelected)
                protocol = protocol_of(event.addr)
                self._media.bind_tuple(self.handle, event.addr[0], event.addr[1], selected,
                                       protocol)
                if selected:
                    log_event(logger, "ice.selected", room=self.room_id, peer=self.owner,
                              transport=self.id, remote=f"{event.addr[0]}:{event.addr[1]}",
                              protocol=protocol)
        dtls = self.dtls
        if dtls is not None and dtls.state == "new" and self.ice.state != "new":
            if self.remote_dtls is not None and self.remote_dtls["role"] == "server":
                self._dtls_started = now
                dtls.start(now)
                self._flush_dtls()

    def _after_dtls(self, source: Address | None = None) -> None:
        """``source``: where the DTLS datagram just handled came from (None on a timer)."""
        dtls = self.dtls
        assert dtls is not None
        # Where our flights are going (before flushing: the nomination may change later).
        flights_to = self.ice.nominated
        self._flush_dtls()
        if dtls.state == "connected" and dtls.srtp_keys is not None and self.srtp_profile is None:
            keys = dtls.srtp_keys
            self.srtp_profile = keys.profile
            self._connect_deadline = None
            self._end_handshake()
            # The handshake completed with ``source`` and our flights went there too: that
            # tuple has proven it is the peer, media may go there at once. Otherwise the
            # engine waits for the first authenticated SRTP/SRTCP packet.
            proven = source if source is not None and source == flights_to else None
            self._media.set_srtp(self.handle, keys, proven)
            log_event(logger, "dtls.connected", room=self.room_id, peer=self.owner,
                      transport=self.id, srtp_profile=keys.profile)
            self._count_dtls("connected")
        elif dtls.state == "failed":
            self._end_handshake()
            self._count_dtls("failed")
            self._fail(f"dtls_{dtls.failure_reason or 'failed'}")

    def _count_dtls(self, outcome: str) -> None:
        """A handshake's outcome, once per transport (metrics; the time for "connected")."""
        if self._metrics is None or self._dtls_counted:
            return
        self._dtls_counted = True
        seconds = None
        if outcome == "connected":
            start = self._dtls_started
            seconds = trio.current_time() - start if start is not None else None
        self._metrics.dtls_done(outcome, seconds)

    def _flush_dtls(self) -> None:
        assert self.dtls is not None
        for datagram in self.dtls.take_outgoing():
            self._send(datagram)

    # ---- data channels ------------------------------------------------------------------------

    def allocate_stream(self) -> int | None:
        """A free outgoing SCTP stream id for a data consumer on this transport."""
        for stream in range(datachannels.NUM_STREAMS):
            if stream not in self._data_streams:
                self._data_streams.add(stream)
                return stream
        return None

    def open_data_stream(self, stream: int, params: datachannels.StreamParameters) -> None:
        if self.sctp is not None:
            self.sctp.open_stream(stream, params.ordered, params.max_retransmits,
                                  params.max_packet_life_time)

    def release_stream(self, stream: int) -> None:
        """A data consumer went: its stream is reset (the peer's channel closes), freed."""
        self._data_streams.discard(stream)
        if self.sctp is not None:
            self.sctp.close_stream(stream)
            self._sctp_pump(trio.current_time())

    def protect_data(self, packets: list[bytes]) -> list[tuple[int, str, int, bytes, str]]:
        """The association's packets out as DTLS datagrams, ready for
        ``MediaEngine.send_many`` (over UDP or the transport's ICE-TCP connection, wherever
        ICE nominated): sealed already by the association (``seal_with``), else protected here
        with pyOpenSSL."""
        addr = self.ice.nominated
        if not packets or addr is None or not self._registered or self.dtls is None:
            return []
        protocol = protocol_of(addr)
        if self.sctp is not None and self.sctp.sealed:
            # Sealed already; nothing once the session is closed or failed (as protect()).
            records = packets if self.dtls.state == "connected" else []
        else:
            records = self.dtls.protect(packets)
        return [(self.handle, addr[0], addr[1], d, protocol) for d in records]

    def _sctp_input(self, now: float) -> None:
        dtls, sctp = self.dtls, self.sctp
        if dtls is None:
            return
        records = dtls.take_application()  # taken (and dropped) without data channels too
        if not records or sctp is None:
            return
        for record in records:
            sctp.handle_packet(record, now)
        if not sctp.sealed:
            # The peer sent application data: its handshake is over (OpenSSL will not resend
            # a flight of epoch 1), so from here the association seals its records itself
            # (AEAD suites; others stay with pyOpenSSL).
            keys = dtls.record_keys()
            if keys is not None and sctp.seal_with(keys.cipher, keys.key, keys.iv, keys.epoch):
                log_event(logger, "sctp.sealing", level=logging.DEBUG, room=self.room_id,
                          peer=self.owner, transport=self.id, cipher=keys.cipher)
        self._sctp_pump(now)

    def _sctp_pump(self, now: float) -> None:
        """Events of the association to the room, then its packets out."""
        sctp = self.sctp
        if sctp is None:
            return
        for event in sctp.take_events():
            kind = event[0]
            if kind == "message":
                if self.on_data is not None:
                    self.on_data(self, event[1], event[2], event[3])
            elif kind in ("connected", "closed", "channel_opened", "channel_closed"):
                log_event(logger, f"sctp.{kind}", room=self.room_id, peer=self.owner,
                          transport=self.id, detail=list(event[1:3]) or None)
        if self.sctp is None:  # closed by what a message did
            return
        items = self.protect_data(sctp.take_packets(now))
        if items:
            self._media.send_many(items)

    def selected_tuple(self) -> Address | None:
        """Where the engine sends media (a nominated tuple that proved itself): asked of the
        engine, which alone keeps the tuples (None: none yet, or the transport is gone).
        (ip, port) over UDP, (ip, port, "tcp") over an ICE-TCP connection."""
        stats = self._media.stats(self.handle)
        addr = str(stats.get("selectedTuple", "")) if stats is not None else ""
        if not addr:
            return None
        addr, _, protocol = addr.partition("/")  # "ip:port" or "ip:port/tcp"
        ip, _, port = addr.rpartition(":")
        return make_address(ip.strip("[]"), int(port), protocol or "udp")

    def _send(self, datagram: bytes) -> None:
        addr = self.ice.nominated  # DTLS goes to the nomination, before any proof
        if addr is not None and self._registered:
            self._media.send(self.handle, addr[0], addr[1], datagram, protocol_of(addr))

    def _fail(self, reason: str) -> None:
        log_event(logger, "transport.failed", level=logging.WARNING, room=self.room_id,
                  peer=self.owner, transport=self.id, reason=reason)
        self._on_failed(self, reason)


def _key_frame_request(codec: dict[str, Any]) -> Literal["pli", "fir"] | None:
    feedback = {(fb.get("type"), fb.get("parameter", "")) for fb in codec.get("rtcpFeedback", [])}
    if ("nack", "pli") in feedback:
        return "pli"
    if ("ccm", "fir") in feedback:
        return "fir"
    return None


def producer_spec(producer: Producer) -> ProducerSpec:
    """Translate the producer's negotiated parameters into the engine's ingress table."""
    params, mapping = producer.rtp_parameters, producer.mapping
    mapped = {c["payloadType"]: c["mappedPayloadType"] for c in mapping["codecs"]}
    consumable_rtx = {
        c["parameters"]["apt"]: c["payloadType"]
        for c in producer.consumable["codecs"] if c["mimeType"].lower().endswith("/rtx")
    }
    codecs: list[CodecSpec] = []
    key_frame_request: Literal["pli", "fir"] | None = None
    nack = False
    for codec in params["codecs"]:
        if codec["mimeType"].lower().endswith("/rtx"):
            continue
        pt = codec["payloadType"]
        rtx = next((c["payloadType"] for c in params["codecs"]
                    if c["mimeType"].lower().endswith("/rtx")
                    and c.get("parameters", {}).get("apt") == pt), None)
        codecs.append({
            "payload_type": pt,
            "mapped_payload_type": mapped[pt],
            "mime": codec["mimeType"],
            "rtx_payload_type": rtx,
            "mapped_rtx_payload_type": consumable_rtx.get(mapped[pt]) if rtx is not None else None,
            "clock_rate": codec["clockRate"],
        })
        key_frame_request = key_frame_request or _key_frame_request(codec)
        nack = nack or _has_plain_nack(codec)
    router_ids = {ext["uri"]: ext["id"] for ext in producer.consumable["headerExtensions"]}
    header_extensions: list[ExtSpec] = [
        {"id": ext["id"], "router_id": router_ids.get(ext["uri"]), "uri": ext["uri"]}
        for ext in params.get("headerExtensions", [])
    ]
    encodings: list[EncodingSpec] = [
        {
            "ssrc": enc.get("ssrc"),
            "rtx_ssrc": enc.get("rtxSsrc"),
            "rid": enc.get("rid"),
            "mapped_ssrc": enc["mappedSsrc"],
        }
        for enc in mapping["encodings"]
    ]
    return {
        "kind": producer.kind,
        "mid": params.get("mid"),
        "codecs": codecs,
        "encodings": encodings,
        "header_extensions": header_extensions,
        "key_frame_request": key_frame_request,
        "paused": producer.paused,
        # Gaps are NACKed upstream (and RTX accepted) only if the producer negotiated it.
        "nack": nack,
    }


_URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def consumer_spec(consumer: Consumer) -> ConsumerSpec:
    """The engine's egress table for one consumer."""
    rtp = consumer.rtp_parameters
    encoding = rtp["encodings"][0]
    mid_ext = next((ext["id"] for ext in rtp.get("headerExtensions", [])
                    if ext["uri"] == "urn:ietf:params:rtp-hdrext:sdes:mid"), None)
    # transport-cc negotiated: the engine stamps transport-wide sequence numbers on what it
    # sends this viewer and estimates from its feedback (native/src/bwe/send_side.rs).
    tcc_ext = next((ext["id"] for ext in rtp.get("headerExtensions", [])
                    if ext["uri"] == _URI_TRANSPORT_CC), None)
    return {
        "ssrc": encoding["ssrc"],
        "rtx_ssrc": (encoding.get("rtx") or {}).get("ssrc"),
        "mid": rtp.get("mid"),
        "mid_ext_id": mid_ext,
        "payload_types": {
            c["payloadType"]: c["payloadType"]
            for c in rtp["codecs"] if not c["mimeType"].lower().endswith("/rtx")
        },
        "paused": consumer.paused,
        # Retransmissions: RTX PT per media PT; answer NACKs only if the viewer negotiated them.
        "rtx_payload_types": {
            c["parameters"]["apt"]: c["payloadType"]
            for c in rtp["codecs"] if c["mimeType"].lower().endswith("/rtx")
        },
        "nack": any(_has_plain_nack(c) for c in rtp["codecs"]
                    if not c["mimeType"].lower().endswith("/rtx")),
        "cname": rtp.get("rtcp", {}).get("cname"),
        "svc": ortc.svc_layers(consumer.producer.rtp_parameters),
        "tcc_ext_id": tcc_ext,
    }


def _has_plain_nack(codec: dict[str, Any]) -> bool:
    return any(fb.get("type") == "nack" and not fb.get("parameter")
               for fb in codec.get("rtcpFeedback", []))
