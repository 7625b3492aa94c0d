"""Data channels: data producers and data consumers (mediasoup's DataProducer / DataConsumer),
their SCTP parameters, and the per-producer limits.

Where each step runs (see README "Data channels"):
  browser -> UDP -> engine (demultiplexed as DTLS, handed up) -> Python: DTLS record
  decryption (pyOpenSSL, ``pysfu.dtls``) -> native SCTP association (``sctp-proto`` in
  ``native/src/sctp.rs``: reassembly, acknowledgements, DCEP) -> the room: limits, the data
  producer's consumers -> ONE native call (``sctp_fanout``) writes the message into every
  consumer's association, each of which seals its packets as DTLS records
  (``native/src/dtls_seal.rs``, AEAD suites, once the peer's handshake is over) -> ONE engine
  call (``Engine.send_many``, sendmmsg) for every datagram.

A message therefore costs one native call for SCTP and record protection and one for
sending, whatever the number of consumers; only sessions with a non-AEAD suite are still
protected in Python (pyOpenSSL, one call per packet per consumer). ``bench/data_fanout.py``
measures both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pysfu import errors
from pysfu.errors import SignalingError
from pysfu.limits import TokenBucket

if TYPE_CHECKING:
    from pysfu._native import SctpAssociation
    from pysfu.config import Config

SCTP_PORT = 5000
NUM_STREAMS = 1024  # OS and MIS we announce; stream ids are 0..NUM_STREAMS-1
MAX_MESSAGE_SIZE = 262_144
MAX_LABEL = 256  # characters of a label or protocol
PPID_STRING, PPID_BINARY, PPID_STRING_EMPTY, PPID_BINARY_EMPTY = 51, 53, 56, 57


class DataTransport(Protocol):
    """What data producers and consumers need of their transport (pysfu.transport's
    WebRtcTransport; a protocol here so that this module stays below it)."""

    id: str
    sctp: SctpAssociation | None

    def protect_data(self, packets: list[bytes]) -> list[tuple[int, str, int, bytes, str]]: ...

    def release_stream(self, stream: int) -> None: ...


def sctp_parameters() -> dict[str, Any]:
    """``sctpParameters`` of a transport with data channels: mediasoup 3.14 names and the
    newer ones (maxSendMessageSize / maxReceiveMessageSize), both."""
    return {"port": SCTP_PORT, "OS": NUM_STREAMS, "MIS": NUM_STREAMS,
            "maxMessageSize": MAX_MESSAGE_SIZE, "maxSendMessageSize": MAX_MESSAGE_SIZE,
            "maxReceiveMessageSize": MAX_MESSAGE_SIZE}


def _invalid(name: str, why: str) -> SignalingError:
    return SignalingError(errors.INVALID_FIELD, f"{name}: {why}")


def _small_int(value: Any, name: str, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise _invalid(name, f"integer 0..{top}")
    return value


def parse_sctp_capabilities(value: Any) -> bool:
    """``sctpCapabilities`` of createTransport (``{numStreams: {OS, MIS}}``); None or absent
    means no data channels on that transport."""
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("numStreams"), dict):
        raise _invalid("sctpCapabilities", "must be {numStreams: {OS, MIS}}")
    for key in ("OS", "MIS"):
        if key in value["numStreams"]:
            n = _small_int(value["numStreams"][key], f"sctpCapabilities.numStreams.{key}", 65535)
            if n < 1:
                raise _invalid(f"sctpCapabilities.numStreams.{key}", "must be >= 1")
    return True


@dataclass(frozen=True)
class StreamParameters:
    stream_id: int
    ordered: bool
    max_packet_life_time: int | None = None
    max_retransmits: int | None = None

    def to_dict(self, stream_id: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"streamId": self.stream_id if stream_id is None else stream_id,
                               "ordered": self.ordered}
        if self.max_packet_life_time is not None:
            out["maxPacketLifeTime"] = self.max_packet_life_time
        if self.max_retransmits is not None:
            out["maxRetransmits"] = self.max_retransmits
        return out


def parse_stream_parameters(value: Any) -> StreamParameters:
    """``sctpStreamParameters`` of produceData (mediasoup's rules: at most one of
    maxPacketLifeTime / maxRetransmits; ordered defaults to true without them)."""
    name = "sctpStreamParameters"
    if not isinstance(value, dict):
        raise _invalid(name, "required object")
    stream_id = _small_int(value.get("streamId"), f"{name}.streamId", NUM_STREAMS - 1)
    lifetime = value.get("maxPacketLifeTime")
    rexmit = value.get("maxRetransmits")
    if lifetime is not None:
        lifetime = _small_int(lifetime, f"{name}.maxPacketLifeTime", 65535)
    if rexmit is not None:
        rexmit = _small_int(rexmit, f"{name}.maxRetransmits", 65535)
    if lifetime is not None and rexmit is not None:
        raise _invalid(name, "maxPacketLifeTime and maxRetransmits are exclusive")
    ordered = value.get("ordered")
    if ordered is None:
        ordered = lifetime is None and rexmit is None
    if not isinstance(ordered, bool):
        raise _invalid(f"{name}.ordered", "boolean")
    if ordered and (lifetime is not None or rexmit is not None):
        raise _invalid(name, "an ordered stream cannot have partial reliability")
    return StreamParameters(stream_id, ordered, lifetime, rexmit)


def parse_label(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > MAX_LABEL:
        raise _invalid(name, f"string of at most {MAX_LABEL} characters")
    return value


class DataLimits:
    """One data producer's budget: messages/s and bytes/s (token buckets with a burst) and
    a message size. Sans-IO: time passed in."""

    def __init__(self, config: Config, now: float) -> None:
        self.max_size = config.max_data_message_size
        self.messages = TokenBucket(config.data_messages_per_second, config.data_message_burst,
                                    now)
        self.bytes_per_second = config.data_bytes_per_second
        self.bytes_burst = float(config.data_bytes_burst)
        self.byte_tokens = self.bytes_burst
        self.stamp = now

    def check(self, size: int, now: float) -> str | None:
        """None if the message may go (and it is charged), else why not."""
        if size > self.max_size:
            return "message_size"
        refill = max(0.0, now - self.stamp) * self.bytes_per_second
        self.byte_tokens = min(self.bytes_burst, self.byte_tokens + refill)
        self.stamp = now
        if self.byte_tokens < size:
            return "bytes_per_second"
        if not self.messages.take(now):
            return "messages_per_second"
        self.byte_tokens -= size
        return None


@dataclass(eq=False)
class DataProducer:
    id: str
    owner: str
    transport: DataTransport
    stream: StreamParameters
    label: str
    protocol: str
    limits: DataLimits
    owner_name: str = ""  # the owner's display name when it produced (Peer.display_name)
    consumers: dict[str, DataConsumer] = field(default_factory=dict)
    messages: int = 0  # relayed
    dropped: dict[str, int] = field(default_factory=dict)  # over a limit, by reason
    told: bool = False  # the owner was told it went over a limit (once)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "peerId": self.owner, "displayName": self.owner_name,
                "label": self.label, "protocol": self.protocol}


@dataclass(eq=False)
class DataConsumer:
    id: str
    owner: str
    transport: DataTransport
    producer: DataProducer
    stream_id: int
    dropped: int = 0  # messages its association refused (buffer full, not connected)

    def answer(self) -> dict[str, Any]:
        """The dataConsumed payload (mediasoup-client consumeData options)."""
        p = self.producer
        return {"id": self.id, "dataProducerId": p.id,
                "sctpStreamParameters": p.stream.to_dict(self.stream_id),
                "label": p.label, "protocol": p.protocol, "peerId": p.owner,
                "displayName": p.owner_name}
