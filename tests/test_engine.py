"""The native engine over real UDP on 127.0.0.1, with libsrtp (pylibsrtp) as the independent peer.

No DTLS here: keys are handed to the engine directly with ``set_srtp`` and tuples bound with
``bind_tuple``, as the control plane does after ICE and DTLS.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
from pylibsrtp import Policy, Session

from pysfu import _native
from pysfu.dtls import SrtpKeys
from pysfu.testing import webrtc_peer

Engine = _native.Engine

PROFILE = "AES_CM_128_HMAC_SHA1_80"
VP8_PT = 96  # the host's PT
ROUTER_VP8 = 101  # the router's PT
HOST_SSRC = 0x11223344
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def vp8_payload(key_frame: bool, size: int = 200) -> bytes:
    # VP8 payload descriptor: S=1, PID=0 (no X). Then the frame tag: bit 0 (P) = 0 for a key
    # frame, show_frame set; key frames carry the start code 9d 01 2a and 640x480.
    if key_frame:
        body = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])
    else:
        body = bytes([0x11, 0x02, 0x00])
    return bytes([0x10]) + body + b"\xab" * (size - len(body) - 1)


def rtp(
    seq: int,
    payload: bytes,
    *,
    ssrc: int = HOST_SSRC,
    pt: int = VP8_PT,
    mid: bytes = b"0",
    ts: int = 1234,
) -> bytes:
    ext = bytes([(4 << 4) | (len(mid) - 1)]) + mid  # MID at the host's id 4
    ext += bytes([(2 << 4) | 2, 1, 2, 3])  # abs-send-time at id 2
    ext += bytes([(9 << 4), 0x42])  # something the router does not know
    ext += b"\0" * (-len(ext) % 4)
    header = struct.pack("!BBHII", 0x90, pt, seq & 0xFFFF, ts, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + payload


def parse_rtp(data: bytes) -> dict:
    b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
    pos = 12 + 4 * (b0 & 0x0F)
    exts: dict[int, bytes] = {}
    if b0 & 0x10:
        profile, words = struct.unpack("!HH", data[pos : pos + 4])
        block = data[pos + 4 : pos + 4 + 4 * words]
        pos += 4 + 4 * words
        assert profile == 0xBEDE
        i = 0
        while i < len(block):
            if block[i] == 0:
                i += 1
                continue
            ext_id, length = block[i] >> 4, (block[i] & 0x0F) + 1
            exts[ext_id] = block[i + 1 : i + 1 + length]
            i += 1 + length
    return {
        "pt": b1 & 0x7F,
        "seq": seq,
        "ts": ts,
        "ssrc": ssrc,
        "exts": exts,
        "payload": data[pos:],
    }


@dataclass
class Peer:
    """One remote endpoint: its socket, and libsrtp sessions keyed as a browser would be."""

    handle: int
    sock: socket.socket
    tx: Session  # protects what the peer sends (= engine's remote keys)
    rx: Session  # unprotects what the engine sends (= engine's local keys)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def recv_all(self, timeout: float = 0.3) -> list[bytes]:
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recv(4096))
            except (TimeoutError, BlockingIOError):
                return out
            self.sock.settimeout(0.05)


def policy(key: bytes, salt: bytes, direction: int) -> Policy:
    return Policy(
        key=key + salt, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    )


def connect_peer(eng: Engine, handle: int, ufrag: str) -> Peer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    local_key, local_salt = os.urandom(16), os.urandom(14)
    remote_key, remote_salt = os.urandom(16), os.urandom(14)
    eng.add_transport(handle, ufrag, "pw")
    # As the control plane does: ICE nominates the tuple, DTLS completes with it.
    eng.bind_tuple(handle, "127.0.0.1", sock.getsockname()[1], True)
    eng.set_srtp(handle, SrtpKeys(PROFILE, local_key, local_salt, remote_key, remote_salt),
                 ("127.0.0.1", sock.getsockname()[1]))
    tx = Session(policy(remote_key, remote_salt, Policy.SSRC_ANY_OUTBOUND))
    rx = Session(policy(local_key, local_salt, Policy.SSRC_ANY_INBOUND))
    return Peer(handle, sock, tx, rx)


def producer_spec(**over) -> dict:
    spec = {
        "kind": "video",
        "mid": "0",
        "codecs": [
            {
                "payload_type": VP8_PT,
                "mapped_payload_type": ROUTER_VP8,
                "mime": "video/VP8",
                "rtx_payload_type": 97,
                "mapped_rtx_payload_type": 102,
            }
        ],
        "encodings": [{"ssrc": None, "rtx_ssrc": None, "rid": None, "mapped_ssrc": 777}],
        "header_extensions": [
            {"id": 4, "router_id": 1, "uri": MID_URI},
            {"id": 2, "router_id": 3, "uri": ABS_SEND_TIME_URI},
        ],
        "key_frame_request": "pli",
        "paused": False,
    }
    spec.update(over)
    return spec


def consumer_spec(ssrc: int, mid: str, paused: bool) -> dict:
    return {
        "ssrc": ssrc,
        "rtx_ssrc": None,
        "mid": mid,
        "mid_ext_id": 1,
        "payload_types": {ROUTER_VP8: ROUTER_VP8},
        "paused": paused,
    }


def plis(peer: Peer, datagrams: list[bytes]) -> list[int]:
    """Media SSRCs of the PLIs in SRTCP datagrams (decrypted with libsrtp)."""
    found = []
    for d in datagrams:
        plain = peer.rx.unprotect_rtcp(d)
        pos = 0
        while pos + 4 <= len(plain):
            fmt, pt, length = (
                plain[pos] & 0x1F,
                plain[pos + 1],
                struct.unpack("!H", plain[pos + 2 : pos + 4])[0],
            )
            if pt == 206 and fmt == 1:
                found.append(struct.unpack("!I", plain[pos + 8 : pos + 12])[0])
            pos += 4 * (length + 1)
    return found


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine("127.0.0.1", 0)
    yield eng
    eng.close()


class Room:
    def __init__(self, eng: Engine, second_paused: bool = True) -> None:
        self.eng = eng
        self.host = connect_peer(eng, 1, "hostufrag")
        self.viewers = [connect_peer(eng, 2, "v1ufrag"), connect_peer(eng, 3, "v2ufrag")]
        eng.add_producer(10, 1, producer_spec())
        eng.add_consumer(20, 2, 10, consumer_spec(0xAAAA0001, "c0", False))
        eng.add_consumer(30, 3, 10, consumer_spec(0xBBBB0001, "c1", second_paused))
        self.seq = 65530  # wraps during the test
        self.sent: list[bytes] = []

    def send(self, key_frame: bool) -> bytes:
        packet = self.host.tx.protect(rtp(self.seq, vp8_payload(key_frame), ts=self.seq * 3000))
        self.seq = (self.seq + 1) & 0xFFFF
        self.host.sock.sendto(packet, ("127.0.0.1", self.eng.port))
        self.sent.append(packet)
        return packet


def received(viewer: Peer, expect: int | None = None) -> list[dict]:
    datagrams = []
    while True:
        datagrams += viewer.recv_all(0.5 if expect else 0.2)
        if expect is None or len(datagrams) >= expect:
            break
        if not datagrams:
            break
    return [parse_rtp(viewer.rx.unprotect(d)) for d in datagrams]


def test_fan_out_pause_resume_and_key_frames(engine: Engine) -> None:
    room = Room(engine)
    room.send(True)
    for _ in range(9):
        room.send(False)
    got = received(room.viewers[0], 10)
    assert len(got) == 10
    for i, p in enumerate(got):
        assert p["ssrc"] == 0xAAAA0001
        assert p["pt"] == ROUTER_VP8
        assert p["exts"][1] == b"c0"  # the consumer's MID at the router's id
        assert p["exts"][3] == b"\x01\x02\x03"  # abs-send-time moved to router id 3
        assert 9 not in p["exts"] and 4 not in p["exts"]  # unknown and producer ids are gone
        assert p["seq"] == (got[0]["seq"] + i) & 0xFFFF
    assert 1000 <= got[0]["seq"] <= 32767
    assert got[0]["payload"] == vp8_payload(True)
    assert [p["ts"] for p in got] == [((65530 + i) & 0xFFFF) * 3000 for i in range(10)]
    # The paused consumer gets nothing.
    assert room.viewers[1].recv_all(0.2) == []

    # Resume: the host gets a PLI for its own SSRC, the consumer restarts at a key frame.
    room.host.recv_all(0.05)  # discard anything earlier
    engine.resume_consumer(30)
    assert plis(room.host, room.host.recv_all(0.5)) == [HOST_SSRC]
    room.send(False)
    room.send(False)
    assert room.viewers[1].recv_all(0.2) == []
    room.send(True)
    room.send(False)
    resumed = received(room.viewers[1], 2)
    assert [p["ssrc"] for p in resumed] == [0xBBBB0001] * 2
    assert resumed[0]["payload"] == vp8_payload(True)
    assert resumed[1]["seq"] == (resumed[0]["seq"] + 1) & 0xFFFF
    assert resumed[0]["exts"][1] == b"c1"
    # The first viewer saw every packet, seq continuous across the whole run.
    more = received(room.viewers[0], 4)
    seqs = [p["seq"] for p in got + more]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(14)]

    # Pause again: nothing; a viewer PLI while paused is not forwarded upstream either.
    engine.pause_consumer(30)
    room.send(False)
    assert room.viewers[1].recv_all(0.2) == []

    stats = engine.stats(20)
    assert stats["type"] == "consumer" and stats["packetsSent"] == 15
    assert engine.stats(30)["packetsSent"] == 2
    assert engine.stats(10)["packetsReceived"] == 15
    assert engine.stats(1)["packetsReceived"] >= 15
    assert engine.counts() == {"transports": 3, "producers": 1, "consumers": 2, "streams": 3,
                              "tuples": 3, "tcp_connections": 0}


def test_viewer_pli_is_rate_limited_toward_the_host(engine: Engine) -> None:
    room = Room(engine, second_paused=False)
    room.send(True)
    received(room.viewers[0], 1)
    received(room.viewers[1], 1)
    room.host.recv_all(0.05)
    for viewer, ssrc in ((room.viewers[0], 0xAAAA0001), (room.viewers[1], 0xBBBB0001)):
        pli = struct.pack("!BBHII", 0x81, 206, 2, ssrc, ssrc)
        for _ in range(3):
            viewer.sock.sendto(viewer.tx.protect_rtcp(pli), ("127.0.0.1", engine.port))
    # Six viewer PLIs within a second → one upstream PLI.
    assert plis(room.host, room.host.recv_all(0.4)) == [HOST_SSRC]
    assert engine.stats(20)["keyFrameRequestsReceived"] == 3
    assert engine.stats(10)["keyFrameRequestsSent"] == 1
    # Still wanted after a second → asked again, once (receiver reports arrive meanwhile).
    window: list[bytes] = []
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        window += room.host.recv_all(0.1)
    assert plis(room.host, window) == [HOST_SSRC]


def test_replay_tamper_unknown_source_and_demux_drops(engine: Engine) -> None:
    room = Room(engine)
    first = room.send(True)
    room.send(False)
    assert len(received(room.viewers[0], 2)) == 2
    room.host.sock.sendto(first, ("127.0.0.1", engine.port))  # replay
    tampered = bytearray(room.host.tx.protect(rtp(100, vp8_payload(False))))
    tampered[-15] ^= 0x01
    room.host.sock.sendto(bytes(tampered), ("127.0.0.1", engine.port))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.sendto(room.host.tx.protect(rtp(101, vp8_payload(False))), ("127.0.0.1", engine.port))
    stranger.sendto(b"\x16\xfe\xfd" + b"\0" * 20, ("127.0.0.1", engine.port))  # DTLS, unknown
    stranger.sendto(b"\x45garbage", ("127.0.0.1", engine.port))
    stranger.close()
    assert room.viewers[0].recv_all(0.3) == []
    drops = engine.drops()
    assert drops["srtp_replay"] == 1
    assert drops["srtp_auth"] == 1
    assert drops["unknown_source"] == 2
    assert drops["demux"] == 1
    assert drops["panic"] == 0


def stun_binding_request(username: str, password: str = "pw") -> bytes:
    """A Binding request with MESSAGE-INTEGRITY and FINGERPRINT (the engine checks both)."""
    return webrtc_peer.stun_binding_request(username, password)


def test_stun_goes_up_and_the_fd_becomes_readable(engine: Engine) -> None:
    engine.add_transport(5, "abcd", "pw")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    fd = engine.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    msg = stun_binding_request("abcd:x")
    sock.sendto(msg, ("127.0.0.1", engine.port))
    assert select.select([fd], [], [], 2)[0] == [fd]
    items = engine.drain()
    assert items == [("stun", 5, "127.0.0.1", sock.getsockname()[1], msg, "udp")]
    assert select.select([fd], [], [], 0)[0] == []  # drain reset it
    assert engine.drain() == []
    # Unknown ufrag: dropped.
    sock.sendto(stun_binding_request("zzz:x"), ("127.0.0.1", engine.port))
    assert select.select([fd], [], [], 0.3)[0] == []
    assert engine.drops()["stun_unknown"] == 1
    # The right ufrag without the password: dropped in the engine, Python never sees it.
    sock.sendto(stun_binding_request("abcd:x", "guess"), ("127.0.0.1", engine.port))
    assert select.select([fd], [], [], 0.3)[0] == []
    assert engine.drops()["stun_integrity"] == 1
    assert engine.stats(5)["stunRejected"] == 1
    # Once bound, DTLS from that address goes up too; Python can answer through the engine.
    engine.bind_tuple(5, "127.0.0.1", sock.getsockname()[1], True)
    sock.sendto(b"\x16\xfe\xfd" + b"\1" * 20, ("127.0.0.1", engine.port))
    assert select.select([fd], [], [], 2)[0] == [fd]
    assert engine.drain()[0][:2] == ("dtls", 5)
    engine.send(5, "127.0.0.1", sock.getsockname()[1], b"\x16answer")
    sock.settimeout(2)
    data, src = sock.recvfrom(100)
    assert (data, src[1]) == (b"\x16answer", engine.port)
    sock.close()


async def test_trio_waits_on_the_fd(engine: Engine) -> None:
    engine.add_transport(5, "abcd", "pw")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.sendto(stun_binding_request("abcd:x"), ("127.0.0.1", engine.port))
    with trio.fail_after(2):
        await trio.lowlevel.wait_readable(engine.fileno())
    assert [i[:2] for i in engine.drain()] == [("stun", 5)]
    sock.close()


def test_remove_transport_returns_counts_to_zero(engine: Engine) -> None:
    room = Room(engine)
    room.send(True)
    assert engine.counts()["consumers"] == 2
    removed = engine.remove_transport(1)  # the host: its producer and both consumers go
    assert removed["producers"] == [10] and sorted(removed["consumers"]) == [20, 30]
    assert engine.counts() == {"transports": 2, "producers": 0, "consumers": 0, "streams": 0,
                              "tuples": 2, "tcp_connections": 0}
    with pytest.raises(KeyError):
        engine.stats(20)
    assert engine.remove_transport(2) == {"producers": [], "consumers": []}
    engine.remove_transport(3)
    assert engine.counts() == {"transports": 0, "producers": 0, "consumers": 0, "streams": 0,
                              "tuples": 0, "tcp_connections": 0}
    # The ufrag is free again.
    engine.add_transport(1, "hostufrag", "pw")


def test_bad_calls_raise_clear_errors(engine: Engine) -> None:
    engine.add_transport(1, "u1", "pw")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_transport(1, "u2", "pw")
    with pytest.raises(ValueError, match="ufrag"):
        engine.add_transport(2, "u1", "pw")
    with pytest.raises(KeyError):
        engine.remove_transport(99)
    with pytest.raises(KeyError):
        engine.bind_tuple(99, "127.0.0.1", 5, True)
    with pytest.raises(ValueError, match="IP"):
        engine.bind_tuple(1, "not-an-ip", 5, True)
    with pytest.raises(ValueError, match="profile"):
        engine.set_srtp(1, SrtpKeys("NOPE", b"", b"", b"", b""))
    with pytest.raises(ValueError, match="key"):
        engine.set_srtp(1, SrtpKeys(PROFILE, b"short", b"", b"", b""))
    with pytest.raises(ValueError, match="srtp keys: .*profile"):
        engine.set_srtp(1, {"profile": PROFILE})
    with pytest.raises(KeyError):
        engine.add_producer(10, 99, producer_spec())
    with pytest.raises(ValueError, match="kind"):
        engine.add_producer(10, 1, producer_spec(kind="smell"))
    with pytest.raises(ValueError, match="codecs"):
        engine.add_producer(10, 1, producer_spec(codecs="nope"))
    with pytest.raises(ValueError, match="payload_type"):
        engine.add_producer(
            10,
            1,
            producer_spec(
                codecs=[{"payload_type": 300, "mapped_payload_type": 1, "mime": "video/VP8"}]
            ),
        )
    with pytest.raises(ValueError, match="key_frame_request"):
        engine.add_producer(10, 1, producer_spec(key_frame_request="please"))
    with pytest.raises(ValueError):
        engine.add_producer(10, 1, "not a dict")
    engine.add_producer(10, 1, producer_spec())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_producer(10, 1, producer_spec(mid="1"))
    with pytest.raises(KeyError):
        engine.add_consumer(20, 1, 99, consumer_spec(1, "a", False))
    with pytest.raises(ValueError, match="ssrc"):
        engine.add_consumer(20, 1, 10, {"payload_types": {}})
    for call in (
        engine.pause_consumer,
        engine.resume_consumer,
        engine.remove_consumer,
        engine.pause_producer,
        engine.resume_producer,
        engine.remove_producer,
    ):
        with pytest.raises(KeyError):
            call(12345)
    with pytest.raises(KeyError):
        engine.stats(12345)
    assert engine.drops()["panic"] == 0


def test_specs_are_the_engines_typed_contract(engine: Engine) -> None:
    """Specs are taken as declared in Rust (router/spec.rs, mirrored by pysfu/_native.pyi):
    optional keys may be left out, a bad value is a ValueError naming the field."""
    engine.add_transport(1, "u1", "pw")
    minimal = {
        "kind": "audio",
        "codecs": [{"payload_type": 111, "mapped_payload_type": 100, "mime": "audio/opus"}],
        "encodings": [{"mapped_ssrc": 5}],
    }
    engine.add_producer(10, 1, minimal)
    engine.add_consumer(20, 1, 10, {"ssrc": 7, "payload_types": {100: 100}})
    assert engine.counts()["consumers"] == 1
    bad_codec = [{"payload_type": 111, "mapped_payload_type": 1000, "mime": "audio/opus"}]
    with pytest.raises(ValueError, match=r"CodecSpec\.mapped_payload_type"):
        engine.add_producer(11, 1, {**minimal, "codecs": bad_codec})
    with pytest.raises(ValueError, match="missing key 'mapped_ssrc'"):
        engine.add_producer(11, 1, {**minimal, "encodings": [{"ssrc": 1}]})
    with pytest.raises(ValueError, match=r"ConsumerSpec\.payload_types"):
        engine.add_consumer(21, 1, 10, {"ssrc": 8, "payload_types": [100]})


def test_close_frees_the_port_and_is_idempotent() -> None:
    eng = Engine("127.0.0.1", 0)
    port = eng.port
    assert port > 0
    eng.add_transport(1, "u", "pw")
    eng.close()
    eng.close()
    with pytest.raises(ValueError, match="closed"):
        eng.counts()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))  # free again
    s.close()
    # A fixed port works too, and so does dropping the object without close().
    eng = Engine("127.0.0.1", port)
    assert eng.port == port
    del eng
    import gc

    gc.collect()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.close()
    with pytest.raises(ValueError, match="bind"):
        Engine("256.0.0.1", 0)
