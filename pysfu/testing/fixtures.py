"""Realistic client-side parameters (what mediasoup-client in Chromium sends)."""

from __future__ import annotations

import copy
import random
from typing import Any

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_FEEDBACK = [
    {"type": "goog-remb", "parameter": ""},
    {"type": "ccm", "parameter": "fir"},
    {"type": "nack", "parameter": ""},
    {"type": "nack", "parameter": "pli"},
]


def vp8_producer(mid: str = "0", ssrc: int | None = None) -> dict[str, Any]:
    """Chrome's VP8 send parameters (Chrome's own PTs and extension ids)."""
    ssrc = ssrc or random.randint(100_000, 2**31)
    return {
        "mid": mid,
        "codecs": [
            {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {},
             "rtcpFeedback": copy.deepcopy(_FEEDBACK)},
            {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000,
             "parameters": {"apt": 96}, "rtcpFeedback": []},
        ],
        "headerExtensions": [
            {"uri": MID, "id": 4, "encrypt": False, "parameters": {}},
            {"uri": ABS_SEND_TIME, "id": 2, "encrypt": False, "parameters": {}},
            {"uri": RID, "id": 10, "encrypt": False, "parameters": {}},
            {"uri": RRID, "id": 11, "encrypt": False, "parameters": {}},
        ],
        "encodings": [{"ssrc": ssrc, "rtx": {"ssrc": ssrc + 1}, "dtx": False}],
        "rtcp": {"cname": "chromecname", "reducedSize": True},
    }


def opus_producer(mid: str = "1", ssrc: int | None = None) -> dict[str, Any]:
    ssrc = ssrc or random.randint(100_000, 2**31)
    return {
        "mid": mid,
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2,
             "parameters": {"minptime": 10, "useinbandfec": 1}, "rtcpFeedback": []},
        ],
        "headerExtensions": [
            {"uri": MID, "id": 4, "encrypt": False, "parameters": {}},
            {"uri": AUDIO_LEVEL, "id": 1, "encrypt": False, "parameters": {}},
        ],
        "encodings": [{"ssrc": ssrc, "dtx": False}],
        "rtcp": {"cname": "chromecname", "reducedSize": True},
    }


def device_caps(router_caps: dict[str, Any], *, only: set[str] | None = None) -> dict[str, Any]:
    """Receive capabilities as mediasoup-client derives them from the router's (router PTs
    and ids, only the extensions the server may send). ``only`` keeps these mime types."""
    codecs = []
    for codec in router_caps["codecs"]:
        mime = codec["mimeType"].lower()
        if only is not None and mime != "video/rtx" and mime not in only:
            continue
        codecs.append(copy.deepcopy(codec))
    kept_pts = {c["preferredPayloadType"] for c in codecs if c["mimeType"].lower() != "video/rtx"}
    codecs = [c for c in codecs
              if c["mimeType"].lower() != "video/rtx" or c["parameters"]["apt"] in kept_pts]
    exts = [copy.deepcopy(e) for e in router_caps["headerExtensions"]
            if e.get("direction", "sendrecv") in ("sendrecv", "sendonly")]
    return {"codecs": codecs, "headerExtensions": exts}


def chrome_simulcast_encodings() -> list[dict[str, Any]]:
    """The three encodings (r0..r2, a quarter, half and full resolution) Chrome sends for
    simulcast, as mediasoup-client describes them."""
    return [
        {"active": True, "rid": "r0", "scaleResolutionDownBy": 4, "maxBitrate": 150000,
         "scalabilityMode": "L1T3", "dtx": False},
        {"active": True, "rid": "r1", "scaleResolutionDownBy": 2, "maxBitrate": 500000,
         "scalabilityMode": "L1T3", "dtx": False},
        {"active": True, "rid": "r2", "maxBitrate": 1500000, "scalabilityMode": "L1T3",
         "dtx": False},
    ]


def engine_leftovers(counts: dict[str, int]) -> dict[str, int]:
    """The engine's object counts that are not zero (``{}`` once everything is freed): robust
    to new kinds of objects, and a failure names what was left."""
    return {name: n for name, n in counts.items() if n}
