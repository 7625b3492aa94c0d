"""Realistic client JSON for the ORTC tests (shapes from mediasoup-client + Chrome).

Values are illustrative, as Chrome sends them (its own PTs and extension ids in `produce`;
router PTs/ids with Chrome's fmtp in the device's receive capabilities).
"""

from __future__ import annotations

from typing import Any

from pysfu.testing.fixtures import chrome_simulcast_encodings

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ORIENTATION = "urn:3gpp:video-orientation"
URI_TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"
URI_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
URI_PLAYOUT_DELAY = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"


def fb(type_: str, parameter: str = "") -> dict[str, str]:
    return {"type": type_, "parameter": parameter}


def ext(uri: str, id_: int) -> dict[str, Any]:
    return {"uri": uri, "id": id_, "encrypt": False, "parameters": {}}


# `produce` for a VP8 simulcast track (3 RID layers, no SSRCs, empty CNAME, msid),
# with extra encoding keys mediasoup-client passes along.
CHROME_VP8_SIMULCAST_PRODUCE: dict[str, Any] = {
    "mid": "1",
    "codecs": [
        {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {},
         "rtcpFeedback": [fb("goog-remb"), fb("transport-cc"), fb("ccm", "fir"), fb("nack"),
                          fb("nack", "pli")]},
        {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000,
         "parameters": {"apt": 96}, "rtcpFeedback": []},
    ],
    "headerExtensions": [ext(URI_MID, 4), ext(URI_RID, 10), ext(URI_RRID, 11), ext(URI_TCC, 3)],
    # Chrome's simulcast encodings, the last with keys mediasoup does not know (kept as is).
    "encodings": [*chrome_simulcast_encodings()[:2],
                  {**chrome_simulcast_encodings()[2], "networkPriority": "low",
                   "someFutureKey": {"x": 1}}],
    "rtcp": {"cname": "", "reducedSize": True},
    "msid": "4f2c7a1e-stream 9a1d33b0-track",
}

# `produce` for a microphone: opus at Chrome's PT 111, one SSRC encoding.
CHROME_OPUS_PRODUCE: dict[str, Any] = {
    "mid": "0",
    "codecs": [
        {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2,
         "parameters": {"minptime": 10, "useinbandfec": 1, "usedtx": 1, "sprop-stereo": 1},
         "rtcpFeedback": [fb("transport-cc")]},
    ],
    "headerExtensions": [ext(URI_AUDIO_LEVEL, 1), ext(URI_CAPTURE_TIME, 2), ext(URI_TCC, 3),
                         ext(URI_MID, 4)],
    "encodings": [{"ssrc": 3056273961, "dtx": False}],
    "rtcp": {"cname": "Lq3w9cUS0iYbC2Ve", "reducedSize": True},
}


def chrome_recv_caps(router_caps: dict[str, Any]) -> dict[str, Any]:
    """What `device.rtpCapabilities` looks like for Chrome against ``router_caps``.

    Router PTs and ids; Chrome's own fmtp; feedback = router's ∩ Chrome's (in Chrome's
    order); only extensions the router may send and Chrome supports.
    """
    chrome_fb = {
        "audio": [fb("transport-cc"), fb("nack")],
        "video": [fb("goog-remb"), fb("transport-cc"), fb("ccm", "fir"), fb("nack"),
                  fb("nack", "pli")],
    }
    chrome_params: dict[str, dict[str, Any]] = {
        "audio/opus": {"minptime": 10, "useinbandfec": 1},
        "video/vp9": {"profile-id": 0},
        "video/h264": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                       "profile-level-id": "42e01f"},
    }
    chrome_exts = {URI_MID, URI_ABS_SEND_TIME, URI_TCC, URI_AUDIO_LEVEL, URI_ORIENTATION,
                   URI_TOFFSET, URI_PLAYOUT_DELAY}
    codecs = []
    for codec in router_caps["codecs"]:
        mime = codec["mimeType"].lower()
        out = {"mimeType": codec["mimeType"], "kind": codec["kind"],
               "preferredPayloadType": codec["preferredPayloadType"],
               "clockRate": codec["clockRate"]}
        if "channels" in codec:
            out["channels"] = codec["channels"]
        if mime == "video/rtx":
            out["parameters"] = dict(codec["parameters"])
            out["rtcpFeedback"] = []
        else:
            out["parameters"] = dict(chrome_params.get(mime, {}))
            router_fb = {(f["type"], f["parameter"]) for f in codec["rtcpFeedback"]}
            out["rtcpFeedback"] = [f for f in chrome_fb[codec["kind"]]
                                   if (f["type"], f["parameter"]) in router_fb]
        codecs.append(out)
    exts = [{"kind": e["kind"], "uri": e["uri"], "preferredId": e["preferredId"],
             "preferredEncrypt": False, "direction": "sendrecv"}
            for e in router_caps["headerExtensions"]
            if e["direction"] in ("sendrecv", "sendonly") and e["uri"] in chrome_exts]
    return {"codecs": codecs, "headerExtensions": exts}


# A device that only knows ISAC audio and H264 high profile: cannot receive opus or VP8.
INCOMPATIBLE_CAPS: dict[str, Any] = {
    "codecs": [
        {"kind": "audio", "mimeType": "audio/ISAC", "preferredPayloadType": 100,
         "clockRate": 32000, "channels": 1},
        {"kind": "video", "mimeType": "video/H264", "preferredPayloadType": 101,
         "clockRate": 90000, "parameters": {"packetization-mode": 1,
                                            "profile-level-id": "640032"}},
    ],
    "headerExtensions": [],
}
