"""Plain transports (mediasoup's PlainTransport): RTP/RTCP without ICE or DTLS, for ffmpeg,
GStreamer, an RTSP camera relay or a recorder. And the helpers a user would otherwise write
by hand: the SDP file ffmpeg/GStreamer read to receive a consumer (``consumer_sdp``), the
``rtpParameters`` of a plain producer (``plain_producer_parameters``), the ffmpeg command
line that sends a file or a test pattern into plain transports (``ffmpeg_send_command``)
and the GStreamer one (``gst_send_command``).

A plain transport has a UDP socket of its own in the engine (a port of
``plain_port_range``): plain RTP carries no ICE username to tell transports apart on the
shared media port. Its remote address is fixed by ``connect`` or, with ``comedia``, learnt
from the first valid packet and never moved afterwards; datagrams from anywhere else are
dropped and counted (``plain_wrong_source``). SRTP is optional: with ``enableSrtp`` we
generate our key (``srtpParameters`` of the answer) and the remote gives its own with
``connectPlainTransport``.

RTCP goes on the RTP port (rtcp-mux) unless the transport is made with ``rtcpMux: false``
(mediasoup's option): it then has a second port for RTCP (``rtcpTuple``), the RTP port + 1
where the range allows (what ffmpeg's ``rtp://`` output and RFC 3550 assume); the remote
RTCP port comes with ``connectPlainTransport {rtcpPort}`` or, comedia, from the first valid
RTCP packet on that port. RTP on the RTCP port, and RTCP on the RTP port from the remote
RTP address, are dropped and counted (``plain_wrong_port``); RTCP on the RTP port from the
remote RTCP address is taken, as mediasoup does.
"""

from __future__ import annotations

import base64
import logging
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from pysfu.dtls import SrtpKeys
from pysfu.log import log_event
from pysfu.transport import MediaTransport

if TYPE_CHECKING:
    from pysfu._native import Removed
    from pysfu.config import Config
    from pysfu.media import MediaEngine

logger = logging.getLogger("pysfu.plain")

# Limits (signaling): plain transports one host may hold, and one room.
MAX_PLAIN_TRANSPORTS_PER_PEER = 4
MAX_PLAIN_TRANSPORTS_PER_ROOM = 8
# ... and one client address, over all its rooms (the plain port range is shared).
MAX_PLAIN_TRANSPORTS_PER_ADDRESS = 16
# The operator (admin API) owns the plain transports and consumers it opens (no peer); "#"
# is outside the peer id alphabet, so no peer can ever be this owner.
ADMIN_OWNER = "#admin"
MAX_ADMIN_CONSUMERS_PER_ROOM = 16

# SRTP suites of plain transports (mediasoup's names) -> (key bytes, salt bytes).
SRTP_SUITES: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14),
    "AEAD_AES_128_GCM": (16, 12),
    "AEAD_AES_256_GCM": (32, 12),
}
DEFAULT_SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"


class PlainTransportError(ValueError):
    """Bad plain transport parameters (the message says which)."""


class AlreadyConnectedPlain(PlainTransportError):
    """connectPlainTransport was called twice."""


def _srtp_key(suite: str, key_base64: Any) -> tuple[bytes, bytes]:
    """(key, salt) of mediasoup's ``keyBase64`` for ``suite``."""
    if not isinstance(key_base64, str) or len(key_base64) > 128:
        raise PlainTransportError("srtpParameters.keyBase64 must be a base64 string")
    try:
        raw = base64.b64decode(key_base64, validate=True)
    except ValueError:
        raise PlainTransportError("srtpParameters.keyBase64 is not base64") from None
    key_len, salt_len = SRTP_SUITES[suite]
    if len(raw) != key_len + salt_len:
        raise PlainTransportError(
            f"srtpParameters.keyBase64 must hold {key_len + salt_len} bytes for {suite}")
    return raw[:key_len], raw[key_len:]


def is_srtp_suite(value: object) -> TypeGuard[str]:
    """Whether ``value`` (from a peer: any JSON) names one of ``SRTP_SUITES``."""
    return isinstance(value, str) and value in SRTP_SUITES


def parse_srtp_parameters(value: Any) -> tuple[str, bytes, bytes]:
    """mediasoup's SrtpParameters {cryptoSuite, keyBase64} -> (suite, key, salt)."""
    if not isinstance(value, dict):
        raise PlainTransportError("srtpParameters must be an object")
    suite = value.get("cryptoSuite")
    if not is_srtp_suite(suite):
        raise PlainTransportError(f"srtpParameters.cryptoSuite must be one of "
                                  f"{', '.join(SRTP_SUITES)}")
    key, salt = _srtp_key(suite, value.get("keyBase64"))
    return suite, key, salt


class PlainTransport(MediaTransport):
    """One plain transport: a socket in the engine, a remote end set by ``connect`` (or the
    first packet, comedia), optional SRTP. Producers and consumers live on it as on a
    WebRTC transport."""

    def __init__(self, transport_id: str, owner: str, *, handle: int, media: MediaEngine,
                 config: Config, comedia: bool = False, enable_srtp: bool = False,
                 srtp_suite: str = DEFAULT_SRTP_SUITE, room_id: str = "",
                 rtcp_mux: bool = True) -> None:
        super().__init__(transport_id, owner, "plain", handle=handle, media=media,
                         room_id=room_id)
        if not is_srtp_suite(srtp_suite):
            raise PlainTransportError(f"srtpCryptoSuite must be one of {', '.join(SRTP_SUITES)}")
        self.comedia = comedia
        self.rtcp_mux = rtcp_mux
        self.local_ip = config.rtc_ip
        self.announced_ip = config.candidate_ip
        self._ports = config.plain_ports
        self.local_port = 0
        self.local_rtcp_port: int | None = None
        self.srtp_suite = srtp_suite if enable_srtp else None
        self._local_key = b""
        if enable_srtp:
            key_len, salt_len = SRTP_SUITES[srtp_suite]
            self._local_key = secrets.token_bytes(key_len + salt_len)
        self.connected = False
        self.remote: tuple[str, int] | None = None
        self.remote_rtcp_port: int | None = None
        self._registered = False
        # Called once when it closes (limits freed, a pipe's other side closed).
        self.on_closed: list[Callable[[], None]] = []

    @property
    def can_produce(self) -> bool:
        return True

    @property
    def can_consume(self) -> bool:
        return True

    def open(self) -> None:
        """Bind its socket(s) in the engine (OSError/ValueError if no port is free)."""
        self.local_port, self.local_rtcp_port = self._media.add_plain_transport(
            self.handle, self.local_ip, self._ports, comedia=self.comedia,
            srtp=self.srtp_suite is not None, sink=self, rtcp_mux=self.rtcp_mux)
        self._registered = True

    def parameters(self) -> dict[str, Any]:
        """The plainTransportCreated payload (mediasoup PlainTransport data shape)."""
        answer: dict[str, Any] = {
            "transportId": self.id,
            "id": self.id,
            "tuple": {"localIp": self.announced_ip, "localPort": self.local_port,
                      "protocol": "udp"},
            "rtcpMux": self.rtcp_mux,
            "comedia": self.comedia,
        }
        if self.local_rtcp_port is not None:
            answer["rtcpTuple"] = {"localIp": self.announced_ip,
                                   "localPort": self.local_rtcp_port, "protocol": "udp"}
        if self.srtp_suite is not None:
            answer["srtpParameters"] = {
                "cryptoSuite": self.srtp_suite,
                "keyBase64": base64.b64encode(self._local_key).decode(),
            }
        return answer

    def connect(self, *, ip: str | None, port: int | None,
                srtp_parameters: Any = None, rtcp_port: int | None = None) -> None:
        """The remote end: its address (required unless comedia, refused with comedia), its
        RTCP port (mediasoup's rules: required without rtcp-mux unless comedia, refused with
        rtcp-mux) and, for an SRTP transport, its key (mediasoup's SrtpParameters, same suite
        as ours)."""
        if self.connected:
            raise AlreadyConnectedPlain("plain transport already connected")
        if self.comedia and (ip is not None or port is not None or rtcp_port is not None):
            raise PlainTransportError(
                "a comedia transport learns ip/port/rtcpPort from the first packets")
        if not self.comedia and (ip is None or port is None):
            raise PlainTransportError("ip and port are required (comedia is off)")
        if self.rtcp_mux and rtcp_port is not None:
            raise PlainTransportError("rtcpPort: cannot be set with rtcpMux enabled")
        if not self.rtcp_mux and not self.comedia and rtcp_port is None:
            raise PlainTransportError("rtcpPort: required with rtcpMux disabled")
        keys: SrtpKeys | None = None
        if self.srtp_suite is not None:
            if srtp_parameters is None:
                raise PlainTransportError("srtpParameters are required (enableSrtp)")
            suite, key, salt = parse_srtp_parameters(srtp_parameters)
            if suite != self.srtp_suite:
                raise PlainTransportError(f"srtpParameters.cryptoSuite must be {self.srtp_suite}")
            local_len = SRTP_SUITES[suite][0]
            keys = SrtpKeys(profile=suite, local_key=self._local_key[:local_len],
                            local_salt=self._local_key[local_len:], remote_key=key,
                            remote_salt=salt)
        elif srtp_parameters is not None:
            raise PlainTransportError("srtpParameters given but SRTP is off (enableSrtp)")
        remote = (ip, port) if ip is not None and port is not None else None
        self._media.connect_plain(self.handle, remote, keys, rtcp_port)
        self.connected = True
        self.remote = remote
        self.remote_rtcp_port = rtcp_port
        log_event(logger, "plain_transport.connected", room=self.room_id, peer=self.owner,
                  transport=self.id, remote=f"{ip}:{port}" if remote else "comedia",
                  rtcp_port=rtcp_port, srtp=self.srtp_suite is not None)

    def deliver(self, kind: str, ip: str, port: int, data: bytes, protocol: str = "udp") -> None:
        """Upcalls: none carry data for a plain transport (only "first media" notes)."""

    def close(self) -> Removed:
        """Close it: the engine removes it with its producers and consumers and closes its
        socket (the port is free again)."""
        removed: Removed = {"producers": [], "consumers": []}
        if not self.closed:
            self.closed = True
            if self._registered:
                self._registered = False
                gone = self._media.remove_transport(self.handle)
                if gone is not None:
                    removed = gone
            callbacks, self.on_closed = self.on_closed, []
            for callback in callbacks:
                callback()
        return removed


# ---- helpers: SDP for receivers, parameters and command lines for senders ---------------------


def consumer_sdp(consumers: list[dict[str, Any]], *, ip: str, port: int | None = None,
                 srtp_parameters: dict[str, Any] | None = None,
                 rtcp_port: int | None = None) -> str:
    """The SDP file ffmpeg (``-protocol_whitelist file,udp,rtp -i x.sdp``) or GStreamer
    (``sdpdemux``) reads to receive consumers of a plain transport connected to ``ip`` /
    port. ``consumers``: the ``consume`` answers ({kind, rtpParameters}), one port each
    (``port`` for all when there is one, else each entry's ``port``). ``srtp_parameters``:
    the plain transport's own (``plainTransportCreated``), for an SRTP transport.
    ``rtcp_port`` (or each entry's ``rtcpPort``): the transport was made with ``rtcpMux:
    false`` and connected with this ``rtcpPort``: ``a=rtcp:<port>`` (RFC 3605) instead of
    ``a=rtcp-mux`` (ffmpeg ignores both and takes RTCP on port + 1: connect with that)."""
    family = "IP6" if ":" in ip else "IP4"
    lines = ["v=0", f"o=- 0 0 IN {family} {ip}", "s=pysfu", f"c=IN {family} {ip}", "t=0 0"]
    for entry in consumers:
        rtp = entry["rtpParameters"]
        media_port = entry.get("port", port)
        if media_port is None:
            raise ValueError("consumer_sdp: a port for each consumer (port=, or entry['port'])")
        codecs = [c for c in rtp["codecs"] if not c["mimeType"].lower().endswith("/rtx")]
        if not codecs:
            raise ValueError("consumer_sdp: a consumer without a media codec")
        proto = "RTP/SAVP" if srtp_parameters else "RTP/AVP"
        pts = " ".join(str(c["payloadType"]) for c in codecs)
        lines.append(f"m={entry['kind']} {media_port} {proto} {pts}")
        entry_rtcp = entry.get("rtcpPort", rtcp_port)
        lines.append(f"a=rtcp:{entry_rtcp}" if entry_rtcp is not None else "a=rtcp-mux")
        for c in codecs:
            name = c["mimeType"].split("/", 1)[1]
            rate = f"{name}/{c['clockRate']}"
            if c.get("channels", 1) > 1:
                rate += f"/{c['channels']}"
            lines.append(f"a=rtpmap:{c['payloadType']} {rate}")
            params = c.get("parameters") or {}
            if params:
                fmtp = ";".join(f"{k}={v}" for k, v in params.items())
                lines.append(f"a=fmtp:{c['payloadType']} {fmtp}")
        ssrc = (rtp.get("encodings") or [{}])[0].get("ssrc")
        if ssrc is not None:
            cname = (rtp.get("rtcp") or {}).get("cname") or "pysfu"
            lines.append(f"a=ssrc:{ssrc} cname:{cname}")
        if srtp_parameters:
            lines.append(f"a=crypto:1 {srtp_parameters['cryptoSuite']} "
                         f"inline:{srtp_parameters['keyBase64']}")
        lines.append("a=recvonly")
    return "\r\n".join(lines) + "\r\n"


def plain_producer_parameters(kind: str, *, payload_type: int, ssrc: int,
                              mime_type: str | None = None, clock_rate: int | None = None,
                              channels: int | None = None,
                              parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``rtpParameters`` of ``produce`` on a plain transport for what ffmpeg sends with
    ``-payload_type`` / ``-ssrc`` (VP8 video or Opus audio by default)."""
    if kind == "video":
        codec: dict[str, Any] = {"mimeType": mime_type or "video/VP8",
                                 "clockRate": clock_rate or 90000,
                                 "rtcpFeedback": [{"type": "nack", "parameter": "pli"},
                                                  {"type": "ccm", "parameter": "fir"}]}
    else:
        codec = {"mimeType": mime_type or "audio/opus", "clockRate": clock_rate or 48000,
                 "channels": channels or 2}
    codec["payloadType"] = payload_type
    codec["parameters"] = parameters or {}
    return {"codecs": [codec], "encodings": [{"ssrc": ssrc}], "headerExtensions": [],
            "rtcp": {"cname": f"plain-{ssrc}"}}


@dataclass(frozen=True)
class RtpTarget:
    """Where ffmpeg sends one stream: a plain transport's tuple and the PT/SSRC its
    producer was declared with (``plain_producer_parameters``); ``rtcp_port``: the
    transport's ``rtcpTuple.localPort`` when it was made with ``rtcpMux: false`` (ffmpeg
    then sends its sender reports there)."""

    ip: str
    port: int
    payload_type: int
    ssrc: int
    rtcp_port: int | None = None


def ffmpeg_send_command(source: list[str], *, video: RtpTarget | None = None,
                        audio: RtpTarget | None = None, ffmpeg: str = "ffmpeg",
                        video_bitrate: str = "1M", video_stream: str = "0:v:0",
                        audio_stream: str = "0:a:0") -> list[str]:
    """The ffmpeg command (argv) that sends ``source`` (input options and ``-i`` input, e.g.
    ``["-re", "-i", "movie.mp4"]`` or a lavfi test pattern) into plain transports (comedia):
    VP8 to ``video``, Opus to ``audio``, one transport each (a transport takes one source
    address). For a rtcp-mux transport ffmpeg's own RTCP is off (``skip_rtcp``): it would
    come from another port than its RTP, which such a transport drops; for a target with an
    ``rtcp_port`` (``rtcpMux: false``) ffmpeg sends its sender reports there
    (``?rtcpport=``). ``video_stream`` / ``audio_stream``: which
    input streams (``-map``; e.g. "1:a:0" for a second input). ``shlex.join`` it for a shell."""
    if video is None and audio is None:
        raise ValueError("ffmpeg_send_command: a video and/or an audio target")
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", *source]
    for target, opts in ((video, ["-map", video_stream, "-c:v", "libvpx", "-b:v", video_bitrate,
                                  "-deadline", "realtime", "-cpu-used", "8", "-g", "60",
                                  "-keyint_min", "60", "-error-resilient", "1"]),
                         (audio, ["-map", audio_stream, "-c:a", "libopus", "-b:a", "64k",
                                  "-ac", "2", "-ar", "48000"])):
        if target is None:
            continue
        host = f"[{target.ip}]" if ":" in target.ip else target.ip
        url = f"rtp://{host}:{target.port}?pkt_size=1200"
        if target.rtcp_port is None:
            opts += ["-rtpflags", "skip_rtcp"]
        else:
            url += f"&rtcpport={target.rtcp_port}"
        argv += [*opts, "-ssrc", str(target.ssrc), "-payload_type", str(target.payload_type),
                 "-f", "rtp", url]
    return argv


def gst_send_command(video: RtpTarget, *, source: str = "videotestsrc is-live=true",
                     caps: str = "video/x-raw,width=640,height=480,framerate=30/1",
                     bitrate: int = 1_000_000, gst: str = "gst-launch-1.0") -> list[str]:
    """The gst-launch-1.0 command (argv) that encodes ``source`` (a GStreamer source
    description, e.g. ``"videotestsrc is-live=true num-buffers=300"`` or ``"v4l2src"``) to
    VP8 and sends it into a plain transport (comedia) through ``rtpbin``: RTP to
    ``video``'s port and, for a target with an ``rtcp_port`` (``rtcpMux: false``), rtpbin's
    sender reports to that port (a rtcp-mux transport gets none: they would come from
    another source port). ``shlex.join`` it (or ``shell``) for a shell.

    With a finite source and an ``rtcp_port``, GStreamer 1.22 sometimes does not exit at the
    end of the stream (its rtpsession sends the BYE but not the EOS after it): bound the run."""
    argv = [gst, "-q", "rtpbin", "name=rb", *shlex.split(source), "!", caps, "!", "vp8enc",
            "deadline=1", "keyframe-max-dist=60", f"target-bitrate={bitrate}", "!",
            "rtpvp8pay", f"pt={video.payload_type}", f"ssrc={video.ssrc}", "mtu=1200", "!",
            "rb.send_rtp_sink_0", "rb.send_rtp_src_0", "!", "udpsink", f"host={video.ip}",
            f"port={video.port}"]
    if video.rtcp_port is not None:
        argv += ["rb.send_rtcp_src_0", "!", "udpsink", f"host={video.ip}",
                 f"port={video.rtcp_port}", "sync=false", "async=false"]
    return argv


def ffmpeg_record_command(sdp_path: str, output: str, *, seconds: float | None = None,
                          ffmpeg: str = "ffmpeg") -> list[str]:
    """The ffmpeg command (argv) that records what ``consumer_sdp`` describes into
    ``output`` (.webm/.mkv: the streams are copied, not re-encoded)."""
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-protocol_whitelist",
            "file,udp,rtp,crypto", "-fflags", "+genpts", "-i", sdp_path, "-c", "copy"]
    if seconds is not None:
        argv += ["-t", f"{seconds:g}"]
    return [*argv, "-y", output]


def shell(argv: list[str]) -> str:
    """A command line for a shell."""
    return shlex.join(argv)
