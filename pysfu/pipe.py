"""Pipes between routers (mediasoup's PipeTransport and ``router.pipeToRouter``): a producer
of one room appears as a producer of another room, in this process or on another node.

A pipe is a pair of pipe transports, one per room: plain transports (a UDP socket each,
no ICE/DTLS) protected with SRTP, whose keys the control plane exchanges with the
addresses. Plain RTP only on loopback, by setting: with ``pipe_plain_rtp`` a pipe whose
socket is bound on a loopback ``rtc_ip`` has no SRTP, and takes only a far end without keys
at a loopback address (``plain_rtp_pipes``).

On the producer's side a *pipe consumer* forwards every encoding of the producer (all
simulcast layers; RTX for repairs) with its own SSRC per encoding, the router's payload
types and header extension ids, and the producer's sequence numbers and timestamps; on the
other side a *pipe producer* declares exactly those streams, so that room's consumers get
the usual layer choice, key frame requests and loss repair. PLI/FIR, NACKs and receiver
reports of the far side go back through the pipe; sender reports (the producer's NTP/RTP
mapping) come along with the media.

Everything that crosses between the two sides is plain data (``PipeEnd``, the offer of
``pipe_consume``), so that a control channel between nodes can carry it. ``pipe_to_router``
does both sides when both rooms are in reach (two rooms of one server, or of two servers in
one process); closing either room (or either pipe transport) closes the other side too, and
the far producer follows its origin's pause, resume and close.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pysfu.log import log_event
from pysfu.plain import PlainTransport, parse_srtp_parameters

if TYPE_CHECKING:
    from pysfu._native import ConsumerSpec
    from pysfu.config import Config
    from pysfu.media import MediaEngine
    from pysfu.transport import Consumer, Producer

logger = logging.getLogger("pysfu.pipe")

PIPE_OWNER = "#pipe"  # owner of pipe objects: no peer ("#" is outside the peer id alphabet)
PIPE_SRTP_SUITE = "AEAD_AES_128_GCM"
MAX_PIPES_PER_ROOM = 16
_SSRC_MIN, _SSRC_MAX = 100_000_000, 900_000_000


class Room(Protocol):
    """What a pipe needs of a room (``pysfu.room.Room`` is one; a protocol, so that this
    module does not import the room that imports it)."""

    id: str

    def open_pipe(self) -> PipeTransport: ...
    def close_pipe(self, pipe: PipeTransport) -> None: ...
    def pipe_consume(self, pipe: PipeTransport, producer_id: str
                     ) -> tuple[Consumer, dict[str, Any]]: ...
    def pipe_produce(self, pipe: PipeTransport, offer: Any) -> Producer: ...
    def watch_producer(self, producer_id: str, callback: Callable[[str], None]) -> None: ...
    def set_pipe_producer_paused(self, producer: Producer, paused: bool) -> None: ...
    def close_pipe_producer(self, producer: Producer) -> None: ...


class PipeError(ValueError):
    """Bad pipe data from the other side (the message says which)."""


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def plain_rtp_pipes(config: Config) -> bool:
    """Whether this server's pipes carry plain RTP: ``pipe_plain_rtp`` set and ``rtc_ip`` (where
    pipe sockets are bound) a loopback address; otherwise they are SRTP."""
    return config.pipe_plain_rtp and _loopback(config.rtc_ip)


@dataclass(frozen=True)
class PipeEnd:
    """One side of a pipe as the other side needs it: where to send, and the key that
    protects what this side sends (None: a plain RTP pipe, loopback only). Plain data
    (``as_dict`` / ``from_dict``)."""

    ip: str
    port: int
    srtp: dict[str, str] | None  # mediasoup SrtpParameters {cryptoSuite, keyBase64}

    def as_dict(self) -> dict[str, Any]:
        end: dict[str, Any] = {"ip": self.ip, "port": self.port}
        if self.srtp is not None:
            end["srtpParameters"] = dict(self.srtp)
        return end

    @classmethod
    def from_dict(cls, data: Any) -> PipeEnd:
        if not isinstance(data, dict):
            raise PipeError("pipe end: an object")
        ip, port = data.get("ip"), data.get("port")
        if not isinstance(ip, str) or isinstance(port, bool) or not isinstance(port, int) \
                or not 1 <= port <= 65535:
            raise PipeError("pipe end: ip (string) and port (1..65535)")
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise PipeError("pipe end: ip must be an IP address") from None
        if address.is_unspecified or address.is_multicast:
            raise PipeError("pipe end: ip must be a unicast address")
        srtp = data.get("srtpParameters")
        if srtp is None:
            return cls(ip, port, None)
        suite, key, salt = parse_srtp_parameters(srtp)  # PlainTransportError if malformed
        return cls(ip, port, {"cryptoSuite": suite,
                              "keyBase64": base64.b64encode(key + salt).decode()})


class PipeTransport(PlainTransport):
    """A plain transport of a room for one pipe: SRTP (plain RTP only on loopback, by setting:
    ``plain_rtp_pipes``), remote fixed by ``connect_end``. ``on_closed`` callbacks run once
    when it closes (the other side closes its end)."""

    def __init__(self, transport_id: str, *, handle: int, media: MediaEngine, config: Config,
                 room_id: str = "") -> None:
        super().__init__(transport_id, PIPE_OWNER, handle=handle, media=media, config=config,
                         comedia=False, enable_srtp=not plain_rtp_pipes(config),
                         srtp_suite=PIPE_SRTP_SUITE, room_id=room_id)
        self.direction = "pipe"

    def local_end(self) -> PipeEnd:
        params = self.parameters()
        return PipeEnd(self.local_ip, self.local_port, params.get("srtpParameters"))

    def connect_end(self, end: PipeEnd) -> None:
        """Send to ``end`` (the other side's ``local_end``): an SRTP pipe needs its keys; a
        plain RTP pipe takes none, and only a loopback address."""
        if self.srtp_suite is not None and end.srtp is None:
            raise PipeError("pipe end: no srtpParameters (plain RTP pipes: pipe_plain_rtp on "
                            "both sides, loopback only)")
        if self.srtp_suite is None:
            if end.srtp is not None:
                raise PipeError("pipe end: SRTP offered to a plain RTP pipe (pipe_plain_rtp "
                                "must be the same on both sides)")
            if not _loopback(end.ip):
                raise PipeError("pipe end: plain RTP pipes only between loopback addresses")
        self.connect(ip=end.ip, port=end.port, srtp_parameters=end.srtp)


def _ssrc() -> int:
    return _SSRC_MIN + secrets.randbelow(_SSRC_MAX - _SSRC_MIN)


def pipe_offer(producer: Producer) -> tuple[dict[str, Any], list[tuple[int, int | None]]]:
    """What the far side's pipe producer declares for ``producer`` (its kind and
    rtpParameters: the router's codecs, RTX included, and header extensions; one encoding
    per producer encoding with fresh SSRCs), and the (SSRC, RTX SSRC) of each stream."""
    consumable = producer.consumable
    has_rtx = any(c["mimeType"].lower().endswith("/rtx") for c in consumable["codecs"])
    streams: list[tuple[int, int | None]] = [
        (_ssrc(), _ssrc() if has_rtx else None) for _ in consumable["encodings"]]
    encodings: list[dict[str, Any]] = []
    for (ssrc, rtx), enc in zip(streams, consumable["encodings"], strict=True):
        entry: dict[str, Any] = {"ssrc": ssrc}
        if rtx is not None:
            entry["rtx"] = {"ssrc": rtx}
        if enc.get("maxBitrate"):
            entry["maxBitrate"] = enc["maxBitrate"]
        encodings.append(entry)
    rtp = {
        "codecs": [dict(c) for c in consumable["codecs"]],
        "headerExtensions": [{"uri": e["uri"], "id": e["id"]}
                             for e in consumable["headerExtensions"]],
        "encodings": encodings,
        "rtcp": {"cname": consumable.get("rtcp", {}).get("cname") or "pipe"},
    }
    return {"producerId": producer.id, "kind": producer.kind, "rtpParameters": rtp,
            "paused": producer.paused}, streams


def pipe_consumer_spec(consumer: Consumer, streams: list[tuple[int, int | None]]
                       ) -> ConsumerSpec:
    """The engine's spec of a pipe consumer: router PTs as they are, every stream."""
    codecs = consumer.rtp_parameters["codecs"]
    media = [c for c in codecs if not c["mimeType"].lower().endswith("/rtx")]
    return {
        "ssrc": streams[0][0],
        "payload_types": {c["payloadType"]: c["payloadType"] for c in media},
        "rtx_payload_types": {c["parameters"]["apt"]: c["payloadType"] for c in codecs
                              if c["mimeType"].lower().endswith("/rtx")},
        "paused": False,
        "nack": True,
        "cname": consumer.rtp_parameters.get("rtcp", {}).get("cname"),
        "pipe_ssrcs": streams,
    }


@dataclass
class PipeLink:
    """Both sides of one piped producer (``pipe_to_router``)."""

    source: Room
    target: Room
    source_pipe: PipeTransport
    target_pipe: PipeTransport
    consumer: Consumer
    producer: Producer
    closed: bool = field(default=False)

    def close(self) -> None:
        """Tear the pipe down on both sides."""
        self.source.close_pipe(self.source_pipe)
        self.target.close_pipe(self.target_pipe)


def pipe_to_router(producer_id: str, source: Room, target: Room) -> PipeLink:
    """Pipe producer ``producer_id`` of room ``source`` into room ``target`` (another room of
    this server or of another server, e.g. another engine): a pipe transport in each, keys
    and addresses exchanged, a pipe consumer here and a pipe producer there. Closing either
    room or either pipe transport closes the other side too."""
    if source is target:
        raise PipeError("pipe_to_router: two different rooms")
    source_pipe = source.open_pipe()
    try:
        target_pipe = target.open_pipe()
    except BaseException:
        source.close_pipe(source_pipe)
        raise
    try:
        source_pipe.connect_end(target_pipe.local_end())
        target_pipe.connect_end(source_pipe.local_end())
        consumer, offer = source.pipe_consume(source_pipe, producer_id)
        producer = target.pipe_produce(target_pipe, offer)
    except BaseException:
        source.close_pipe(source_pipe)
        target.close_pipe(target_pipe)
        raise
    source_pipe.on_closed.append(lambda: target.close_pipe(target_pipe))
    target_pipe.on_closed.append(lambda: source.close_pipe(source_pipe))

    def follow(event: str) -> None:  # the origin paused, resumed or closed
        if event == "closed":
            target.close_pipe_producer(producer)
        else:
            target.set_pipe_producer_paused(producer, event == "paused")

    source.watch_producer(producer_id, follow)
    log_event(logger, "pipe.opened", source=source.id, target=target.id,
              producer=producer_id, piped_producer=producer.id,
              streams=len(offer["rtpParameters"]["encodings"]),
              srtp=source_pipe.srtp_suite is not None)
    return PipeLink(source, target, source_pipe, target_pipe, consumer, producer)
