"""``getStats`` answers: the engine's per-stream counters in mediasoup's stats shapes.

Transport: one ``webrtc-transport`` record. Producer: one ``inbound-rtp`` record per
encoding. Consumer: its ``outbound-rtp`` record followed by the ``inbound-rtp`` records of
the producer stream it follows (as mediasoup's ``consumer.getStats()``). Counters:
packetCount, byteCount, packetsLost, fractionLost (0..1), jitter (RTP timestamp units),
nackCount / nackPacketCount (NACK messages / sequence numbers), pliCount, firCount,
packetsRetransmitted, packetsRepaired, roundTripTime (ms, only once measured), bitrate
(bit/s over the last report interval), layer (encoding index).

One vocabulary: everything here is the engine's ``rtp_stats`` record (mediasoup's camelCase
names) plus what the control plane knows (ids, ICE/DTLS state, codec), in the same names;
the engine's record types become mediasoup's (``_TYPES``). Each function returns None when the
engine no longer has the object (it is closing).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pysfu.ice import protocol_of

if TYPE_CHECKING:
    from pysfu.media import MediaEngine
    from pysfu.plain import PlainTransport
    from pysfu.transport import Consumer, Producer, WebRtcTransport


# The engine's record types -> mediasoup's (inbound-rtp / outbound-rtp are already the same).
_TYPES = {"transport": "webrtc-transport"}

Records = list[dict[str, Any]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _codec(rtp_parameters: dict[str, Any]) -> str:
    codecs = rtp_parameters.get("codecs") or [{}]
    return str(codecs[0].get("mimeType", ""))


def transport_stats(media: MediaEngine, transport: WebRtcTransport) -> Records | None:
    records = media.rtp_stats(transport.handle)
    if records is None:
        return None
    (record,) = records
    tuple_ = transport.selected_tuple()
    return [{
        **record,
        "type": _TYPES.get(record.get("type", ""), record.get("type")),
        "transportId": transport.id,
        "timestamp": _now_ms(),
        "iceRole": "controlled",
        "iceState": transport.ice.state,
        "iceSelectedTuple": (
            {"remoteIp": tuple_[0], "remotePort": tuple_[1], "protocol": protocol_of(tuple_)}
            if tuple_ is not None else None
        ),
        "dtlsState": transport.dtls.state if transport.dtls is not None else "new",
    }]


def plain_transport_stats(media: MediaEngine, transport: PlainTransport) -> Records | None:
    """mediasoup's ``plain-rtp-transport`` record: counters, the local and remote tuples,
    comedia, and what came from another source (dropped)."""
    records = media.rtp_stats(transport.handle)
    state = media.stats(transport.handle)
    if records is None or state is None:
        return None
    (record,) = records
    remote = str(state.get("selectedTuple") or "")
    ip, _, port = remote.rpartition(":")
    return [{
        **record,
        "type": "plain-rtp-transport",
        "transportId": transport.id,
        "timestamp": _now_ms(),
        "comedia": transport.comedia,
        "rtcpMux": transport.rtcp_mux,
        "tuple": {"localIp": transport.announced_ip, "localPort": transport.local_port,
                  "remoteIp": ip.strip("[]") or None, "remotePort": int(port) if port else None,
                  "protocol": "udp"},
        "wrongSourceDropped": state.get("wrongSourceDropped", 0),
        **_rtcp_tuple(transport, state),
    }]


def _rtcp_tuple(transport: PlainTransport, state: dict[str, Any]) -> dict[str, Any]:
    """A plain transport without rtcp-mux: its RTCP tuple (mediasoup's ``rtcpTuple``) and
    what came to the wrong port."""
    if transport.local_rtcp_port is None:
        return {}
    ip, _, port = str(state.get("rtcpTuple") or "").rpartition(":")
    return {
        "rtcpTuple": {"localIp": transport.announced_ip, "localPort": transport.local_rtcp_port,
                      "remoteIp": ip.strip("[]") or None,
                      "remotePort": int(port) if port else None, "protocol": "udp"},
        "rtpOnRtcpPortDropped": state.get("rtpOnRtcpPortDropped", 0),
        "rtcpOnRtpPortDropped": state.get("rtcpOnRtpPortDropped", 0),
    }


def producer_stats(media: MediaEngine, producer: Producer) -> Records | None:
    records = media.rtp_stats(producer.handle)
    if records is None:
        return None
    mime = _codec(producer.rtp_parameters)
    return [{**r, "timestamp": _now_ms(), "kind": producer.kind, "mimeType": mime}
            for r in records]


def consumer_stats(media: MediaEngine, consumer: Consumer) -> Records | None:
    records = media.rtp_stats(consumer.handle)
    if records is None:
        return None
    (record,) = records
    out = [{**record, "timestamp": _now_ms(), "kind": consumer.kind,
            "mimeType": _codec(consumer.rtp_parameters)}]
    layer = record.get("layer", 0)
    out += [r for r in producer_stats(media, consumer.producer) or []
            if r.get("layer") == layer]
    return out
