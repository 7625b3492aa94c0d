"""Pipes carry SRTP; plain RTP only on loopback, by setting (``pipe_plain_rtp``): two pysfu
servers on loopback with the setting on pipe a simulcast producer in the clear (read off
the wire: every layer's packets, headers and payloads as the host sent them), the edge
viewer gets it; a pipe refuses a far end that does not match (SRTP keys offered to a plain
pipe, a plain end that is not loopback); without the setting, or off loopback, pipes are
SRTP and refuse a far end without keys."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pysfu.config import load_config
from pysfu.pipe import PipeEnd, PipeError, pipe_to_router, plain_rtp_pipes
from pysfu.plain import PlainTransportError
from pysfu.testing.simulcast_peer import payload_layer
from pysfu.testing.webrtc_peer import parse_rtp
from tests.test_pipe import ROOM_A, ROOM_B, Setup, consume_piped, wait_for
from tests.test_pipe import setup as setup  # noqa: F401  (fixture)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"pipe_plain_rtp": True}


def test_plain_rtp_pipes_only_by_setting_and_on_loopback() -> None:
    assert not plain_rtp_pipes(load_config(overrides={"rtc_ip": "127.0.0.1"}))
    assert plain_rtp_pipes(load_config(overrides={"rtc_ip": "127.0.0.1",
                                                  "pipe_plain_rtp": True}))
    assert plain_rtp_pipes(load_config(overrides={"rtc_ip": "::1", "pipe_plain_rtp": True}))
    for ip in ("0.0.0.0", "10.1.2.3"):
        assert not plain_rtp_pipes(load_config(overrides={
            "rtc_ip": ip, "announced_ip": "192.0.2.7", "pipe_plain_rtp": True}))


async def test_loopback_pipe_carries_plain_rtp_by_setting(setup: Setup) -> None:
    room_a, room_b = setup.room(setup.a, ROOM_A), setup.room(setup.b, ROOM_B)
    # A pipe end toward a socket of ours: what crosses is RTP in the clear.
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tap:
        tap.bind(("127.0.0.1", 0))
        tap.setblocking(False)
        pipe = room_a.open_pipe()
        end = pipe.local_end()
        assert end.srtp is None and "srtpParameters" not in end.as_dict()
        assert PipeEnd.from_dict(end.as_dict()) == end
        pipe.connect_end(PipeEnd("127.0.0.1", tap.getsockname()[1], None))
        _, offer = room_a.pipe_consume(pipe, setup.producer_id)
        ssrcs = {e["ssrc"]: i for i, e in enumerate(offer["rtpParameters"]["encodings"])}
        pts = {c["payloadType"] for c in offer["rtpParameters"]["codecs"]}
        layers: dict[int, set[int]] = {}
        with trio.move_on_after(10):
            while len(layers) < 3 or min(len(v) for v in layers.values()) < 3:
                await trio.lowlevel.wait_readable(tap)
                rtp = parse_rtp(tap.recv(2048))
                assert rtp.ssrc in ssrcs and rtp.pt in pts, rtp
                layer, frame = payload_layer(rtp.payload)
                assert layer == ssrcs[rtp.ssrc], (layer, rtp.ssrc)  # the host's own payload
                layers.setdefault(layer, set()).add(frame)
        assert sorted(layers) == [0, 1, 2], layers
        room_a.close_pipe(pipe)
    # Both sides plain: pipe_to_router works and the edge viewer gets the media.
    link = pipe_to_router(setup.producer_id, room_a, room_b)
    assert link.source_pipe.srtp_suite is None and link.target_pipe.srtp_suite is None
    await consume_piped(setup)
    await wait_for(lambda: len(setup.edge.packets) >= 15, "media at the edge")
    assert set(setup.edge.layers()) == {2}
    stats = setup.a.media.stats(link.source_pipe.handle)
    assert stats is not None and stats["wrongSourceDropped"] == 0


async def test_plain_rtp_pipe_refuses_keys_and_non_loopback_ends(setup: Setup) -> None:
    room_a = setup.room(setup.a, ROOM_A)
    pipe = room_a.open_pipe()
    keys = {"cryptoSuite": "AEAD_AES_128_GCM", "keyBase64": "A" * 38 + "=="}
    with pytest.raises(PipeError, match="SRTP offered"):
        pipe.connect_end(PipeEnd.from_dict({"ip": "127.0.0.1", "port": 9,
                                            "srtpParameters": keys}))
    with pytest.raises(PipeError, match="loopback"):
        pipe.connect_end(PipeEnd("192.0.2.1", 9, None))
    assert not pipe.connected
    room_a.close_pipe(pipe)
    assert setup.a.media.plain_sockets() == 0


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=50),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=20), inner, max_size=4), max_leaves=12)
_ends = st.fixed_dictionaries({}, optional={
    "ip": st.sampled_from(["127.0.0.1", "::1", "192.0.2.1", "x"]) | _json,
    "port": st.integers(-5, 70000) | _json,
    "srtpParameters": st.fixed_dictionaries({}, optional={
        "cryptoSuite": st.sampled_from(["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"]) | _json,
        "keyBase64": st.sampled_from(["A" * 38 + "==", "A" * 40, "!!"]) | _json}) | _json})


@given(_ends | _json)
def test_pipe_end_from_any_data_is_an_end_or_a_clear_error(data: Any) -> None:
    """A pipe end comes from another node as plain data: anything is a PipeEnd that
    round-trips, or PipeError / PlainTransportError, never another exception."""
    try:
        end = PipeEnd.from_dict(data)
    except (PipeError, PlainTransportError):
        return
    assert ipaddress.ip_address(end.ip) and 1 <= end.port <= 65535
    assert PipeEnd.from_dict(end.as_dict()) == end


def test_pipe_end_addresses_are_unicast_ips() -> None:
    for ip in ("x", "", "0.0.0.0", "::", "224.0.0.1", "localhost"):
        with pytest.raises(PipeError, match="ip must be"):
            PipeEnd.from_dict({"ip": ip, "port": 9})
    assert PipeEnd.from_dict({"ip": "::1", "port": 9}) == PipeEnd("::1", 9, None)
