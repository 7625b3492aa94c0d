"""``getStats`` answers: the engine's per-stream counters in mediasoup's stats shapes.

Transport: one ``webrtc-transport`` record. Producer: one ``inbound-rtp`` record per
encoding. Consumer: its ``outbound-rtp`` record followed by the ``inbound-rtp`` records of
the producer stream it follows (as mediasoup's ``consumer.getStats()``). Counters:
packetCount, byteCount, packetsLost, fractionLost (0..1), jitter (RTP timestamp units),
nackCount / nackPacketCount (NACK messages / sequence numbers), pliCount, firCount,
packetsRetransmitted, packetsRepaired, roundTripTime (ms, only once measured), bitrate
(bit/s over the last report interval), layer (encoding index).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pysfu.media import MediaEngine
    from pysfu.transport import Consumer, Producer, WebRtcTransport


def _now_ms() -> int:
    return int(time.time() * 1000)


def _codec(rtp_parameters: dict[str, Any]) -> str:
    codecs = rtp_parameters.get("codecs") or [{}]
    return str(codecs[0].get("mimeType", ""))


def transport_stats(media: MediaEngine, transport: WebRtcTransport) -> list[dict[str, Any]]:
    (record,) = media.rtp_stats(transport.handle)
    record.pop("type", None)
    tuple_ = transport.ice.selected_tuple
    return [{
        "type": "webrtc-transport",
        "transportId": transport.id,
        "timestamp": _now_ms(),
        "iceRole": "controlled",
        "iceState": transport.ice.state,
        "iceSelectedTuple": (
            {"remoteIp": tuple_[0], "remotePort": tuple_[1], "protocol": "udp"}
            if tuple_ is not None else None
        ),
        "dtlsState": transport.dtls.state if transport.dtls is not None else "new",
        **record,
    }]


def producer_stats(media: MediaEngine, producer: Producer) -> list[dict[str, Any]]:
    records = media.rtp_stats(producer.handle)
    mime = _codec(producer.rtp_parameters)
    return [{**r, "timestamp": _now_ms(), "kind": producer.kind, "mimeType": mime}
            for r in records]


def consumer_stats(media: MediaEngine, consumer: Consumer) -> list[dict[str, Any]]:
    (record,) = media.rtp_stats(consumer.handle)
    out = [{**record, "timestamp": _now_ms(), "kind": consumer.kind,
            "mimeType": _codec(consumer.rtp_parameters)}]
    layer = record.get("layer", 0)
    out += [r for r in producer_stats(media, consumer.producer) if r.get("layer") == layer]
    return out
