"""ORTC negotiation: mediasoup's ortc/Producer/Consumer test cases re-expressed, plus the
compatibility rules of ref/mediasoup-compat.md §7.5 and a property test."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysfu import ortc
from pysfu.ortc import OrtcError
from pysfu.testing.ortc_fixtures import (
    CHROME_OPUS_PRODUCE,
    CHROME_VP8_SIMULCAST_PRODUCE,
    INCOMPATIBLE_CAPS,
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_ORIENTATION,
    URI_RID,
    URI_TCC,
    URI_TOFFSET,
    chrome_recv_caps,
    ext,
    fb,
)

VIDEO_FB = [fb("nack"), fb("nack", "pli"), fb("ccm", "fir"), fb("goog-remb")]
VIDEO_FB_TCC = [*VIDEO_FB, fb("transport-cc")]


def raises(code: str, fn: Any, *args: Any, **kwargs: Any) -> OrtcError:
    with pytest.raises(OrtcError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def produce(kind: str, params: dict[str, Any], caps: dict[str, Any]) -> tuple[dict, dict, dict]:
    """validate -> mapping -> consumable, as the room does on `produce`."""
    valid = ortc.validate_producer_rtp_parameters(kind, params)
    mapping = ortc.get_producer_rtp_parameters_mapping(valid, caps)
    return valid, mapping, ortc.get_consumable_rtp_parameters(kind, valid, caps, mapping)


# ---- router capabilities -----------------------------------------------------------------

ORTC_TEST_MEDIA_CODECS = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2,
     "parameters": {"useinbandfec": 1, "foo": "bar"}},
    {"kind": "video", "mimeType": "video/VP8", "preferredPayloadType": 125, "clockRate": 90000},
    {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
     "parameters": {"level-asymmetry-allowed": 1, "profile-level-id": "42e01f", "foo": "bar"},
     "rtcpFeedback": []},  # ignored: the supported codec's feedback wins
]


def test_router_caps_mediasoup_vector_with_transport_cc() -> None:
    caps = ortc.generate_router_rtp_capabilities(ORTC_TEST_MEDIA_CODECS, transport_cc=True)
    assert caps["codecs"] == [
        {"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
         "clockRate": 48000, "channels": 2, "parameters": {"useinbandfec": 1, "foo": "bar"},
         "rtcpFeedback": [fb("nack"), fb("transport-cc")]},
        {"kind": "video", "mimeType": "video/VP8", "preferredPayloadType": 125,
         "clockRate": 90000, "parameters": {}, "rtcpFeedback": VIDEO_FB_TCC},
        {"kind": "video", "mimeType": "video/rtx", "preferredPayloadType": 101,
         "clockRate": 90000, "parameters": {"apt": 125}, "rtcpFeedback": []},
        # packetization-mode was not given: it stays absent (its default is 0).
        {"kind": "video", "mimeType": "video/H264", "preferredPayloadType": 102,
         "clockRate": 90000,
         "parameters": {"level-asymmetry-allowed": 1, "profile-level-id": "42e01f",
                        "foo": "bar"},
         "rtcpFeedback": VIDEO_FB_TCC},
        {"kind": "video", "mimeType": "video/rtx", "preferredPayloadType": 103,
         "clockRate": 90000, "parameters": {"apt": 102}, "rtcpFeedback": []},
    ]
    assert {(e["uri"], e["preferredId"]) for e in caps["headerExtensions"]} >= {(URI_TCC, 5)}


def test_router_caps_default_leaves_out_transport_cc() -> None:
    with_tcc = ortc.generate_router_rtp_capabilities(ORTC_TEST_MEDIA_CODECS, transport_cc=True)
    caps = ortc.generate_router_rtp_capabilities(ORTC_TEST_MEDIA_CODECS)
    assert "transport-cc" not in json.dumps(caps)
    assert URI_TCC not in json.dumps(caps)
    # Everything else is identical, REMB and abs-send-time included.
    for codec, codec_tcc in zip(caps["codecs"], with_tcc["codecs"], strict=True):
        assert codec["rtcpFeedback"] == [f for f in codec_tcc["rtcpFeedback"]
                                         if f["type"] != "transport-cc"]
        assert {k: v for k, v in codec.items() if k != "rtcpFeedback"} == \
            {k: v for k, v in codec_tcc.items() if k != "rtcpFeedback"}
    assert caps["headerExtensions"] == [e for e in with_tcc["headerExtensions"]
                                        if e["uri"] != URI_TCC]
    assert ("video", URI_ABS_SEND_TIME, 4) in {
        (e["kind"], e["uri"], e["preferredId"]) for e in caps["headerExtensions"]}


def test_router_caps_header_extension_table() -> None:
    caps = ortc.generate_router_rtp_capabilities(transport_cc=True)
    table = {(e["kind"], e["preferredId"]): (e["uri"], e["direction"])
             for e in caps["headerExtensions"]}
    assert sorted({i for _, i in table}) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14]
    assert table["audio", 1] == table["video", 1] == (URI_MID, "sendrecv")
    assert table["video", 2][1] == table["video", 3][1] == "recvonly"
    assert table["audio", 5] == (URI_TCC, "recvonly")
    assert table["video", 5] == (URI_TCC, "sendrecv")
    assert table["audio", 10] == (URI_AUDIO_LEVEL, "sendrecv")
    # AV1 dependency descriptor: read by the router and forwarded to viewers.
    assert table["video", 8] == (ortc.URI_DEPENDENCY_DESCRIPTOR, "sendrecv")
    assert ("audio", 8) not in table
    assert all(not e["preferredEncrypt"] for e in caps["headerExtensions"])
    assert caps["headerExtensions"] == ortc.SUPPORTED_HEADER_EXTENSIONS


def test_default_router_caps_layout() -> None:
    caps = ortc.generate_router_rtp_capabilities()
    layout = [(c["mimeType"], c["preferredPayloadType"], c["parameters"].get("apt"))
              for c in caps["codecs"]]
    assert layout == [("audio/opus", 100, None), ("video/VP8", 101, None),
                      ("video/rtx", 102, 101), ("video/VP9", 103, None),
                      ("video/rtx", 104, 103), ("video/H264", 105, None),
                      ("video/rtx", 106, 105), ("video/AV1", 107, None),
                      ("video/rtx", 108, 107)]
    opus, vp8, _, vp9, _, h264, _, av1, _ = caps["codecs"]
    assert opus["channels"] == 2
    assert vp8["parameters"] == {"x-google-start-bitrate": 1000}
    assert vp9["parameters"] == {"profile-id": 0, "x-google-start-bitrate": 1000}
    assert h264["parameters"] == {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                                  "profile-level-id": "42e01f", "x-google-start-bitrate": 1000}
    assert av1["parameters"] == {"x-google-start-bitrate": 1000}
    assert [f["type"] for f in av1["rtcpFeedback"]] == ["nack", "nack", "ccm", "goog-remb"]
    # The default is not aliased: callers may mutate what they get.
    caps["codecs"][0]["parameters"]["x"] = 1
    assert "x" not in ortc.generate_router_rtp_capabilities()["codecs"][0]["parameters"]


CONFIGS = [
    None,
    ORTC_TEST_MEDIA_CODECS,
    [{"mimeType": "video/VP8", "clockRate": 90000}] * 15,
    [{"mimeType": "audio/PCMU", "clockRate": 8000},
     {"mimeType": "audio/multiopus", "clockRate": 48000, "channels": 6,
      "parameters": {"num_streams": 4, "coupled_streams": 2}},
     {"mimeType": "video/h264", "clockRate": 90000,
      "parameters": {"packetization-mode": 1, "profile-level-id": 640032}},
     {"mimeType": "audio/telephone-event", "clockRate": 8000}],
]


@pytest.mark.parametrize("media_codecs", CONFIGS)
@pytest.mark.parametrize("transport_cc", [False, True])
def test_router_caps_compat_invariants(media_codecs: Any, transport_cc: bool) -> None:
    """ref §1.1 and §7.5: what mediasoup-client and Chrome's BUNDLE rules need."""
    caps = ortc.generate_router_rtp_capabilities(media_codecs, transport_cc=transport_cc)
    pts = [c["preferredPayloadType"] for c in caps["codecs"]]
    assert len(pts) == len(set(pts))
    assert ortc.RESERVED_PAYLOAD_TYPE not in pts
    for index, codec in enumerate(caps["codecs"]):
        assert codec["kind"] == codec["mimeType"].split("/")[0]
        assert ("channels" in codec) == (codec["kind"] == "audio")
        for value in codec["parameters"].values():
            assert isinstance(value, str | int | float) and not isinstance(value, bool)
        assert all(set(f) == {"type", "parameter"} for f in codec["rtcpFeedback"])
        if codec["kind"] == "video" and codec["mimeType"] != "video/rtx":
            rtx = caps["codecs"][index + 1]
            assert rtx["mimeType"] == "video/rtx"
            assert rtx["parameters"] == {"apt": codec["preferredPayloadType"]}
    assert sum(c["mimeType"] == "video/rtx" for c in caps["codecs"]) == sum(
        c["kind"] == "video" and c["mimeType"] != "video/rtx" for c in caps["codecs"])
    ids: dict[str, int] = {}
    for e in caps["headerExtensions"]:
        assert ids.setdefault(e["uri"], e["preferredId"]) == e["preferredId"]
    assert len(set(ids.values())) == len(ids)
    assert all(1 <= i <= 14 for i in ids.values())
    # What we send passes our own (and so mediasoup-client's) validation unchanged.
    assert ortc.validate_rtp_capabilities(copy.deepcopy(caps)) == caps
    assert json.loads(json.dumps(caps)) == caps


def test_router_caps_profile_level_id_number_becomes_string() -> None:
    caps = ortc.generate_router_rtp_capabilities(CONFIGS[3])
    h264 = next(c for c in caps["codecs"] if c["mimeType"] == "video/H264")
    assert h264["parameters"]["profile-level-id"] == "640032"


def test_router_caps_pool_order_skips_127() -> None:
    caps = ortc.generate_router_rtp_capabilities(
        [{"mimeType": "video/VP8", "clockRate": 90000}] * 15)
    assert [c["preferredPayloadType"] for c in caps["codecs"]] == [
        *range(100, 127), 96, 97, 98]


@pytest.mark.parametrize("codec", [
    {"kind": "audio", "mimeType": "audio/chicken", "clockRate": 8000, "channels": 4},
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 1},
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000},  # channels default 1
    {"kind": "video", "mimeType": "video/AV2", "clockRate": 90000},
    {"kind": "video", "mimeType": "video/AV1", "clockRate": 48000},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 48000},
])
def test_router_caps_unsupported_codec(codec: dict[str, Any]) -> None:
    raises(ortc.UNSUPPORTED_CODEC, ortc.generate_router_rtp_capabilities, [codec])


def test_router_caps_too_many_codecs() -> None:
    opus = {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}
    err = raises(ortc.INVALID_RTP_CAPABILITIES, ortc.generate_router_rtp_capabilities,
                 [opus] * 100)
    assert "cannot allocate" in str(err)
    # The pool holds 31 PTs (100..126, 96..99): 31 fit, 32 do not.
    assert len(ortc.generate_router_rtp_capabilities([opus] * 31)["codecs"]) == 31
    raises(ortc.INVALID_RTP_CAPABILITIES, ortc.generate_router_rtp_capabilities, [opus] * 32)


@pytest.mark.parametrize("media_codecs", [
    # PT 127 belongs to mediasoup-client's probator.
    [{"mimeType": "video/VP8", "clockRate": 90000, "preferredPayloadType": 127}],
    [{"mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
     {"mimeType": "video/VP8", "clockRate": 90000, "preferredPayloadType": 100}],
    [{"mimeType": "audio/PCMU", "clockRate": 8000},
     {"mimeType": "audio/opus", "clockRate": 48000, "channels": 2, "preferredPayloadType": 0}],
    [{"mimeType": "audio/opus", "clockRate": 48000, "channels": 2, "preferredPayloadType": 128}],
    [{"mimeType": "audio/opus", "clockRate": "48000", "channels": 2}],
    [{"mimeType": "opus", "clockRate": 48000, "channels": 2}],
    [{"mimeType": "video/VP8", "clockRate": 90000, "parameters": {"x": True}}],
    [{"mimeType": "video/VP8", "clockRate": 90000, "parameters": {"x": [1]}}],
    [None],
    {"mimeType": "video/VP8"},
])
def test_router_caps_invalid_media_codecs(media_codecs: Any) -> None:
    raises(ortc.INVALID_RTP_CAPABILITIES, ortc.generate_router_rtp_capabilities, media_codecs)


def test_router_caps_forced_pt_leaves_the_pool() -> None:
    caps = ortc.generate_router_rtp_capabilities([
        {"mimeType": "audio/opus", "clockRate": 48000, "channels": 2, "preferredPayloadType": 101},
        {"mimeType": "video/VP8", "clockRate": 90000},
        {"mimeType": "audio/PCMA", "clockRate": 8000},
    ])
    assert [c["preferredPayloadType"] for c in caps["codecs"]] == [101, 100, 102, 8]


# ---- the full chain (test-ortc.ts) -------------------------------------------------------

CHAIN_ROUTER_CODECS = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
     "parameters": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                    "profile-level-id": "4d0032", "bar": "lalala"}},
]

CHAIN_PRODUCER = {
    "codecs": [
        {"mimeType": "video/H264", "payloadType": 111, "clockRate": 90000,
         "parameters": {"foo": 1234, "packetization-mode": 1, "profile-level-id": "4d0032"},
         "rtcpFeedback": [fb("nack"), fb("nack", "pli"), fb("goog-remb")]},
        {"mimeType": "video/rtx", "payloadType": 112, "clockRate": 90000,
         "parameters": {"apt": 111}, "rtcpFeedback": []},
    ],
    "headerExtensions": [{"uri": URI_MID, "id": 1}, {"uri": URI_ORIENTATION, "id": 2}],
    "encodings": [
        {"ssrc": 11111111, "rtx": {"ssrc": 11111112}, "maxBitrate": 111111,
         "scalabilityMode": "L1T3"},
        {"ssrc": 21111111, "rtx": {"ssrc": 21111112}, "maxBitrate": 222222,
         "scalabilityMode": "L1T3"},
        {"rid": "high", "maxBitrate": 333333, "scalabilityMode": "L1T3"},
    ],
    "rtcp": {"cname": "qwerty1234"},
}

CHAIN_REMOTE_CAPS = {
    "codecs": [
        {"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 100,
         "clockRate": 48000, "channels": 2, "parameters": {}, "rtcpFeedback": []},
        {"kind": "video", "mimeType": "video/H264", "preferredPayloadType": 101,
         "clockRate": 90000,
         "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032", "baz": "LOLOLO"},
         "rtcpFeedback": [fb("nack"), fb("nack", "pli"), fb("foo", "FOO")]},
        {"kind": "video", "mimeType": "video/rtx", "preferredPayloadType": 102,
         "clockRate": 90000, "parameters": {"apt": 101}, "rtcpFeedback": []},
    ],
    "headerExtensions": [
        {"kind": "audio", "uri": URI_MID, "preferredId": 1, "preferredEncrypt": False,
         "direction": "sendrecv"},
        {"kind": "video", "uri": URI_MID, "preferredId": 1, "preferredEncrypt": False,
         "direction": "sendrecv"},
        {"kind": "video", "uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
         "preferredId": 2, "preferredEncrypt": False, "direction": "sendrecv"},
        {"kind": "audio", "uri": URI_AUDIO_LEVEL, "preferredId": 8, "preferredEncrypt": False,
         "direction": "sendrecv"},
        {"kind": "video", "uri": URI_ORIENTATION, "preferredId": 11, "preferredEncrypt": False,
         "direction": "sendrecv"},
        {"kind": "video", "uri": URI_TOFFSET, "preferredId": 12, "preferredEncrypt": False,
         "direction": "sendrecv"},
    ],
}


def test_full_chain_mapping_consumable_consumer() -> None:
    caps = ortc.generate_router_rtp_capabilities(CHAIN_ROUTER_CODECS)
    producer_in = copy.deepcopy(CHAIN_PRODUCER)
    params, mapping, consumable = produce("video", producer_in, caps)
    assert producer_in == CHAIN_PRODUCER  # nothing mutates its input

    assert mapping["codecs"] == [{"payloadType": 111, "mappedPayloadType": 101},
                                 {"payloadType": 112, "mappedPayloadType": 102}]
    encs = mapping["encodings"]
    assert [(e.get("ssrc"), e.get("rid"), e.get("rtxSsrc")) for e in encs] == [
        (11111111, None, 11111112), (21111111, None, 21111112), (None, "high", None)]
    assert all(e["scalabilityMode"] == "L1T3" for e in encs)
    base = encs[0]["mappedSsrc"]
    assert [e["mappedSsrc"] for e in encs] == [base, base + 1, base + 2]
    assert 100_000_000 <= base <= 999_999_999

    assert consumable["codecs"] == [
        {"mimeType": "video/H264", "payloadType": 101, "clockRate": 90000,
         "parameters": {"foo": 1234, "packetization-mode": 1, "profile-level-id": "4d0032"},
         "rtcpFeedback": VIDEO_FB},
        {"mimeType": "video/rtx", "payloadType": 102, "clockRate": 90000,
         "parameters": {"apt": 101}, "rtcpFeedback": []},
    ]
    assert consumable["encodings"] == [
        {"ssrc": base + i, "dtx": False, "maxBitrate": rate, "scalabilityMode": "L1T3"}
        for i, rate in enumerate((111111, 222222, 333333))]
    assert consumable["rtcp"] == {"cname": "qwerty1234", "reducedSize": True}
    assert all(e["id"] in (1, 4, 6, 7, 8, 11, 12, 13, 14) for e in consumable["headerExtensions"])

    consumer = ortc.get_consumer_rtp_parameters(consumable, CHAIN_REMOTE_CAPS, enable_rtx=True)
    assert consumer["codecs"] == [
        {"mimeType": "video/H264", "payloadType": 101, "clockRate": 90000,
         "parameters": {"foo": 1234, "packetization-mode": 1, "profile-level-id": "4d0032"},
         "rtcpFeedback": [fb("nack"), fb("nack", "pli"), fb("foo", "FOO")]},
        {"mimeType": "video/rtx", "payloadType": 102, "clockRate": 90000,
         "parameters": {"apt": 101}, "rtcpFeedback": []},
    ]
    [encoding] = consumer["encodings"]
    assert 100_000_000 <= encoding["ssrc"] <= 999_999_999
    assert encoding["rtx"] == {"ssrc": encoding["ssrc"] + 1}
    assert encoding["scalabilityMode"] == "L3T3"  # 3 simulcast streams, 3 temporal layers
    assert encoding["maxBitrate"] == 333333
    # Filtered by uri AND id: rtp-stream-id (router: recvonly) and audio-level (id 8) drop.
    assert consumer["headerExtensions"] == [ext(URI_MID, 1), ext(URI_ORIENTATION, 11),
                                            ext(URI_TOFFSET, 12)]
    assert consumer["rtcp"] == {"cname": "qwerty1234", "reducedSize": True}
    assert "mid" not in consumer
    assert json.loads(json.dumps(consumer)) == consumer

    no_rtx = ortc.get_consumer_rtp_parameters(consumable, CHAIN_REMOTE_CAPS, enable_rtx=False)
    assert [c["mimeType"] for c in no_rtx["codecs"]] == ["video/H264"]
    assert no_rtx["codecs"][0]["rtcpFeedback"] == [fb("nack", "pli"), fb("foo", "FOO")]
    assert "rtx" not in no_rtx["encodings"][0]


def test_mapping_vp8_producer_against_h264_router() -> None:
    caps = ortc.generate_router_rtp_capabilities([
        {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
        {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
         "parameters": {"packetization-mode": 1, "profile-level-id": "640032"}},
    ])
    params = ortc.validate_producer_rtp_parameters("video", {
        "codecs": [{"mimeType": "video/VP8", "payloadType": 120, "clockRate": 90000,
                    "rtcpFeedback": [fb("nack"), fb("nack", "fir")]}],
        "headerExtensions": [], "encodings": [{"ssrc": 11111111}], "rtcp": {"cname": "qwerty1234"},
    })
    raises(ortc.UNSUPPORTED_CODEC, ortc.get_producer_rtp_parameters_mapping, params, caps)


# ---- producers (test-Producer.ts) --------------------------------------------------------

def _video(**overrides: Any) -> dict[str, Any]:
    return h264_producer(**overrides)


PRODUCER_ROUTER_CODECS = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2,
     "parameters": {"foo": "111"}},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
    {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
     "parameters": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                    "profile-level-id": "4d0032", "foo": "bar"}},
]


def audio_producer(**overrides: Any) -> dict[str, Any]:
    params = {
        "mid": "AUDIO",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 0, "clockRate": 48000,
                    "channels": 2,
                    "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222,
                                   "bar": "333"}}],
        "headerExtensions": [{"uri": URI_MID, "id": 10}, {"uri": URI_AUDIO_LEVEL, "id": 12}],
        "rtcp": {"cname": "audio-1"},
    }
    params.update(overrides)
    return params


def h264_producer(**overrides: Any) -> dict[str, Any]:
    params = {
        "mid": "VIDEO",
        "codecs": [
            {"mimeType": "video/h264", "payloadType": 112, "clockRate": 90000,
             "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
             "rtcpFeedback": [{"type": "nack"}, fb("nack", "pli"), {"type": "goog-remb"}]},
            {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
             "parameters": {"apt": 112}},
        ],
        "headerExtensions": [{"uri": URI_MID, "id": 10}, {"uri": URI_ORIENTATION, "id": 13}],
        "encodings": [
            {"ssrc": 22222222, "rtx": {"ssrc": 22222223}, "scalabilityMode": "L1T3"},
            {"ssrc": 22222224, "rtx": {"ssrc": 22222225}},
            {"ssrc": 22222226, "rtx": {"ssrc": 22222227}},
            {"ssrc": 22222228, "rtx": {"ssrc": 22222229}},
        ],
        "rtcp": {"cname": "video-1"},
    }
    params.update(overrides)
    return params


def test_valid_audio_producer_normalised() -> None:
    params = ortc.validate_producer_rtp_parameters("audio", audio_producer())
    assert params["codecs"] == [{
        "mimeType": "audio/opus", "payloadType": 0, "clockRate": 48000, "channels": 2,
        "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
        "rtcpFeedback": []}]
    assert params["headerExtensions"] == [ext(URI_MID, 10), ext(URI_AUDIO_LEVEL, 12)]
    assert params["encodings"] == [{"dtx": False}]  # missing encodings -> one empty one
    assert params["rtcp"] == {"cname": "audio-1", "reducedSize": True}
    assert ortc.producer_type(params) == "simple"
    caps = ortc.generate_router_rtp_capabilities(PRODUCER_ROUTER_CODECS)
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
    assert mapping["codecs"] == [{"payloadType": 0, "mappedPayloadType": 100}]
    assert list(mapping["encodings"][0]) == ["mappedSsrc"]


def test_valid_simulcast_h264_producer() -> None:
    params = ortc.validate_producer_rtp_parameters("video", h264_producer())
    assert ortc.producer_type(params) == "simulcast"
    assert params["codecs"][0]["rtcpFeedback"] == [fb("nack"), fb("nack", "pli"),
                                                   fb("goog-remb")]
    assert "channels" not in params["codecs"][0]
    caps = ortc.generate_router_rtp_capabilities(PRODUCER_ROUTER_CODECS)
    mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
    # opus 100, VP8 101 + rtx 102, H264 103 + rtx 104
    assert mapping["codecs"] == [{"payloadType": 112, "mappedPayloadType": 103},
                                 {"payloadType": 113, "mappedPayloadType": 104}]
    assert [e["rtxSsrc"] for e in mapping["encodings"]] == [22222223, 22222225, 22222227,
                                                            22222229]


def test_producer_without_header_extensions_and_rtcp() -> None:
    params = ortc.validate_producer_rtp_parameters(
        "audio", {"mid": "AUDIO2", "codecs": audio_producer()["codecs"]})
    assert params["headerExtensions"] == []
    assert params["rtcp"] == {"reducedSize": True}
    caps = ortc.generate_router_rtp_capabilities(PRODUCER_ROUTER_CODECS)
    consumable = ortc.get_consumable_rtp_parameters(
        "audio", params, caps, ortc.get_producer_rtp_parameters_mapping(params, caps))
    assert consumable["rtcp"]["cname"]  # invented, so consumers get a=ssrc lines




@pytest.mark.parametrize(("kind", "params"), [
    ("chicken", {}),
    ("audio", {}),
    ("audio", None),
    ("audio", {"codecs": [], "headerExtensions": [], "encodings": [{"ssrc": "1111"}],
               "rtcp": {"cname": "qwerty"}}),
    ("audio", audio_producer(codecs=[])),
    ("audio", audio_producer(encodings=[{"ssrc": "1111"}])),
    # Empty encodings become one empty encoding, which without a mid routes nothing.
    ("video", {k: v for k, v in _video(encodings=[]).items() if k != "mid"}),
    # RTX apt pointing nowhere (mediasoup's own case also has an audio/video mix-up).
    ("video", _video(codecs=[h264_producer()["codecs"][0],
                             {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
                              "parameters": {"apt": 111}}])),
    ("audio", _video(encodings=[{"ssrc": 6666, "rtx": {"ssrc": 6667}}])),
    # RTX without apt, RTX pointing at RTX, only RTX.
    ("video", _video(codecs=[h264_producer()["codecs"][0],
                             {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000}])),
    ("video", _video(codecs=[h264_producer()["codecs"][0],
                             {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
                              "parameters": {"apt": 114}},
                             {"mimeType": "video/rtx", "payloadType": 114, "clockRate": 90000,
                              "parameters": {"apt": 113}}])),
    ("video", _video(codecs=[{"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
                              "parameters": {"apt": 113}}])),
    # Duplicate PT, unknown subtype, apt not a number, PT out of range.
    ("video", _video(codecs=[h264_producer()["codecs"][0]] * 2)),
    ("audio", audio_producer(codecs=[{"mimeType": "audio/chicken", "payloadType": 100,
                                      "clockRate": 8000}])),
    ("video", _video(codecs=[h264_producer()["codecs"][0],
                             {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
                              "parameters": {"apt": "112"}}])),
    ("audio", audio_producer(codecs=[{"mimeType": "audio/opus", "payloadType": 128,
                                      "clockRate": 48000, "channels": 2}])),
    # Header extension ids 0 and 256, a duplicated id.
    ("audio", audio_producer(headerExtensions=[{"uri": URI_MID, "id": 0}])),
    ("audio", audio_producer(headerExtensions=[{"uri": URI_MID, "id": 256}])),
    ("audio", audio_producer(headerExtensions=[{"uri": URI_MID, "id": 3},
                                               {"uri": URI_AUDIO_LEVEL, "id": 3}])),
    # Empty mid; bad mid type; several encodings, one without ssrc or rid.
    ("audio", audio_producer(mid="")),
    ("audio", audio_producer(mid=1)),
    ("video", _video(encodings=[{"rid": "r0"}, {"maxBitrate": 100}])),
    # Single encoding, no mid, no ssrc/rid: nothing to route packets by.
    ("audio", audio_producer(mid=None, encodings=[{}])),
    ("audio", {k: v for k, v in audio_producer(encodings=[{}]).items() if k != "mid"}),
    # Producer type rules.
    ("audio", audio_producer(encodings=[{"ssrc": 1, "scalabilityMode": "L1T3"}])),
    ("video", _video(codecs=[{"mimeType": "video/VP9", "payloadType": 98,
                              "clockRate": 90000}],
                     encodings=[{"rid": "r0"}, {"rid": "r1"}])),
    ("video", _video(encodings=[{"rid": "r0", "scalabilityMode": "L2T3"}, {"rid": "r1"}])),
    # Repeated ssrc / rid inside one producer; codecPayloadType pointing at RTX.
    ("video", _video(encodings=[{"ssrc": 5}, {"ssrc": 5}])),
    ("video", _video(encodings=[{"ssrc": 5, "rtx": {"ssrc": 5}}])),
    ("video", _video(encodings=[{"rid": "a"}, {"rid": "a"}])),
    ("video", _video(encodings=[{"ssrc": 5, "codecPayloadType": 113}])),
    # Wrong types of things mediasoup checks.
    ("video", _video(encodings=[{"ssrc": 5, "rtx": {}}])),
    ("video", _video(encodings=[{"ssrc": 5, "dtx": "no"}])),
    ("video", _video(encodings=[{"ssrc": 5, "maxBitrate": "lots"}])),
    ("video", _video(encodings=[{"ssrc": 0}])),
    ("video", _video(encodings=[{"ssrc": 2**32}])),
    ("video", _video(encodings=[{"ssrc": True}])),
    ("video", _video(rtcp={"cname": 5})),
    ("video", _video(rtcp="x")),
    ("video", _video(msid=["a"])),
    ("audio", audio_producer(codecs=[{"mimeType": "audio/opus", "payloadType": 100,
                                      "clockRate": 48000, "channels": 2,
                                      "rtcpFeedback": [{"parameter": "pli"}]}])),
])
def test_producer_validation_errors(kind: str, params: Any) -> None:
    raises(ortc.INVALID_RTP_PARAMETERS, ortc.validate_producer_rtp_parameters, kind, params)


@pytest.mark.parametrize("params", [
    # ISAC is a known codec, but not in the router.
    {"codecs": [{"mimeType": "audio/ISAC", "payloadType": 108, "clockRate": 32000}],
     "headerExtensions": [], "encodings": [{"ssrc": 1111}], "rtcp": {"cname": "audio"}},
    # opus without channels means mono: not the router's opus.
    {"codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000}],
     "encodings": [{"ssrc": 1111}]},
])
def test_producer_audio_codec_not_in_router(params: dict[str, Any]) -> None:
    caps = ortc.generate_router_rtp_capabilities(PRODUCER_ROUTER_CODECS)
    valid = ortc.validate_producer_rtp_parameters("audio", params)
    raises(ortc.UNSUPPORTED_CODEC, ortc.get_producer_rtp_parameters_mapping, valid, caps)


@pytest.mark.parametrize("parameters", [
    {"packetization-mode": 1, "profile-level-id": "CHICKEN"},
    {"packetization-mode": 1, "profile-level-id": "640032"},  # High, router has Main
    {"packetization-mode": 0, "profile-level-id": "4d0032"},
    {"profile-level-id": "4d0032"},  # packetization-mode defaults to 0
    {"packetization-mode": 1},  # profile defaults to constrained baseline 42e01f
])
def test_producer_h264_not_in_router(parameters: dict[str, Any]) -> None:
    caps = ortc.generate_router_rtp_capabilities(PRODUCER_ROUTER_CODECS)
    params = ortc.validate_producer_rtp_parameters("video", {
        "codecs": [{"mimeType": "video/h264", "payloadType": 112, "clockRate": 90000,
                    "parameters": parameters},
                   {"mimeType": "video/rtx", "payloadType": 113, "clockRate": 90000,
                    "parameters": {"apt": 112}}],
        "headerExtensions": [], "encodings": [{"ssrc": 6666, "rtx": {"ssrc": 6667}}]})
    raises(ortc.UNSUPPORTED_CODEC, ortc.get_producer_rtp_parameters_mapping, params, caps)


def test_producer_rtx_without_router_rtx() -> None:
    caps = ortc.generate_router_rtp_capabilities(
        [{"mimeType": "audio/opus", "clockRate": 48000, "channels": 2}])
    params = ortc.validate_producer_rtp_parameters("audio", {
        "mid": "a",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000,
                    "channels": 2},
                   {"mimeType": "audio/rtx", "payloadType": 112, "clockRate": 48000,
                    "parameters": {"apt": 111}}]})
    raises(ortc.UNSUPPORTED_CODEC, ortc.get_producer_rtp_parameters_mapping, params, caps)


def test_producer_reused_mid_or_ssrc() -> None:
    mids, ssrcs = {"AUDIO"}, {22222222, 22222223}
    raises(ortc.INVALID_RTP_PARAMETERS, ortc.validate_producer_rtp_parameters, "audio",
           audio_producer(encodings=[{"ssrc": 33333333}]), mids, ssrcs)
    raises(ortc.INVALID_RTP_PARAMETERS, ortc.validate_producer_rtp_parameters, "video",
           h264_producer(mid="VIDEO2", encodings=[{"ssrc": 22222222}]), mids, ssrcs)
    # An RTX SSRC counts too.
    raises(ortc.INVALID_RTP_PARAMETERS, ortc.validate_producer_rtp_parameters, "video",
           h264_producer(mid="VIDEO2", encodings=[{"ssrc": 5, "rtx": {"ssrc": 22222223}}]),
           mids, ssrcs)
    ok = ortc.validate_producer_rtp_parameters(
        "video", h264_producer(mid="VIDEO2", encodings=[{"ssrc": 5}]), mids, ssrcs)
    assert ok["mid"] == "VIDEO2"


def test_producer_types() -> None:
    vp8 = [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}]
    vp9 = [{"mimeType": "video/VP9", "payloadType": 98, "clockRate": 90000}]
    svc = ortc.validate_producer_rtp_parameters(
        "video", {"mid": "0", "codecs": vp9, "encodings": [{"scalabilityMode": "L3T3_KEY"}]})
    assert ortc.producer_type(svc) == "svc"
    temporal = ortc.validate_producer_rtp_parameters(
        "video", {"mid": "0", "codecs": vp8, "encodings": [{"scalabilityMode": "L1T3"}]})
    assert ortc.producer_type(temporal) == "simulcast"
    # AV1: one stream with layers is SVC (dependency descriptor), several are simulcast.
    av1 = [{"mimeType": "video/AV1", "payloadType": 45, "clockRate": 90000}]
    av1_svc = ortc.validate_producer_rtp_parameters(
        "video", {"mid": "0", "codecs": av1, "encodings": [{"scalabilityMode": "L1T3"}]})
    assert ortc.producer_type(av1_svc) == "svc"
    av1_sim = ortc.validate_producer_rtp_parameters(
        "video", {"mid": "0", "codecs": av1, "encodings": [{"rid": "r0"}, {"rid": "r1"}]})
    assert ortc.producer_type(av1_sim) == "simulcast"
    # An unparsable mode means one layer: fine for opus.
    opus = ortc.validate_producer_rtp_parameters(
        "audio", audio_producer(encodings=[{"ssrc": 1, "scalabilityMode": "foo"}]))
    assert ortc.producer_type(opus) == "simple"
    # VP9 SVC: its consumers filter layers (the engine gets the layer counts and k-SVC).
    assert ortc.svc_layers(svc) == (3, 3, True)
    l1t3 = ortc.validate_producer_rtp_parameters(
        "video", {"mid": "0", "codecs": vp9, "encodings": [{"scalabilityMode": "L1T3"}]})
    assert ortc.producer_type(l1t3) == "svc"
    assert ortc.svc_layers(l1t3) == (1, 3, False)
    assert ortc.svc_layers(temporal) is None
    assert ortc.svc_layers(opus) is None


def test_temporal_layers_selectable_by_payload_or_dependency_descriptor() -> None:
    """VP8 and VP9 carry their temporal layer in the payload; H264 and AV1 only in the
    dependency descriptor, so without it negotiated their layers cannot be dropped."""
    dd = [{"uri": ortc.URI_DEPENDENCY_DESCRIPTOR, "id": 9}]

    def params(mime: str, exts: list[dict[str, Any]]) -> dict[str, Any]:
        return ortc.validate_producer_rtp_parameters("video", {
            "mid": "0", "codecs": [{"mimeType": mime, "payloadType": 100, "clockRate": 90000}],
            "headerExtensions": exts, "encodings": [{"scalabilityMode": "L1T3"}]})

    assert ortc.temporal_layers_selectable(params("video/VP8", []))
    assert ortc.temporal_layers_selectable(params("video/VP9", []))
    assert not ortc.temporal_layers_selectable(params("video/H264", []))
    assert ortc.temporal_layers_selectable(params("video/H264", dd))
    assert not ortc.temporal_layers_selectable(params("video/AV1", []))
    assert ortc.temporal_layers_selectable(params("video/AV1", dd))


def test_producer_tolerance() -> None:
    """Unknown keys are dropped, msid and well-typed extras are kept, PT 127 is fine."""
    raw = audio_producer(
        msid="stream track", appData={"x": 1},
        codecs=[{"mimeType": "audio/opus", "payloadType": 127, "clockRate": 48000.0,
                 "channels": 2, "parameters": {"x": None}, "extra": 1}],
        encodings=[{"ssrc": 1234, "active": True, "maxFramerate": "bad", "priority": "high",
                    "new": [1]}])
    params = ortc.validate_producer_rtp_parameters("audio", raw)
    assert params["msid"] == "stream track"
    assert "appData" not in params
    assert params["codecs"][0] == {"mimeType": "audio/opus", "payloadType": 127,
                                   "clockRate": 48000, "channels": 2,
                                   "parameters": {"x": ""}, "rtcpFeedback": []}
    assert params["encodings"] == [{"ssrc": 1234, "dtx": False, "active": True,
                                    "priority": "high"}]


# ---- consumers (test-Consumer.ts) --------------------------------------------------------

CONSUMER_ROUTER_CODECS = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2,
     "parameters": {"foo": "bar"}},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
    {"kind": "video", "mimeType": "video/H264", "clockRate": 90000,
     "parameters": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                    "profile-level-id": "4d0032", "foo": "bar"}},
]

CONSUMER_DEVICE_CAPS = {
    "codecs": [
        {"mimeType": "audio/opus", "kind": "audio", "preferredPayloadType": 100,
         "clockRate": 48000, "channels": 2, "rtcpFeedback": [fb("nack")]},
        {"mimeType": "video/H264", "kind": "video", "preferredPayloadType": 101,
         "clockRate": 90000,
         "parameters": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                        "profile-level-id": "4d0032"},
         "rtcpFeedback": [fb("nack"), fb("nack", "pli"), fb("ccm", "fir"), fb("goog-remb")]},
        {"mimeType": "video/rtx", "kind": "video", "preferredPayloadType": 102,
         "clockRate": 90000, "parameters": {"apt": 101}, "rtcpFeedback": []},
    ],
    "headerExtensions": [
        {"kind": k, "uri": u, "preferredId": i, "preferredEncrypt": False}
        for k, u, i in [("audio", URI_MID, 1), ("video", URI_MID, 1),
                        ("video", "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", 2),
                        ("audio", URI_ABS_SEND_TIME, 4), ("video", URI_ABS_SEND_TIME, 4),
                        ("audio", URI_AUDIO_LEVEL, 10), ("video", URI_ORIENTATION, 11),
                        ("video", URI_TOFFSET, 12)]
    ],
}


def _consumer_producers() -> tuple[dict, dict]:
    caps = ortc.generate_router_rtp_capabilities(CONSUMER_ROUTER_CODECS)
    audio = audio_producer(codecs=[{**audio_producer()["codecs"][0], "payloadType": 111}],
                           encodings=[{"ssrc": 11111111}], rtcp={"cname": "FOOBAR"})
    video = h264_producer(rtcp={"cname": "FOOBAR"})
    for enc in video["encodings"]:
        enc.pop("scalabilityMode", None)
    return produce("audio", audio, caps)[2], produce("video", video, caps)[2]


def test_consumer_audio() -> None:
    audio, _ = _consumer_producers()
    assert ortc.can_consume(audio, CONSUMER_DEVICE_CAPS)
    consumer = ortc.get_consumer_rtp_parameters(audio, CONSUMER_DEVICE_CAPS, enable_rtx=False)
    assert consumer["codecs"] == [{
        "mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2,
        "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
        "rtcpFeedback": []}]  # plain nack needs enable_rtx
    assert consumer["headerExtensions"] == [ext(URI_MID, 1), ext(URI_ABS_SEND_TIME, 4),
                                            ext(URI_AUDIO_LEVEL, 10)]
    [encoding] = consumer["encodings"]
    assert set(encoding) == {"ssrc"}
    assert consumer["rtcp"] == {"cname": "FOOBAR", "reducedSize": True}
    with_rtx = ortc.get_consumer_rtp_parameters(audio, CONSUMER_DEVICE_CAPS, enable_rtx=True)
    assert with_rtx["codecs"][0]["rtcpFeedback"] == [fb("nack")]
    assert "rtx" not in with_rtx["encodings"][0]  # no RTX codec for audio


def test_consumer_video_simulcast() -> None:
    _, video = _consumer_producers()
    assert ortc.can_consume(video, CONSUMER_DEVICE_CAPS)
    consumer = ortc.get_consumer_rtp_parameters(video, CONSUMER_DEVICE_CAPS, enable_rtx=True)
    assert consumer["codecs"] == [
        {"mimeType": "video/H264", "payloadType": 103, "clockRate": 90000,
         "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
         # abs-send-time without transport-cc: REMB stays, transport-cc would go.
         "rtcpFeedback": [fb("nack"), fb("nack", "pli"), fb("ccm", "fir"), fb("goog-remb")]},
        {"mimeType": "video/rtx", "payloadType": 104, "clockRate": 90000,
         "parameters": {"apt": 103}, "rtcpFeedback": []},
    ]
    assert consumer["headerExtensions"] == [ext(URI_MID, 1), ext(URI_ABS_SEND_TIME, 4),
                                            ext(URI_ORIENTATION, 11), ext(URI_TOFFSET, 12)]
    [encoding] = consumer["encodings"]
    assert encoding["scalabilityMode"] == "L4T1"
    assert encoding["rtx"]["ssrc"] == encoding["ssrc"] + 1
    # Two consumers of one producer get different SSRCs (overwhelmingly likely).
    others = {ortc.get_consumer_rtp_parameters(video, CONSUMER_DEVICE_CAPS, True)
              ["encodings"][0]["ssrc"] for _ in range(5)}
    assert len(others | {encoding["ssrc"]}) > 1


@pytest.mark.parametrize("caps", [
    {"codecs": [{"kind": "audio", "mimeType": "audio/ISAC", "preferredPayloadType": 100,
                 "clockRate": 32000, "channels": 1}], "headerExtensions": []},
    {"codecs": [], "headerExtensions": []},
    {},
    # Only RTX in common is not enough.
    {"codecs": [{"kind": "video", "mimeType": "video/rtx", "clockRate": 90000,
                 "parameters": {"apt": 101}}]},
])
def test_consumer_incompatible_device(caps: dict[str, Any]) -> None:
    audio, video = _consumer_producers()
    for consumable in (audio, video):
        assert not ortc.can_consume(consumable, caps)
        raises(ortc.CANNOT_CONSUME, ortc.get_consumer_rtp_parameters, consumable, caps, True)


def test_can_consume_rejects_malformed_caps() -> None:
    audio, _ = _consumer_producers()
    for caps in (None, {"codecs": "x"}, {"codecs": [{"mimeType": "audio/opus"}]},
                 {"headerExtensions": [{"uri": URI_MID, "preferredId": 1}]}):
        raises(ortc.INVALID_RTP_CAPABILITIES, ortc.can_consume, audio, caps)
        raises(ortc.INVALID_RTP_CAPABILITIES, ortc.get_consumer_rtp_parameters, audio, caps,
               True)


def test_consumer_feedback_pruned_for_transport_cc() -> None:
    caps = ortc.generate_router_rtp_capabilities(transport_cc=True)
    _, _, consumable = produce("video", CHROME_VP8_SIMULCAST_PRODUCE, caps)
    device = chrome_recv_caps(caps)
    consumer = ortc.get_consumer_rtp_parameters(consumable, device, enable_rtx=True)
    assert (URI_TCC, 5) in {(e["uri"], e["id"]) for e in consumer["headerExtensions"]}
    assert consumer["codecs"][0]["rtcpFeedback"] == [fb("transport-cc"), fb("ccm", "fir"),
                                                     fb("nack"), fb("nack", "pli")]
    # No BWE extension at all: neither feedback survives.
    device["headerExtensions"] = [e for e in device["headerExtensions"]
                                  if e["uri"] not in (URI_TCC, URI_ABS_SEND_TIME)]
    bare = ortc.get_consumer_rtp_parameters(consumable, device, enable_rtx=True)
    assert bare["codecs"][0]["rtcpFeedback"] == [fb("ccm", "fir"), fb("nack"),
                                                 fb("nack", "pli")]


# ---- realistic Chrome / mediasoup-client round trip --------------------------------------

@pytest.mark.parametrize(("kind", "raw"), [("video", CHROME_VP8_SIMULCAST_PRODUCE),
                                           ("audio", CHROME_OPUS_PRODUCE)])
def test_chrome_producer_to_chrome_viewer(kind: str, raw: dict[str, Any]) -> None:
    caps = ortc.generate_router_rtp_capabilities()
    params, mapping, consumable = produce(kind, copy.deepcopy(raw), caps)
    device = ortc.validate_rtp_capabilities(chrome_recv_caps(caps))
    assert ortc.can_consume(consumable, device)
    consumer = ortc.get_consumer_rtp_parameters(consumable, device, enable_rtx=kind == "video")

    router_codecs = {(c["mimeType"], c["preferredPayloadType"], c["parameters"].get("apt"))
                     for c in caps["codecs"] if c["kind"] == kind}
    for codec in consumer["codecs"]:
        apt = codec["parameters"].get("apt") if codec["mimeType"] == "video/rtx" else None
        assert (codec["mimeType"], codec["payloadType"], apt) in router_codecs
    assert consumer["codecs"][0]["mimeType"] != "video/rtx"
    router_ids = {(e["uri"], e["preferredId"]) for e in caps["headerExtensions"]
                  if e["kind"] == kind and e["direction"] in ("sendrecv", "sendonly")}
    assert consumer["headerExtensions"]
    assert {(e["uri"], e["id"]) for e in consumer["headerExtensions"]} <= router_ids
    assert len(consumer["encodings"]) == 1
    assert consumer["encodings"][0]["ssrc"] != 1234
    assert consumer["rtcp"]["cname"]
    assert "mid" not in consumer
    assert "transport-cc" not in json.dumps(consumer)

    if kind == "video":
        assert params["msid"] == consumable["msid"] == consumer["msid"] == raw["msid"]
        assert [e.get("rid") for e in mapping["encodings"]] == ["r0", "r1", "r2"]
        assert consumer["encodings"][0]["scalabilityMode"] == "L3T3"
        assert consumer["encodings"][0]["maxBitrate"] == 1500000
        assert [c["payloadType"] for c in consumer["codecs"]] == [101, 102]
        # The extension ids Chrome chose stay in the producer params (ingress parsing).
        assert (URI_RID, 10) in {(e["uri"], e["id"]) for e in params["headerExtensions"]}
        assert "someFutureKey" not in json.dumps(params)
    else:
        assert consumer["rtcp"]["cname"] == raw["rtcp"]["cname"]
        assert consumer["codecs"][0]["parameters"] == raw["codecs"][0]["parameters"]
        assert mapping["codecs"] == [{"payloadType": 111, "mappedPayloadType": 100}]


def test_incompatible_device_cannot_consume_chrome_tracks() -> None:
    caps = ortc.generate_router_rtp_capabilities()
    for kind, raw in (("video", CHROME_VP8_SIMULCAST_PRODUCE), ("audio", CHROME_OPUS_PRODUCE)):
        consumable = produce(kind, raw, caps)[2]
        assert not ortc.can_consume(consumable, INCOMPATIBLE_CAPS)
        raises(ortc.CANNOT_CONSUME, ortc.get_consumer_rtp_parameters, consumable,
               INCOMPATIBLE_CAPS, True)


def test_h264_producer_profile_matches_router_variant() -> None:
    """A Chrome H264 producer (42e01f) maps onto the router's constrained-baseline entry,
    and a Main-profile device cannot receive it."""
    caps = ortc.generate_router_rtp_capabilities()
    raw = copy.deepcopy(CHROME_OPUS_PRODUCE) | {
        "codecs": [{"mimeType": "video/H264", "payloadType": 102, "clockRate": 90000,
                    "parameters": {"level-asymmetry-allowed": 1, "packetization-mode": 1,
                                   "profile-level-id": "42e034"}}],
        "headerExtensions": [], "encodings": [{"ssrc": 42}]}
    params, mapping, consumable = produce("video", raw, caps)
    assert mapping["codecs"] == [{"payloadType": 102, "mappedPayloadType": 105}]
    # Both sides allow level asymmetry: the producer keeps its own level.
    assert consumable["codecs"][0]["parameters"]["profile-level-id"] == "42e034"
    assert ortc.can_consume(consumable, chrome_recv_caps(caps))
    main = chrome_recv_caps(caps)
    for codec in main["codecs"]:
        if codec["mimeType"] == "video/H264":
            codec["parameters"]["profile-level-id"] = "4d0032"
    assert not ortc.can_consume(consumable, main)


# ---- match_codecs, H264 profiles, scalability modes --------------------------------------

def h264(plid: Any = None, pm: Any = 1, **extra: Any) -> dict[str, Any]:
    params = {"packetization-mode": pm, **extra}
    if plid is not None:
        params["profile-level-id"] = plid
    return {"mimeType": "video/H264", "clockRate": 90000, "parameters": params}


@pytest.mark.parametrize(("a", "b", "strict", "expected"), [
    (h264("42e01f"), h264("42e01f"), True, True),
    (h264("42e01f"), h264("42001f"), True, False),  # constrained baseline vs baseline
    (h264("42e01f"), h264("4d001f"), True, False),
    (h264("4d001f"), h264("4d0032"), True, True),  # same profile, other level
    (h264("640c1f"), h264("640c34"), True, True),  # constrained high
    (h264("640c1f"), h264("64001f"), True, False),  # constrained high vs high
    (h264("42e01f"), h264(None), True, True),  # absent = 42e01f
    (h264("42e01f", pm=1), h264("42e01f", pm=0), True, False),
    (h264("42e01f", pm=1), h264("42e01f", pm="1"), True, True),
    (h264("42e01f", pm=0), h264("42e01f", pm=None), True, True),
    (h264("CHICKEN"), h264("42e01f"), True, False),
    (h264("42e01f"), h264("42e00f"), True, False),  # level_idc 15 does not exist
    (h264("640032"), h264(640032), True, True),  # sdp-transform made it a number
    (h264("42e01f", pm=0), h264("4d0032", pm=1), False, True),  # non-strict ignores both
    ({"mimeType": "video/VP9", "clockRate": 90000, "parameters": {"profile-id": 2}},
     {"mimeType": "video/vp9", "clockRate": 90000, "parameters": {}}, True, False),
    ({"mimeType": "video/VP9", "clockRate": 90000, "parameters": {"profile-id": 0}},
     {"mimeType": "video/vp9", "clockRate": 90000, "parameters": {}}, True, True),
    ({"mimeType": "video/VP9", "clockRate": 90000, "parameters": {"profile-id": 2}},
     {"mimeType": "video/vp9", "clockRate": 90000, "parameters": {}}, False, True),
    ({"mimeType": "video/AV1", "clockRate": 90000, "parameters": {"profile": 1}},
     {"mimeType": "video/av1", "clockRate": 90000, "parameters": {}}, True, False),
    ({"mimeType": "video/AV1", "clockRate": 90000, "parameters": {"profile": "0"}},
     {"mimeType": "video/av1", "clockRate": 90000, "parameters": {}}, True, True),
    ({"mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
     {"mimeType": "AUDIO/OPUS", "clockRate": 48000, "channels": 2}, True, True),
    ({"mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
     {"mimeType": "audio/opus", "clockRate": 48000, "channels": 1}, False, False),
    ({"mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
     {"mimeType": "audio/opus", "clockRate": 16000, "channels": 2}, False, False),
    ({"mimeType": "audio/multiopus", "clockRate": 48000, "channels": 6,
      "parameters": {"num_streams": 4, "coupled_streams": 2}},
     {"mimeType": "audio/multiopus", "clockRate": 48000, "channels": 6,
      "parameters": {"num_streams": 3, "coupled_streams": 2}}, False, False),
])
def test_match_codecs(a: dict, b: dict, strict: bool, expected: bool) -> None:
    assert ortc.match_codecs(copy.deepcopy(a), copy.deepcopy(b), strict=strict) is expected


@pytest.mark.parametrize(("offer", "answer", "result"), [
    # Without level asymmetry on both sides the answer takes the lower level.
    (h264("42e034"), h264("42e01f", **{"level-asymmetry-allowed": 1}), "42e01f"),
    (h264("42e00a"), h264("42e01f"), "42e00a"),
    (h264("42e034", **{"level-asymmetry-allowed": 1}),
     h264("42e01f", **{"level-asymmetry-allowed": "1"}), "42e034"),
    (h264("42f00b"), h264("42e01f"), "42f00b"),  # level 1b (constraint_set3 + level 11)
    (h264(None), h264(None), None),
])
def test_match_codecs_modify_writes_answer(offer: dict, answer: dict, result: Any) -> None:
    assert ortc.match_codecs(offer, answer, strict=True, modify=True)
    assert offer["parameters"].get("profile-level-id") == result
    assert "profile-level-id" not in answer["parameters"] or answer["parameters"][
        "profile-level-id"] in ("42e01f",)


@pytest.mark.parametrize(("value", "expected"), [
    ("42e01f", (ortc.H264_CONSTRAINED_BASELINE, 31)),
    ("42001f", (ortc.H264_BASELINE, 31)),
    ("4d001f", (ortc.H264_MAIN, 31)),
    ("4d801f", (ortc.H264_CONSTRAINED_BASELINE, 31)),
    ("58c01f", (ortc.H264_CONSTRAINED_BASELINE, 31)),
    ("58801f", (ortc.H264_BASELINE, 31)),
    ("640c34", (ortc.H264_CONSTRAINED_HIGH, 52)),
    ("640034", (ortc.H264_HIGH, 52)),
    ("F4001F", (ortc.H264_PREDICTIVE_HIGH_444, 31)),
    ("42f00b", (ortc.H264_CONSTRAINED_BASELINE, 0)),
    ("42e00b", (ortc.H264_CONSTRAINED_BASELINE, 11)),
    (640032, (ortc.H264_HIGH, 50)),
    ("000000", None), ("42e0", None), ("42e01f0", None), ("CHICKEN", None),
    ("42e000", None), ("42e035", None), ("6e001f", None), ("64ff1f", None), (None, None),
    (True, None), ("42e01g", None),
])
def test_parse_h264_profile_level_id(value: Any, expected: Any) -> None:
    assert ortc.parse_h264_profile_level_id(value) == expected


@pytest.mark.parametrize(("mode", "expected"), [
    ("L1T3", (1, 3, False)),
    ("S1T3", (1, 3, False)),
    ("L3T2_KEY", (3, 2, True)),
    ("S2T3", (2, 3, False)),
    ("foo", (1, 1, False)),
    ("", (1, 1, False)),
    (None, (1, 1, False)),
    ("S0T3", (1, 1, False)),
    ("S1T0", (1, 1, False)),
    ("L20T3", (20, 3, False)),
    ("S20T3", (20, 3, False)),
    ("S200T3", (1, 1, False)),
    ("L4T7_KEY_SHIFT", (4, 7, True)),
    ("l1t3", (1, 1, False)),
])
def test_parse_scalability_mode(mode: Any, expected: tuple[int, int, bool]) -> None:
    assert ortc.parse_scalability_mode(mode) == expected


# ---- validation of capabilities ----------------------------------------------------------

def test_validate_rtp_capabilities_normalises() -> None:
    caps = ortc.validate_rtp_capabilities({
        "codecs": [
            {"mimeType": "audio/opus", "kind": "video", "clockRate": 48000,
             "rtcpFeedback": [{"type": "nack"}], "unknown": 1},
            {"mimeType": "video/VP8", "clockRate": 90000, "channels": 7},
        ],
        "headerExtensions": [{"kind": "audio", "uri": URI_MID, "preferredId": 1}],
        "fecMechanisms": [],
    })
    assert caps == {
        "codecs": [
            {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 1,
             "parameters": {}, "rtcpFeedback": [fb("nack")]},
            {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000, "parameters": {},
             "rtcpFeedback": []},
        ],
        "headerExtensions": [{"kind": "audio", "uri": URI_MID, "preferredId": 1,
                              "preferredEncrypt": False, "direction": "sendrecv"}],
    }
    assert ortc.validate_rtp_capabilities({}) == {"codecs": [], "headerExtensions": []}


@pytest.mark.parametrize("caps", [
    None, [], "x",
    {"codecs": {}},
    {"codecs": [{"mimeType": "audio/opus"}]},
    {"codecs": [{"mimeType": "text/opus", "clockRate": 1}]},
    {"codecs": [{"mimeType": "audio/opus", "clockRate": 1, "preferredPayloadType": "100"}]},
    {"codecs": [{"mimeType": "video/rtx", "clockRate": 1, "parameters": {"apt": "x"}}]},
    {"codecs": [{"mimeType": "audio/opus", "clockRate": 1, "rtcpFeedback": [{"type": 1}]}]},
    {"headerExtensions": [{"uri": URI_MID, "preferredId": 1}]},
    {"headerExtensions": [{"kind": "data", "uri": URI_MID, "preferredId": 1}]},
    {"headerExtensions": [{"kind": "audio", "uri": URI_MID, "preferredId": "1"}]},
    {"headerExtensions": [{"kind": "audio", "uri": URI_MID, "preferredId": 1,
                           "direction": "both"}]},
    {"headerExtensions": [{"kind": "audio", "uri": URI_MID, "preferredId": 1,
                           "preferredEncrypt": "no"}]},
])
def test_validate_rtp_capabilities_errors(caps: Any) -> None:
    raises(ortc.INVALID_RTP_CAPABILITIES, ortc.validate_rtp_capabilities, caps)


def test_error_is_an_exception_with_code() -> None:
    err = OrtcError("cannot_consume", "nope")
    assert isinstance(err, Exception)
    assert err.code == "cannot_consume"
    assert str(err) == "nope"


# ---- property: arbitrary JSON never crashes validation -----------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
                | st.floats() | st.text(max_size=8)
                | st.sampled_from(["audio/opus", "video/VP8", "video/rtx", "video/H264",
                                   "L1T3", "42e01f", URI_MID, "apt"]))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["mimeType", "payloadType", "clockRate", "channels", "parameters",
                         "rtcpFeedback", "type", "parameter", "uri", "id", "ssrc", "rid",
                         "rtx", "apt", "encrypt", "scalabilityMode", "dtx", "maxBitrate",
                         "cname", "reducedSize", "kind", "preferredId", "direction",
                         "preferredPayloadType"]) | st.text(max_size=4),
        inner, max_size=5),
    max_leaves=25,
)
rtp_parameters_like = st.fixed_dictionaries(
    {},
    optional={"mid": json_values, "codecs": st.lists(json_values, max_size=3) | json_values,
              "headerExtensions": st.lists(json_values, max_size=3),
              "encodings": st.lists(json_values, max_size=3), "rtcp": json_values,
              "msid": json_values},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, rtp_parameters_like))
def test_validate_rtp_parameters_never_crashes(value: Any) -> None:
    snapshot = copy.deepcopy(value)
    try:
        out = ortc.validate_rtp_parameters(value)
    except OrtcError as exc:
        assert exc.code == ortc.INVALID_RTP_PARAMETERS
    else:
        assert isinstance(out, dict)
        json.dumps(out, allow_nan=False)  # only JSON-safe values survive
        assert ortc.validate_rtp_parameters(copy.deepcopy(out)) == out  # idempotent
    assert repr(value) == repr(snapshot)  # input untouched (repr: NaN != NaN)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, rtp_parameters_like),
       st.sampled_from(["audio", "video", "chicken"]))
def test_producer_chain_never_crashes(value: Any, kind: str) -> None:
    caps = ortc.generate_router_rtp_capabilities()
    try:
        params = ortc.validate_producer_rtp_parameters(kind, value)
        mapping = ortc.get_producer_rtp_parameters_mapping(params, caps)
        consumable = ortc.get_consumable_rtp_parameters(kind, params, caps, mapping)
        ortc.get_consumer_rtp_parameters(consumable, chrome_recv_caps(caps), True)
    except OrtcError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_validate_rtp_capabilities_never_crashes(value: Any) -> None:
    try:
        out = ortc.validate_rtp_capabilities(value)
    except OrtcError as exc:
        assert exc.code == ortc.INVALID_RTP_CAPABILITIES
    else:
        assert ortc.validate_rtp_capabilities(out) == out
