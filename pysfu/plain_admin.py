"""The admin API's plain transport requests (an operator records a room or relays it out
without being its host): under ``/admin/rooms/{roomId}/plain``, POST, parameters in the
query string, answers as the signaling protocol's.

- ``POST .../plain?comedia=&rtcpMux=&enableSrtp=&srtpCryptoSuite=`` -> the
  ``plainTransportCreated`` payload (owned by the operator; counted in the room's plain
  transport limit; ``rtcpMux=false``: a second port for RTCP, ``rtcpTuple``).
- ``POST .../plain/{transportId}/connect?ip=&port=&rtcpPort=`` -> ``{transportId}``
  (``rtcpPort``: required with ``rtcpMux=false``, refused otherwise)
- ``POST .../plain/{transportId}/consume?producerId=`` -> ``{consumer: {id, producerId,
  kind, rtpParameters}, sdp}``: the SDP file ffmpeg/GStreamer read (``consumer_sdp``), for a
  connected transport. The consumer starts paused.
- ``POST .../plain/{transportId}/close`` -> ``{transportId}``
- ``POST .../plain/consumers/{consumerId}/resume`` | ``/keyframe`` -> ``{consumerId}``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pysfu import errors
from pysfu.plain import (
    DEFAULT_SRTP_SUITE,
    SRTP_SUITES,
    PlainTransportError,
    consumer_sdp,
    is_srtp_suite,
)

if TYPE_CHECKING:
    from pysfu.room import Room

Answer = tuple[int, dict[str, Any]]

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _error(status: int, code: str, message: str) -> Answer:
    return status, {"error": {"code": code, "message": message}}


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise PlainTransportError("port/rtcpPort: a port number 1..65535")
    return int(value)


def admin_plain(room: Room, rest: list[str], query: dict[str, str]) -> Answer:
    """One admin plain transport request (``rest``: the path after ``plain``); RoomError
    propagates to the caller's mapping."""
    try:
        return _admin_plain(room, rest, query)
    except PlainTransportError as exc:
        return _error(409 if "already" in str(exc) else 400,
                      errors.ALREADY_CONNECTED if "already" in str(exc) else errors.INVALID_FIELD,
                      str(exc))


def _admin_plain(room: Room, rest: list[str], query: dict[str, str]) -> Answer:
    if not rest:
        suite = query.get("srtpCryptoSuite", DEFAULT_SRTP_SUITE)
        if not is_srtp_suite(suite):
            raise PlainTransportError(f"srtpCryptoSuite: one of {', '.join(SRTP_SUITES)}")
        transport = room.create_plain_transport(
            None, comedia=query.get("comedia", "").lower() in _TRUE,
            enable_srtp=query.get("enableSrtp", "").lower() in _TRUE, srtp_suite=suite,
            rtcp_mux=query.get("rtcpMux", "").lower() not in _FALSE)
        return 200, transport.parameters()
    if len(rest) == 3 and rest[0] == "consumers" and rest[2] in ("resume", "keyframe"):
        consumer = room.admin_consumer(rest[1])
        if rest[2] == "resume":
            if consumer.paused:
                consumer.paused = False
                consumer.transport.set_consumer_paused(consumer, False)
        else:
            room.ctx.media.request_key_frame(consumer.handle)
        return 200, {"consumerId": consumer.id}
    if len(rest) != 2:
        return _error(404, errors.UNKNOWN_EVENT, "no such admin request (or method)")
    transport = room.owned_plain_transport(None, rest[0])
    if rest[1] == "connect":
        transport.connect(ip=query.get("ip"), port=_port(query.get("port")),
                          rtcp_port=_port(query.get("rtcpPort")))
        return 200, {"transportId": transport.id}
    if rest[1] == "close":
        room.close_plain_transport(None, transport.id)
        return 200, {"transportId": transport.id}
    if rest[1] == "consume":
        producer_id = query.get("producerId")
        if not producer_id:
            raise PlainTransportError("producerId: required")
        consumer = room.admin_consume(transport, producer_id)
        answer: dict[str, Any] = {"consumer": {
            "id": consumer.id, "producerId": consumer.producer.id, "kind": consumer.kind,
            "rtpParameters": consumer.rtp_parameters}}
        if transport.remote is not None:
            srtp = transport.parameters().get("srtpParameters")
            answer["sdp"] = consumer_sdp(
                [{"kind": consumer.kind, "rtpParameters": consumer.rtp_parameters}],
                ip=transport.remote[0], port=transport.remote[1], srtp_parameters=srtp,
                rtcp_port=transport.remote_rtcp_port)
        return 200, answer
    return _error(404, errors.UNKNOWN_EVENT, "no such admin request (or method)")
