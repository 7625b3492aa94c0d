"""Signaling requests of plain transports (RTP in/out without ICE/DTLS: ffmpeg, GStreamer,
recorders), host only, on the joined room's own objects:

- ``createPlainTransport {roomId, comedia?, rtcpMux? (true), enableSrtp?, srtpCryptoSuite?}``
  -> ``plainTransportCreated {transportId, tuple: {localIp, localPort, protocol},
  rtcpTuple? (rtcpMux false: the RTCP port, RTP port + 1 where the range allows),
  rtcpMux, comedia, srtpParameters?}``
- ``connectPlainTransport {roomId, transportId, ip?, port?, rtcpPort?, srtpParameters?}``
  -> ``plainTransportConnected {transportId}`` (``rtcpPort``: required with rtcpMux false
  unless comedia, refused with rtcpMux true, as mediasoup)
- ``closePlainTransport {roomId, transportId}`` -> ``plainTransportClosed {transportId}``
  (its producers and consumers go with it; its port is free again)
- ``requestKeyFrame {roomId, consumerId}`` -> ``keyFrameRequested {consumerId}``

``produce`` and ``consume`` take a plain transport's id like a WebRTC transport's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from pysfu import errors
from pysfu.errors import SignalingError
from pysfu.plain import (
    DEFAULT_SRTP_SUITE,
    MAX_PLAIN_TRANSPORTS_PER_ADDRESS,
    SRTP_SUITES,
    PlainTransportError,
    is_srtp_suite,
)
from pysfu.room import Forbidden, LimitExceeded
from pysfu.signaling.schema import get_str

if TYPE_CHECKING:
    from pysfu.context import ServerContext
    from pysfu.room import Peer, Room

Answer = tuple[str, dict[str, Any]]  # (event, data) of a request's answer


class Session(Protocol):
    """What these requests need of the connection (``pysfu.signaling.session.Session``)."""

    address: str
    ctx: ServerContext

    def _joined(self, data: dict[str, Any]) -> tuple[Room, Peer]: ...


def _bool(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise SignalingError(errors.INVALID_FIELD, f"{name}: must be a boolean")
    return value


def _port(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SignalingError(errors.INVALID_FIELD, f"{name}: must be a port number 1..65535")
    return value


def _ip(data: dict[str, Any]) -> str | None:
    value = data.get("ip")
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        raise SignalingError(errors.INVALID_FIELD, "ip: must be an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise SignalingError(errors.INVALID_FIELD, "ip: must be a unicast address")
    return str(ip)


def plain_handlers(session: Session) -> dict[str, Callable[[dict[str, Any]], Awaitable[Answer]]]:
    """The plain transport requests of one connection (added to its handler table)."""

    async def create(data: dict[str, Any]) -> Answer:
        room, peer = session._joined(data)
        if peer.role != "host":
            raise Forbidden("only the host may create a plain transport")
        comedia = _bool(data, "comedia", False)
        rtcp_mux = _bool(data, "rtcpMux", True)
        enable_srtp = _bool(data, "enableSrtp", False)
        suite = data.get("srtpCryptoSuite", DEFAULT_SRTP_SUITE)
        if not is_srtp_suite(suite):
            raise SignalingError(errors.INVALID_FIELD,
                                 f"srtpCryptoSuite: one of {', '.join(SRTP_SUITES)}")
        # One address holds at most MAX_PLAIN_TRANSPORTS_PER_ADDRESS transports (ports of the
        # range: twice as many if none is rtcp-mux).
        limits, end = session.ctx.limits, None
        if limits is not None:
            end = limits.open_plain_transport(session.address, trio.current_time(),
                                              MAX_PLAIN_TRANSPORTS_PER_ADDRESS)
            if end is None:
                raise LimitExceeded("too many plain transports for this address")
        try:
            transport = room.create_plain_transport(peer, comedia=comedia,
                                                    enable_srtp=enable_srtp, srtp_suite=suite,
                                                    rtcp_mux=rtcp_mux)
        except BaseException:
            if end is not None:
                end()
            raise
        if end is not None:
            transport.on_closed.append(end)
        return "plainTransportCreated", transport.parameters()

    async def connect(data: dict[str, Any]) -> Answer:
        room, peer = session._joined(data)
        transport = room.owned_plain_transport(peer, get_str(data, "transportId"))
        try:
            transport.connect(ip=_ip(data), port=_port(data, "port"),
                              rtcp_port=_port(data, "rtcpPort"),
                              srtp_parameters=data.get("srtpParameters"))
        except PlainTransportError as exc:
            code = errors.ALREADY_CONNECTED if "already" in str(exc) else errors.INVALID_FIELD
            raise SignalingError(code, str(exc)) from None
        return "plainTransportConnected", {"transportId": transport.id}

    async def close(data: dict[str, Any]) -> Answer:
        room, peer = session._joined(data)
        transport_id = get_str(data, "transportId")
        room.close_plain_transport(peer, transport_id)
        return "plainTransportClosed", {"transportId": transport_id}

    async def key_frame(data: dict[str, Any]) -> Answer:
        room, peer = session._joined(data)
        consumer = room.request_key_frame(peer, get_str(data, "consumerId"))
        return "keyFrameRequested", {"consumerId": consumer.id}

    return {
        "createPlainTransport": create,
        "connectPlainTransport": connect,
        "closePlainTransport": close,
        "requestKeyFrame": key_frame,
    }
