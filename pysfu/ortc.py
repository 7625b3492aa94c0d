"""RTP capability and parameter negotiation (ORTC), in mediasoup's JSON shapes.

Pure functions, no I/O. Everything a client sends goes through ``validate_*`` first; those
return a normalised deep copy (known keys only, defaults filled) or raise ``OrtcError``
with a stable ``code``. The later steps (mapping, consumable, consumer) take validated
data and never mutate their arguments.

The chain for one producer and one viewer::

    router caps = generate_router_rtp_capabilities(config)          # sent to every client
    params      = validate_producer_rtp_parameters(kind, raw, ...)  # from `produce`
    mapping     = get_producer_rtp_parameters_mapping(params, caps) # ingress PT/SSRC rewrite
    consumable  = get_consumable_rtp_parameters(kind, params, caps, mapping)
    caps_dev    = validate_rtp_capabilities(raw_device_caps)        # from the viewer
    can_consume(consumable, caps_dev) -> get_consumer_rtp_parameters(consumable, caps_dev, rtx)

Decisions worth knowing:

* **transport-cc both ways, as mediasoup.** The data plane answers a sender's
  transport-wide sequence numbers with transport-cc feedback (native/src/twcc.rs), so
  Chrome's send-side estimator ramps its upload; toward viewers it stamps its own
  transport-wide sequence numbers on everything it sends (media, RTX, probe padding) and
  estimates each viewer's bandwidth from the viewer's feedback (native/src/bwe/). The
  server uses ``transport_cc=True``, mediasoup's table verbatim (video sendrecv, audio
  recvonly); a video consumer that negotiated the extension then has ``transport-cc``
  and no ``goog-remb`` (the pruning below), one without it keeps abs-send-time and REMB.
  ``transport_cc="recv"`` lists the extension as ``recvonly`` for both kinds (the
  receive-only set-up: viewers on REMB); ``False`` (the function default) leaves
  transport-cc out entirely.
* **Payload type 127 is never allocated** (nor accepted as a forced router PT):
  mediasoup-client's RTP probator uses PT 127 on every recv transport, and a second codec
  on 127 would be a BUNDLE codec collision. The dynamic pool is 100..126 then 96..99.
* Header extension ids are a fixed table (one id per URI across kinds, 1..14, so the
  one-byte header form always fits); consumer packets can use router ids unchanged.
* H264 ``profile-level-id`` given as a number (sdp-transform turns ``640032`` into an
  integer) is read as its decimal spelling; numeric strings in ``packetization-mode``,
  ``profile-id`` and friends compare equal to numbers.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
from collections.abc import Set
from typing import Any, NoReturn

__all__ = [
    "CANNOT_CONSUME",
    "DEFAULT_MEDIA_CODECS",
    "INVALID_RTP_CAPABILITIES",
    "INVALID_RTP_PARAMETERS",
    "SUPPORTED_CODECS",
    "SUPPORTED_HEADER_EXTENSIONS",
    "UNSUPPORTED_CODEC",
    "OrtcError",
    "can_consume",
    "generate_router_rtp_capabilities",
    "get_consumable_rtp_parameters",
    "get_consumer_rtp_parameters",
    "get_producer_rtp_parameters_mapping",
    "match_codecs",
    "parse_h264_profile_level_id",
    "parse_scalability_mode",
    "producer_type",
    "svc_layers",
    "temporal_layers_selectable",
    "validate_producer_rtp_parameters",
    "validate_rtp_capabilities",
    "validate_rtp_parameters",
]

# Stable error codes (part of the signaling protocol).
INVALID_RTP_PARAMETERS = "invalid_rtp_parameters"
INVALID_RTP_CAPABILITIES = "invalid_rtp_capabilities"
UNSUPPORTED_CODEC = "unsupported_codec"
CANNOT_CONSUME = "cannot_consume"


class OrtcError(Exception):
    """Negotiation failed; ``code`` is one of the stable codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(code: str, message: str) -> NoReturn:
    raise OrtcError(code, message)


# Limits on what a peer may send (named here, checked by _list): far above what a browser
# sends (Chrome's full capabilities list ~40 codecs with RTX, ~15 header extensions;
# simulcast uses 2-3 encodings), far below what costs the server anything.
MAX_CAPABILITY_CODECS = 128
MAX_PARAMETER_CODECS = 32
MAX_HEADER_EXTENSIONS = 32
MAX_RTCP_FEEDBACK = 16
MAX_ENCODINGS = 4
MAX_MEDIA_CODECS = 128  # the operator's list (config), not a peer's


# ---- constants ---------------------------------------------------------------------------

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension")

# 127 is left out on purpose: mediasoup-client's probator uses it (module docstring).
_DYNAMIC_PAYLOAD_TYPES: tuple[int, ...] = (*range(100, 127), *range(96, 100))
RESERVED_PAYLOAD_TYPE = 127

# Consumer/mapped SSRCs come from this range (mediasoup's), which also keeps them clear of
# the probator's SSRC 1234.
_SSRC_MIN = 100_000_000
_SSRC_MAX = 999_999_999

_MIME_RE = re.compile(r"(audio|video)/([^/\s]+)", re.IGNORECASE)

# MIME subtypes the data plane knows (mediasoup worker list); anything else is refused.
_KNOWN_SUBTYPES = frozenset({
    "opus", "multiopus", "pcma", "pcmu", "isac", "g722", "ilbc", "silk", "vp8", "vp9", "av1",
    "h264", "h264-svc", "x-h264uc", "h265", "cn", "telephone-event", "rtx", "ulpfec",
    "flexfec", "x-ulpfecuc", "red",
})
# Codecs that carry no media of their own: never a stream's codec, never an RTX target.
_FEATURE_SUBTYPES = frozenset({"rtx", "ulpfec", "flexfec", "x-ulpfecuc", "red"})
_SIMULCAST_SUBTYPES = frozenset({"vp8", "h264", "av1"})
# AV1: one stream's layers are selected by its dependency descriptor (native/src/dd.rs).
_SVC_SUBTYPES = frozenset({"vp9", "h264-svc", "av1"})

_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


def _fb(type_: str, parameter: str = "") -> dict[str, str]:
    return {"type": type_, "parameter": parameter}


_AUDIO_FB = [_fb("nack"), _fb("transport-cc")]
_AUDIO_FB_NO_NACK = [_fb("transport-cc")]
_VIDEO_FB = [_fb("nack"), _fb("nack", "pli"), _fb("ccm", "fir"), _fb("goog-remb"),
             _fb("transport-cc")]


def _audio(mime: str, clock: int, channels: int = 1, *, pt: int | None = None,
           params: dict[str, Any] | None = None, fb: list[dict[str, str]] | None = None,
           ) -> dict[str, Any]:
    codec: dict[str, Any] = {"kind": "audio", "mimeType": mime}
    if pt is not None:
        codec["preferredPayloadType"] = pt
    codec.update(clockRate=clock, channels=channels, parameters=params or {},
                 rtcpFeedback=copy.deepcopy(_AUDIO_FB_NO_NACK if fb is None else fb))
    return codec


def _video(mime: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "video", "mimeType": mime, "clockRate": 90000,
            "parameters": params or {}, "rtcpFeedback": copy.deepcopy(_VIDEO_FB)}


# What a router may be configured with (mediasoup 3.14's table, ref §4.1). Order matters:
# a configured codec takes the first entry matching mime type, clock rate and channels.
SUPPORTED_CODECS: list[dict[str, Any]] = [
    _audio("audio/opus", 48000, 2, fb=_AUDIO_FB),
    _audio("audio/multiopus", 48000, 4, fb=_AUDIO_FB, params={
        "channel_mapping": "0,1,2,3", "num_streams": 2, "coupled_streams": 2}),
    _audio("audio/multiopus", 48000, 6, fb=_AUDIO_FB, params={
        "channel_mapping": "0,4,1,2,3,5", "num_streams": 4, "coupled_streams": 2}),
    _audio("audio/multiopus", 48000, 8, fb=_AUDIO_FB, params={
        "channel_mapping": "0,6,1,2,3,4,5,7", "num_streams": 5, "coupled_streams": 3}),
    _audio("audio/PCMU", 8000, pt=0),
    _audio("audio/PCMA", 8000, pt=8),
    _audio("audio/ISAC", 32000),
    _audio("audio/ISAC", 16000),
    _audio("audio/G722", 8000, pt=9),
    _audio("audio/iLBC", 8000),
    *(_audio("audio/SILK", rate) for rate in (24000, 16000, 12000, 8000)),
    *(_audio("audio/CN", rate, pt=13, fb=[]) for rate in (32000, 16000, 8000)),
    *(_audio("audio/telephone-event", rate, fb=[]) for rate in (48000, 32000, 16000, 8000)),
    _video("video/VP8"),
    _video("video/VP9"),
    _video("video/AV1"),
    _video("video/H264", {"level-asymmetry-allowed": 1}),
    _video("video/H264-SVC", {"level-asymmetry-allowed": 1}),
    _video("video/H265", {"level-asymmetry-allowed": 1}),
]


def _ext(kind: str, uri: str, id_: int, direction: str = "sendrecv") -> dict[str, Any]:
    return {"kind": kind, "uri": uri, "preferredId": id_, "preferredEncrypt": False,
            "direction": direction}


# Fixed ids (ref §4.2). ``direction`` is the server's view: recvonly = we only receive it.
SUPPORTED_HEADER_EXTENSIONS: list[dict[str, Any]] = [
    _ext("audio", URI_MID, 1),
    _ext("video", URI_MID, 1),
    _ext("video", URI_RID, 2, "recvonly"),
    _ext("video", URI_RRID, 3, "recvonly"),
    _ext("audio", URI_ABS_SEND_TIME, 4),
    _ext("video", URI_ABS_SEND_TIME, 4),
    _ext("audio", URI_TRANSPORT_CC, 5, "recvonly"),
    _ext("video", URI_TRANSPORT_CC, 5),
    # Read by the router to select AV1 decode targets and forwarded as sent: a viewer needs
    # it to assemble the frames of a stream with spatial layers (mediasoup lists id 8 as
    # recvonly; Chromium does not decode AV1 L2T3 without it).
    _ext("video", URI_DEPENDENCY_DESCRIPTOR, 8),
    _ext("video", "http://tools.ietf.org/html/draft-ietf-avtext-framemarking-07", 6),
    _ext("video", "urn:ietf:params:rtp-hdrext:framemarking", 7),
    _ext("audio", "urn:ietf:params:rtp-hdrext:ssrc-audio-level", 10),
    _ext("video", "urn:3gpp:video-orientation", 11),
    _ext("video", "urn:ietf:params:rtp-hdrext:toffset", 12),
    _ext("audio", "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time", 13),
    _ext("video", "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time", 13),
    _ext("audio", "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay", 14),
    _ext("video", "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay", 14),
]

DEFAULT_MEDIA_CODECS: list[dict[str, Any]] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000,
     "parameters": {"x-google-start-bitrate": 1000}},
    {"kind": "video", "mimeType": "video/VP9", "clockRate": 90000,
     "parameters": {"profile-id": 0, "x-google-start-bitrate": 1000}},
    {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
     "parameters": {"packetization-mode": 1, "profile-level-id": "42e01f",
                    "level-asymmetry-allowed": 1, "x-google-start-bitrate": 1000}},
    {"kind": "video", "mimeType": "video/AV1", "clockRate": 90000,
     "parameters": {"x-google-start-bitrate": 1000}},
]


# ---- scalar validation helpers -----------------------------------------------------------

def _int(value: Any, what: str, code: str, lo: int, hi: int) -> int:
    # JSON numbers may arrive as integral floats; bools are not numbers here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(code, f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


def _str(value: Any, what: str, code: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        _fail(code, f"{what} must be a {'' if empty else 'non-empty '}string")
    return value


def _dict(value: Any, what: str, code: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(code, f"{what} must be an object")
    return value


def _list(value: Any, what: str, code: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        _fail(code, f"{what} must be an array")
    if len(value) > limit:
        _fail(code, f"{what} has more than {limit} entries")
    return value


def _mime(value: Any, code: str) -> tuple[str, str, str]:
    """-> (mimeType as given, kind, lowercase subtype)."""
    mime = _str(value, "codec.mimeType", code)
    m = _MIME_RE.fullmatch(mime)
    if m is None:
        _fail(code, f"invalid codec.mimeType {mime!r}")
    return mime, m.group(1).lower(), m.group(2).lower()


def _parameters(value: Any, what: str, code: str) -> dict[str, str | int | float]:
    if value is None:
        return {}
    raw = _dict(value, what, code)
    out: dict[str, str | int | float] = {}
    for key, val in raw.items():
        if not isinstance(key, str):
            _fail(code, f"{what} keys must be strings")
        if val is None:  # mediasoup turns undefined into ""
            val = ""
        elif not (isinstance(val, str) or _number(val)):
            _fail(code, f"{what}[{key!r}] must be a string or a number")
        out[key] = val
    if "apt" in out:
        out["apt"] = _int(out["apt"], f"{what}.apt", code, 0, 127)
    return out


def _rtcp_feedback(value: Any, code: str) -> list[dict[str, str]]:
    if value is None:
        return []
    out = []
    for fb in _list(value, "codec.rtcpFeedback", code, MAX_RTCP_FEEDBACK):
        fb = _dict(fb, "rtcpFeedback entry", code)
        type_ = _str(fb.get("type"), "rtcpFeedback.type", code, empty=False)
        param = fb.get("parameter")
        param = "" if param is None else _str(param, "rtcpFeedback.parameter", code)
        out.append({"type": type_, "parameter": param})
    return out


def _codec_common(raw: dict[str, Any], code: str, out: dict[str, Any], kind: str) -> None:
    out["clockRate"] = _int(raw.get("clockRate"), "codec.clockRate", code, 1, 0xFFFFFFFF)
    if kind == "audio":
        channels = raw.get("channels")
        out["channels"] = 1 if channels is None else _int(channels, "codec.channels", code,
                                                          1, 255)
    out["parameters"] = _parameters(raw.get("parameters"), "codec.parameters", code)
    out["rtcpFeedback"] = _rtcp_feedback(raw.get("rtcpFeedback"), code)


def _codec_capability(value: Any, code: str) -> dict[str, Any]:
    raw = _dict(value, "codec", code)
    mime, kind, _ = _mime(raw.get("mimeType"), code)
    out: dict[str, Any] = {"kind": kind, "mimeType": mime}
    pt = raw.get("preferredPayloadType")
    if pt is not None:
        out["preferredPayloadType"] = _int(pt, "codec.preferredPayloadType", code, 0, 127)
    _codec_common(raw, code, out, kind)
    return out


def _codec_parameters(value: Any, code: str) -> dict[str, Any]:
    raw = _dict(value, "codec", code)
    mime, kind, _ = _mime(raw.get("mimeType"), code)
    out: dict[str, Any] = {"mimeType": mime,
                           "payloadType": _int(raw.get("payloadType"), "codec.payloadType",
                                               code, 0, 127)}
    _codec_common(raw, code, out, kind)
    return out


def _ssrc(value: Any, what: str, code: str) -> int:
    return _int(value, what, code, 1, 0xFFFFFFFF)


# Optional encoding keys we pass through when well typed (cosmetic for the SFU).
_ENCODING_EXTRAS: dict[str, Any] = {
    "active": lambda v: isinstance(v, bool),
    "adaptivePtime": lambda v: isinstance(v, bool),
    "maxFramerate": lambda v: _number(v) and v >= 0,
    "scaleResolutionDownBy": lambda v: _number(v) and v > 0,
    "priority": lambda v: isinstance(v, str),
    "networkPriority": lambda v: isinstance(v, str),
}


def _encoding(value: Any, code: str) -> dict[str, Any]:
    raw = _dict(value, "encoding", code)
    out: dict[str, Any] = {}
    if raw.get("ssrc") is not None:
        out["ssrc"] = _ssrc(raw["ssrc"], "encoding.ssrc", code)
    rid = raw.get("rid")
    if rid is not None and _str(rid, "encoding.rid", code):  # "" counts as absent
        out["rid"] = rid
    if raw.get("codecPayloadType") is not None:
        out["codecPayloadType"] = _int(raw["codecPayloadType"], "encoding.codecPayloadType",
                                       code, 0, 127)
    if raw.get("rtx") is not None:
        rtx = _dict(raw["rtx"], "encoding.rtx", code)
        out["rtx"] = {"ssrc": _ssrc(rtx.get("ssrc"), "encoding.rtx.ssrc", code)}
    dtx = raw.get("dtx")
    if dtx is not None and not isinstance(dtx, bool):
        _fail(code, "encoding.dtx must be a boolean")
    out["dtx"] = bool(dtx)
    if raw.get("scalabilityMode") is not None:
        out["scalabilityMode"] = _str(raw["scalabilityMode"], "encoding.scalabilityMode", code)
    if raw.get("maxBitrate") is not None:
        bitrate = raw["maxBitrate"]
        if not _number(bitrate) or bitrate < 0:
            _fail(code, "encoding.maxBitrate must be a non-negative number")
        out["maxBitrate"] = bitrate
    for key, ok in _ENCODING_EXTRAS.items():
        if key in raw and ok(raw[key]):
            out[key] = raw[key]
    return out


def _header_extension_parameters(value: Any, code: str) -> dict[str, Any]:
    raw = _dict(value, "headerExtension", code)
    encrypt = raw.get("encrypt")
    if encrypt is not None and not isinstance(encrypt, bool):
        _fail(code, "headerExtension.encrypt must be a boolean")
    return {
        "uri": _str(raw.get("uri"), "headerExtension.uri", code, empty=False),
        # 0 is not an id; above 255 fits neither header form.
        "id": _int(raw.get("id"), "headerExtension.id", code, 1, 255),
        "encrypt": bool(encrypt),
        "parameters": _parameters(raw.get("parameters"), "headerExtension.parameters", code),
    }


def _header_extension_capability(value: Any, code: str) -> dict[str, Any]:
    raw = _dict(value, "headerExtension", code)
    kind = raw.get("kind")
    if kind not in ("audio", "video"):
        _fail(code, "headerExtension.kind must be 'audio' or 'video'")
    encrypt = raw.get("preferredEncrypt")
    if encrypt is not None and not isinstance(encrypt, bool):
        _fail(code, "headerExtension.preferredEncrypt must be a boolean")
    direction = raw.get("direction")
    if direction is None:
        direction = "sendrecv"
    elif direction not in _DIRECTIONS:
        _fail(code, "invalid headerExtension.direction")
    return {
        "kind": kind,
        "uri": _str(raw.get("uri"), "headerExtension.uri", code, empty=False),
        "preferredId": _int(raw.get("preferredId"), "headerExtension.preferredId", code,
                            1, 255),
        "preferredEncrypt": bool(encrypt),
        "direction": direction,
    }


# ---- public validation -------------------------------------------------------------------

def validate_rtp_capabilities(caps: object) -> dict[str, Any]:
    """Validate and normalise RtpCapabilities (router's or a device's)."""
    code = INVALID_RTP_CAPABILITIES
    raw = _dict(caps, "rtpCapabilities", code)
    codecs = raw.get("codecs")
    codecs = [] if codecs is None else _list(codecs, "codecs", code, MAX_CAPABILITY_CODECS)
    exts = raw.get("headerExtensions")
    exts = [] if exts is None else _list(exts, "headerExtensions", code, MAX_HEADER_EXTENSIONS)
    return {
        "codecs": [_codec_capability(c, code) for c in codecs],
        "headerExtensions": [_header_extension_capability(e, code) for e in exts],
    }


def validate_rtp_parameters(params: object) -> dict[str, Any]:
    """Validate and normalise RtpParameters. Unknown keys are dropped; ``msid`` is kept."""
    code = INVALID_RTP_PARAMETERS
    raw = _dict(params, "rtpParameters", code)
    out: dict[str, Any] = {}
    if raw.get("mid") is not None:
        out["mid"] = _str(raw["mid"], "rtpParameters.mid", code)
    out["codecs"] = [_codec_parameters(c, code)
                     for c in _list(raw.get("codecs"), "rtpParameters.codecs", code,
                                       MAX_PARAMETER_CODECS)]
    exts = raw.get("headerExtensions")
    out["headerExtensions"] = [
        _header_extension_parameters(e, code)
        for e in ([] if exts is None else _list(exts, "rtpParameters.headerExtensions", code,
                                      MAX_HEADER_EXTENSIONS))
    ]
    encodings = raw.get("encodings")
    out["encodings"] = [
        _encoding(e, code)
        for e in ([] if encodings is None else _list(encodings, "rtpParameters.encodings",
                                                     code, MAX_ENCODINGS))
    ]
    rtcp_raw = raw.get("rtcp")
    rtcp_raw = {} if rtcp_raw is None else _dict(rtcp_raw, "rtpParameters.rtcp", code)
    rtcp: dict[str, Any] = {}
    if rtcp_raw.get("cname") is not None:
        rtcp["cname"] = _str(rtcp_raw["cname"], "rtcp.cname", code)
    reduced = rtcp_raw.get("reducedSize")
    if reduced is not None and not isinstance(reduced, bool):
        _fail(code, "rtcp.reducedSize must be a boolean")
    rtcp["reducedSize"] = True if reduced is None else reduced
    out["rtcp"] = rtcp
    if raw.get("msid") is not None:
        out["msid"] = _str(raw["msid"], "rtpParameters.msid", code)
    return out


def _subtype(codec: dict[str, Any]) -> str:
    return str(codec["mimeType"]).split("/", 1)[1].lower()


def _is_rtx(codec: dict[str, Any]) -> bool:
    return _subtype(codec) == "rtx"


def _encoding_codec(params: dict[str, Any], encoding: dict[str, Any]) -> dict[str, Any]:
    pt = encoding.get("codecPayloadType")
    codecs: list[dict[str, Any]] = params["codecs"]
    for codec in codecs:
        if pt is None and _subtype(codec) not in _FEATURE_SUBTYPES:
            return codec
        if pt is not None and codec["payloadType"] == pt:
            return codec
    _fail(INVALID_RTP_PARAMETERS, f"encoding.codecPayloadType {pt} matches no codec")


def producer_type(params: dict[str, Any]) -> str:
    """'simple', 'simulcast' or 'svc' for validated producer parameters (mediasoup rules)."""
    encodings = params["encodings"] or [{}]
    if len(encodings) > 1:
        return "simulcast"
    spatial, temporal, _ = parse_scalability_mode(encodings[0].get("scalabilityMode"))
    if spatial == 1 and temporal == 1:
        return "simple"
    subtype = _subtype(_encoding_codec(params, encodings[0]))
    if subtype in _SVC_SUBTYPES:
        return "svc"
    if subtype in _SIMULCAST_SUBTYPES:
        return "simulcast"
    _fail(INVALID_RTP_PARAMETERS,
          f"scalabilityMode with layers is not valid for codec {subtype}")


def validate_producer_rtp_parameters(
    kind: str,
    params: object,
    existing_mids: Set[str] = frozenset(),
    existing_ssrcs: Set[int] = frozenset(),
) -> dict[str, Any]:
    """Validate ``produce`` parameters as mediasoup's Node layer and worker together do.

    ``existing_mids``/``existing_ssrcs`` are those of the other producers on the same
    transport (media and RTX SSRCs); reusing one would make packet routing ambiguous.
    """
    code = INVALID_RTP_PARAMETERS
    if kind not in ("audio", "video"):
        _fail(code, "kind must be 'audio' or 'video'")
    out = validate_rtp_parameters(params)
    codecs = out["codecs"]
    if not codecs:
        _fail(code, "rtpParameters.codecs is empty")
    if "mid" in out and not out["mid"]:
        _fail(code, "rtpParameters.mid must not be empty")

    by_pt: dict[int, dict[str, Any]] = {}
    for codec in codecs:
        _, codec_kind, subtype = _mime(codec["mimeType"], code)
        if codec_kind != kind:
            _fail(code, f"codec {codec['mimeType']} does not match kind {kind}")
        if subtype not in _KNOWN_SUBTYPES:
            _fail(code, f"unknown codec MIME subtype {subtype!r}")
        if codec["payloadType"] in by_pt:
            _fail(code, f"duplicated payloadType {codec['payloadType']}")
        by_pt[codec["payloadType"]] = codec
    for codec in codecs:
        if not _is_rtx(codec):
            continue
        apt = codec["parameters"].get("apt")
        if apt is None:
            _fail(code, f"RTX codec {codec['payloadType']} has no apt")
        target = by_pt.get(apt)
        if target is None:
            _fail(code, f"apt {apt} of RTX codec {codec['payloadType']} points nowhere")
        if _subtype(target) in _FEATURE_SUBTYPES:
            _fail(code, f"apt {apt} of RTX codec {codec['payloadType']} is not a media codec")
    if all(_subtype(c) in _FEATURE_SUBTYPES for c in codecs):
        _fail(code, "no media codec")

    ext_ids: set[int] = set()
    for ext in out["headerExtensions"]:
        if ext["id"] in ext_ids:
            _fail(code, f"duplicated header extension id {ext['id']}")
        ext_ids.add(ext["id"])

    encodings = out["encodings"]
    if not encodings:
        encodings = out["encodings"] = [{"dtx": False}]
    for enc in encodings:
        pt = enc.get("codecPayloadType")
        if pt is not None and (pt not in by_pt or _subtype(by_pt[pt]) in _FEATURE_SUBTYPES):
            _fail(code, f"encoding.codecPayloadType {pt} is not a media codec")
    if len(encodings) > 1:
        for enc in encodings:
            if "ssrc" not in enc and "rid" not in enc:
                _fail(code, "with several encodings each needs ssrc or rid")
            if parse_scalability_mode(enc.get("scalabilityMode"))[0] > 1:
                _fail(code, "cannot combine simulcast with spatial SVC layers")
    elif "mid" not in out and "ssrc" not in encodings[0] and "rid" not in encodings[0]:
        _fail(code, "without mid the single encoding needs ssrc or rid")

    ssrcs: set[int] = set()
    rids: set[str] = set()
    for enc in encodings:
        for ssrc in (enc.get("ssrc"), enc.get("rtx", {}).get("ssrc")):
            if ssrc is None:
                continue
            if ssrc in ssrcs or ssrc in existing_ssrcs:
                _fail(code, f"ssrc {ssrc} already in use")
            ssrcs.add(ssrc)
        if "rid" in enc:
            if enc["rid"] in rids:
                _fail(code, f"duplicated rid {enc['rid']!r}")
            rids.add(enc["rid"])
    if out.get("mid") in existing_mids:
        _fail(code, f"mid {out['mid']!r} already in use")

    type_ = producer_type(out)
    if type_ == "simulcast":
        for enc in encodings:
            subtype = _subtype(_encoding_codec(out, enc))
            if subtype not in _SIMULCAST_SUBTYPES:
                _fail(code, f"simulcast is not supported for codec {subtype}")
    return out


def svc_layers(params: dict[str, Any]) -> tuple[int, int, bool] | None:
    """(spatial layers, temporal layers, k-SVC) of a VP9 SVC producer (validated
    parameters): one encoding whose scalabilityMode has layers. Its consumers filter layers
    per viewer; None for every other producer."""
    if producer_type(params) != "svc":
        return None
    encoding = (params["encodings"] or [{}])[0]
    if _subtype(_encoding_codec(params, encoding)) != "vp9":
        return None
    return parse_scalability_mode(encoding.get("scalabilityMode"))


# Codecs whose temporal layers the router tells apart only by the dependency descriptor
# (native/src/router/svc_dd.rs); VP8 and VP9 carry them in their payload descriptors.
_DD_LAYERED_SUBTYPES = frozenset({"h264", "av1"})


def temporal_layers_selectable(params: dict[str, Any]) -> bool:
    """Whether the router can drop temporal layers of a producer (validated parameters):
    always for VP8 and VP9 (their payload descriptors carry the temporal layer), for H264
    and AV1 only with the dependency descriptor negotiated (Chromium sends no frame
    marking); without it their consumers forward every layer."""
    encoding = (params["encodings"] or [{}])[0]
    if _subtype(_encoding_codec(params, encoding)) not in _DD_LAYERED_SUBTYPES:
        return True
    return any(e["uri"] == URI_DEPENDENCY_DESCRIPTOR for e in params.get("headerExtensions", []))


# ---- scalability mode --------------------------------------------------------------------

_SCALABILITY_RE = re.compile(r"[LS]([1-9][0-9]?)T([1-9][0-9]?)(_KEY)?")


def parse_scalability_mode(mode: str | None) -> tuple[int, int, bool]:
    """``"L3T3_KEY"`` -> (3, 3, True). Anything unparsable -> (1, 1, False).

    Only a prefix has to match (``"L4T7_KEY_SHIFT"`` is (4, 7, True)), as in mediasoup.
    """
    m = _SCALABILITY_RE.match(mode) if isinstance(mode, str) else None
    if m is None:
        return 1, 1, False
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


# ---- H264 profile-level-id (RFC 6184 §8.1; the libwebrtc rules) --------------------------

H264_CONSTRAINED_BASELINE = 1
H264_BASELINE = 2
H264_MAIN = 3
H264_CONSTRAINED_HIGH = 4
H264_HIGH = 5
H264_PREDICTIVE_HIGH_444 = 6

_H264_LEVEL_1B = 0  # below level 1.0; spelled with level_idc 11 + constraint_set3
_H264_LEVELS = frozenset({10, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52})
_H264_DEFAULT_PROFILE_LEVEL_ID = "42e01f"  # what an absent parameter means (RFC 6184)


def _bits(pattern: str) -> tuple[int, int]:
    """'x1xx0000' -> (mask, value) over profile_iop, most significant bit first."""
    mask = int("".join("0" if c == "x" else "1" for c in pattern), 2)
    return mask, int(pattern.replace("x", "0"), 2)


# (profile_idc, profile_iop pattern, profile): first match wins.
_H264_PROFILE_TABLE = [
    (0x42, _bits("x1xx0000"), H264_CONSTRAINED_BASELINE),
    (0x4D, _bits("1xxx0000"), H264_CONSTRAINED_BASELINE),
    (0x58, _bits("11xx0000"), H264_CONSTRAINED_BASELINE),
    (0x42, _bits("x0xx0000"), H264_BASELINE),
    (0x58, _bits("10xx0000"), H264_BASELINE),
    (0x4D, _bits("0x0x0000"), H264_MAIN),
    (0x64, _bits("00000000"), H264_HIGH),
    (0x64, _bits("00001100"), H264_CONSTRAINED_HIGH),
    (0xF4, _bits("00000000"), H264_PREDICTIVE_HIGH_444),
]

_H264_PROFILE_PREFIX = {
    H264_CONSTRAINED_BASELINE: "42e0",
    H264_BASELINE: "4200",
    H264_MAIN: "4d00",
    H264_CONSTRAINED_HIGH: "640c",
    H264_HIGH: "6400",
    H264_PREDICTIVE_HIGH_444: "f400",
}
_H264_LEVEL_1B_STRINGS = {
    H264_CONSTRAINED_BASELINE: "42f00b",
    H264_BASELINE: "42100b",
    H264_MAIN: "4d100b",
}


def parse_h264_profile_level_id(value: object) -> tuple[int, int] | None:
    """'42e01f' -> (H264_CONSTRAINED_BASELINE, 31); None if not a valid id."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # sdp-transform makes all-digit fmtp values numbers
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{6}", value):
        return None
    number = int(value, 16)
    if number == 0:
        return None
    level_idc, profile_iop, profile_idc = number & 0xFF, (number >> 8) & 0xFF, number >> 16
    if level_idc not in _H264_LEVELS:
        return None
    level = level_idc
    if level_idc == 11 and profile_iop & 0x10:  # constraint_set3 turns 1.1 into 1b
        level = _H264_LEVEL_1B
    for idc, (mask, bits), profile in _H264_PROFILE_TABLE:
        if idc == profile_idc and profile_iop & mask == bits:
            return profile, level
    return None


def _h264_level_less(a: int, b: int) -> bool:
    if a == _H264_LEVEL_1B:
        return b not in (10, _H264_LEVEL_1B)
    if b == _H264_LEVEL_1B:
        return a == 10
    return a < b


def _h264_profile_level_id_string(profile: int, level: int) -> str | None:
    if level == _H264_LEVEL_1B:
        return _H264_LEVEL_1B_STRINGS.get(profile)
    return f"{_H264_PROFILE_PREFIX[profile]}{level:02x}"


def _h264_parsed(params: dict[str, Any]) -> tuple[int, int] | None:
    return parse_h264_profile_level_id(
        params.get("profile-level-id", _H264_DEFAULT_PROFILE_LEVEL_ID))


def _as_int(value: Any, default: int) -> Any:
    """Compare fmtp values numerically when they look like numbers ('1' == 1)."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
        return int(value)
    return value


def _h264_answer_profile_level_id(local: dict[str, Any], remote: dict[str, Any]) -> str | None:
    """The profile-level-id an answerer with ``local`` params gives to ``remote``'s offer.

    None means "leave it out". Raises ValueError when the two cannot agree.
    """
    if "profile-level-id" not in local and "profile-level-id" not in remote:
        return None
    ours, theirs = _h264_parsed(local), _h264_parsed(remote)
    if ours is None or theirs is None:
        raise ValueError("invalid profile-level-id")
    if ours[0] != theirs[0]:
        raise ValueError("H264 profile mismatch")
    asymmetry = all(_as_int(p.get("level-asymmetry-allowed"), 0) == 1 for p in (local, remote))
    level = ours[1]
    if not asymmetry and _h264_level_less(theirs[1], level):
        level = theirs[1]
    answer = _h264_profile_level_id_string(ours[0], level)
    if answer is None:
        raise ValueError("level 1b not expressible for this profile")
    return answer


# ---- codec matching ----------------------------------------------------------------------

def match_codecs(a: dict[str, Any], b: dict[str, Any], *, strict: bool,
                 modify: bool = False) -> bool:
    """Whether codec ``a`` and codec ``b`` are the same codec configuration.

    Always: mime type (case-insensitive), clock rate, channels; multiopus stream counts.
    ``strict`` adds H264 packetization-mode and profile compatibility, VP9 profile-id,
    AV1 profile.
    ``modify`` (H264 only) writes the negotiated profile-level-id into ``a["parameters"]``.
    """
    mime = a["mimeType"].lower()
    if mime != b["mimeType"].lower() or a.get("clockRate") != b.get("clockRate"):
        return False
    if a.get("channels") != b.get("channels"):
        return False
    pa, pb = a.get("parameters") or {}, b.get("parameters") or {}
    if mime == "audio/multiopus":
        for key in ("num_streams", "coupled_streams"):
            if _as_int(pa.get(key), 0) != _as_int(pb.get(key), 0):
                return False
    elif mime in ("video/h264", "video/h264-svc") and strict:
        if _as_int(pa.get("packetization-mode"), 0) != _as_int(pb.get("packetization-mode"), 0):
            return False
        ours, theirs = _h264_parsed(pa), _h264_parsed(pb)
        if ours is None or theirs is None or ours[0] != theirs[0]:
            return False
        try:
            answer = _h264_answer_profile_level_id(pa, pb)
        except ValueError:
            return False
        if modify:
            params = a.setdefault("parameters", {})
            if answer is None:
                params.pop("profile-level-id", None)
            else:
                params["profile-level-id"] = answer
    elif mime == "video/vp9" and strict:
        if _as_int(pa.get("profile-id"), 0) != _as_int(pb.get("profile-id"), 0):
            return False
    elif mime == "video/av1" and strict:
        if _as_int(pa.get("profile"), 0) != _as_int(pb.get("profile"), 0):
            return False
    return True


# ---- router capabilities -----------------------------------------------------------------

def generate_router_rtp_capabilities(
    media_codecs: list[dict[str, Any]] | None = None, *, transport_cc: bool | str = False
) -> dict[str, Any]:
    """Router RtpCapabilities for the configured media codecs (DEFAULT_MEDIA_CODECS if None).

    Each codec takes the canonical entry of SUPPORTED_CODECS (its mime spelling and RTCP
    feedback win; the caller's parameters are merged over it). Payload types: the caller's
    ``preferredPayloadType``, else the codec's static one, else the next of 100..126,
    96..99. Every video codec is followed by its RTX codec.
    """
    code = INVALID_RTP_CAPABILITIES
    if media_codecs is None:
        media_codecs = DEFAULT_MEDIA_CODECS
    media_codecs = _list(media_codecs, "mediaCodecs", code, MAX_MEDIA_CODECS)
    pool = list(_DYNAMIC_PAYLOAD_TYPES)
    codecs: list[dict[str, Any]] = []
    used: set[int] = set()

    def take(pt: int | None = None) -> int:
        if pt is None:
            if not pool:
                _fail(code, "cannot allocate more dynamic codec payload types")
            pt = pool.pop(0)
        elif pt in pool:
            pool.remove(pt)
        if pt == RESERVED_PAYLOAD_TYPE:
            _fail(code, "payload type 127 is reserved (mediasoup-client probator)")
        if pt in used:
            _fail(code, f"duplicated preferredPayloadType {pt}")
        used.add(pt)
        return pt

    for wanted in media_codecs:
        wanted = _codec_capability(wanted, code)
        supported = next((s for s in SUPPORTED_CODECS
                          if match_codecs(wanted, s, strict=False)), None)
        if supported is None:
            _fail(UNSUPPORTED_CODEC, f"media codec not supported: {wanted['mimeType']}"
                  f"/{wanted['clockRate']}" + (f"/{wanted['channels']}"
                                               if "channels" in wanted else ""))
        codec = copy.deepcopy(supported)
        codec["preferredPayloadType"] = take(
            wanted.get("preferredPayloadType", supported.get("preferredPayloadType")))
        params = {**codec["parameters"], **wanted["parameters"]}
        if isinstance(params.get("profile-level-id"), int):
            # mediasoup-client insists on a string here.
            params["profile-level-id"] = str(params["profile-level-id"])
        if not transport_cc:
            codec["rtcpFeedback"] = [fb for fb in codec["rtcpFeedback"]
                                     if fb["type"] != "transport-cc"]
        ordered = {"kind": codec["kind"], "mimeType": codec["mimeType"],
                   "preferredPayloadType": codec["preferredPayloadType"],
                   "clockRate": codec["clockRate"]}
        if codec["kind"] == "audio":
            ordered["channels"] = codec["channels"]
        ordered["parameters"] = params
        ordered["rtcpFeedback"] = codec["rtcpFeedback"]
        codecs.append(ordered)
        if codec["kind"] == "video":
            codecs.append({"kind": "video", "mimeType": "video/rtx",
                           "preferredPayloadType": take(), "clockRate": codec["clockRate"],
                           "parameters": {"apt": codec["preferredPayloadType"]},
                           "rtcpFeedback": []})
    exts = [copy.deepcopy(e) for e in SUPPORTED_HEADER_EXTENSIONS
            if transport_cc or e["uri"] != URI_TRANSPORT_CC]
    if transport_cc == "recv":
        for e in exts:
            if e["uri"] == URI_TRANSPORT_CC:
                e["direction"] = "recvonly"
    return {"codecs": codecs, "headerExtensions": exts}


# ---- producer -> router -> consumer ------------------------------------------------------

def _random_cname() -> str:
    return secrets.token_urlsafe(6)  # 8 characters


def _random_ssrc() -> int:
    return _SSRC_MIN + secrets.randbelow(_SSRC_MAX - _SSRC_MIN + 1)


def _find_router_media_codec(codec: dict[str, Any], caps: dict[str, Any]) -> dict[str, Any]:
    router_codecs: list[dict[str, Any]] = caps["codecs"]
    for cap in router_codecs:
        if not _is_rtx(cap) and match_codecs(copy.deepcopy(codec), cap, strict=True):
            return cap
    _fail(UNSUPPORTED_CODEC,
          f"unsupported codec {codec['mimeType']} (payloadType {codec['payloadType']})")


def get_producer_rtp_parameters_mapping(params: dict[str, Any],
                                        caps: dict[str, Any]) -> dict[str, Any]:
    """Ingress rewrite table of a producer: its PTs -> router PTs, its streams -> SSRCs.

    ``{"codecs": [{payloadType, mappedPayloadType}],
       "encodings": [{ssrc?, rid?, rtxSsrc?, scalabilityMode?, mappedSsrc}]}``;
    mapped SSRCs are consecutive from a random base.
    """
    media: dict[int, dict[str, Any]] = {}
    codecs: list[dict[str, int]] = []
    for codec in params["codecs"]:
        if _is_rtx(codec):
            continue
        cap = _find_router_media_codec(codec, caps)
        media[codec["payloadType"]] = cap
        codecs.append({"payloadType": codec["payloadType"],
                       "mappedPayloadType": cap["preferredPayloadType"]})
    for codec in params["codecs"]:
        if not _is_rtx(codec):
            continue
        cap_media = media.get(codec["parameters"].get("apt"))
        if cap_media is None:
            _fail(INVALID_RTP_PARAMETERS,
                  f"RTX codec {codec['payloadType']} has no associated media codec")
        cap_rtx = next((c for c in caps["codecs"] if _is_rtx(c)
                        and c["parameters"].get("apt") == cap_media["preferredPayloadType"]),
                       None)
        if cap_rtx is None:
            _fail(UNSUPPORTED_CODEC,
                  f"no RTX codec for router codec {cap_media['preferredPayloadType']}")
        codecs.append({"payloadType": codec["payloadType"],
                       "mappedPayloadType": cap_rtx["preferredPayloadType"]})

    encodings = []
    base = _random_ssrc()
    for index, enc in enumerate(params["encodings"] or [{}]):
        entry: dict[str, Any] = {}
        for key in ("ssrc", "rid"):
            if enc.get(key):
                entry[key] = enc[key]
        if "rtx" in enc:
            entry["rtxSsrc"] = enc["rtx"]["ssrc"]
        if enc.get("scalabilityMode"):
            entry["scalabilityMode"] = enc["scalabilityMode"]
        entry["mappedSsrc"] = base + index
        encodings.append(entry)
    return {"codecs": codecs, "encodings": encodings}


def get_consumable_rtp_parameters(kind: str, params: dict[str, Any], caps: dict[str, Any],
                                  mapping: dict[str, Any]) -> dict[str, Any]:
    """The router-side description of a producer that consumers are cut from.

    Router PTs, mime spelling and feedback; the producer's codec parameters (H264
    profile-level-id as negotiated); router header extensions of ``kind`` that the router
    may send, at router ids; the producer's encodings with mapped SSRCs.
    """
    mapped = {m["payloadType"]: m["mappedPayloadType"] for m in mapping["codecs"]}
    codecs: list[dict[str, Any]] = []
    for codec in params["codecs"]:
        if _is_rtx(codec):
            continue
        pt = mapped[codec["payloadType"]]
        cap = next(c for c in caps["codecs"] if c.get("preferredPayloadType") == pt)
        # Re-run the strict match on a copy to get the negotiated H264 profile-level-id
        # without mutating the caller's parameters.
        negotiated = copy.deepcopy(codec)
        match_codecs(negotiated, cap, strict=True, modify=True)
        out: dict[str, Any] = {"mimeType": cap["mimeType"], "payloadType": pt,
                               "clockRate": cap["clockRate"]}
        if "channels" in cap:
            out["channels"] = cap["channels"]
        out["parameters"] = negotiated["parameters"]
        out["rtcpFeedback"] = copy.deepcopy(cap["rtcpFeedback"])
        codecs.append(out)
        rtx = next((c for c in caps["codecs"]
                    if _is_rtx(c) and c["parameters"].get("apt") == pt), None)
        if rtx is not None:
            codecs.append({"mimeType": rtx["mimeType"],
                           "payloadType": rtx["preferredPayloadType"],
                           "clockRate": rtx["clockRate"],
                           "parameters": copy.deepcopy(rtx["parameters"]),
                           "rtcpFeedback": copy.deepcopy(rtx["rtcpFeedback"])})
    exts = [{"uri": e["uri"], "id": e["preferredId"], "encrypt": e["preferredEncrypt"],
             "parameters": {}}
            for e in caps["headerExtensions"]
            if e["kind"] == kind and e["direction"] in ("sendrecv", "sendonly")]
    encodings = []
    for enc, entry in zip(params["encodings"] or [{}], mapping["encodings"], strict=True):
        enc = {k: copy.deepcopy(v) for k, v in enc.items()
               if k not in ("rid", "rtx", "codecPayloadType", "ssrc")}
        encodings.append({"ssrc": entry["mappedSsrc"], **enc})
    consumable: dict[str, Any] = {
        "codecs": codecs,
        "headerExtensions": exts,
        "encodings": encodings,
        # A consumer without CNAME gets no a=ssrc lines; Chrome omits it with RID simulcast.
        # The transport normally overrides this with its own CNAME anyway.
        "rtcp": {"cname": params.get("rtcp", {}).get("cname") or _random_cname(),
                 "reducedSize": True},
    }
    if "msid" in params:
        consumable["msid"] = params["msid"]
    return consumable


def can_consume(consumable: dict[str, Any], caps: dict[str, Any]) -> bool:
    """Whether a device with ``caps`` can receive the producer behind ``consumable``.

    Raises OrtcError(invalid_rtp_capabilities) if ``caps`` is malformed.
    """
    caps = validate_rtp_capabilities(caps)
    for codec in consumable["codecs"]:
        if any(match_codecs(cap, codec, strict=True) for cap in caps["codecs"]):
            # The first codec both sides share must be a media codec, not its RTX.
            return not _is_rtx(codec)
    return False


def get_consumer_rtp_parameters(consumable: dict[str, Any], remote_caps: dict[str, Any],
                                enable_rtx: bool) -> dict[str, Any]:
    """RtpParameters for one consumer (the caller adds ``mid``).

    Codecs the device supports (router PTs, producer parameters, the device's feedback
    pruned for the negotiated bandwidth estimation); header extensions the device lists with
    the same uri and id; one encoding with a fresh SSRC (and RTX SSRC + 1 if RTX survived).
    """
    remote = validate_rtp_capabilities(remote_caps)
    codecs: list[dict[str, Any]] = []
    for codec in consumable["codecs"]:
        if not enable_rtx and _is_rtx(codec):
            continue
        cap = next((c for c in remote["codecs"] if match_codecs(c, codec, strict=True)), None)
        if cap is None:
            continue
        codec = copy.deepcopy(codec)
        # No plain NACK without RTX: the data plane keeps a retransmission buffer only
        # for consumers that negotiated it (ref §5.8; audio consumers by default).
        codec["rtcpFeedback"] = [copy.deepcopy(fb) for fb in cap["rtcpFeedback"]
                                 if enable_rtx or fb["type"] != "nack" or fb["parameter"]]
        codecs.append(codec)
    media_pts = {c["payloadType"] for c in codecs if not _is_rtx(c)}
    codecs = [c for c in codecs if not _is_rtx(c) or c["parameters"].get("apt") in media_pts]
    if not codecs or _is_rtx(codecs[0]):
        _fail(CANNOT_CONSUME, "no compatible media codecs")
    rtx_supported = any(_is_rtx(c) for c in codecs)

    wanted = {(e["uri"], e["preferredId"]) for e in remote["headerExtensions"]}
    exts = [copy.deepcopy(e) for e in consumable["headerExtensions"]
            if (e["uri"], e["id"]) in wanted]
    uris = {e["uri"] for e in exts}
    if URI_TRANSPORT_CC in uris:
        drop = {"goog-remb"}
    elif URI_ABS_SEND_TIME in uris:
        drop = {"transport-cc"}
    else:
        drop = {"transport-cc", "goog-remb"}
    for codec in codecs:
        codec["rtcpFeedback"] = [fb for fb in codec["rtcpFeedback"] if fb["type"] not in drop]

    encoding: dict[str, Any] = {"ssrc": _random_ssrc()}
    if rtx_supported:
        encoding["rtx"] = {"ssrc": encoding["ssrc"] + 1}
    sources = consumable["encodings"]
    mode = next((e["scalabilityMode"] for e in sources if e.get("scalabilityMode")), None)
    if len(sources) > 1:
        # Simulcast reaches the viewer as one stream whose spatial layers are the encodings.
        mode = f"L{len(sources)}T{parse_scalability_mode(mode)[1]}"
    if mode:
        encoding["scalabilityMode"] = mode
    max_bitrate = max((e.get("maxBitrate") or 0 for e in sources), default=0)
    if max_bitrate:
        encoding["maxBitrate"] = max_bitrate

    rtcp = copy.deepcopy(consumable.get("rtcp", {}))
    rtcp["reducedSize"] = True
    consumer: dict[str, Any] = {"codecs": codecs, "headerExtensions": exts,
                                "encodings": [encoding], "rtcp": rtcp}
    if "msid" in consumable:
        consumer["msid"] = consumable["msid"]
    return consumer
