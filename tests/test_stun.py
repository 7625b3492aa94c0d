"""STUN codec: RFC 5769 vectors, a hand-built Chrome-style request, malformed input, fuzz."""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysfu import stun
from pysfu.stun import StunError, StunMessage


def unhex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# RFC 5769 §2.1-2.4, typed in from the RFC text.
TXID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
RFC5769_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
RFC5769_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
RFC5769_LONG_TERM = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""")


# ---- RFC 5769 ---------------------------------------------------------------------------------


def test_rfc5769_sample_request() -> None:
    msg = stun.parse(RFC5769_REQUEST)
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_REQUEST)
    assert msg.transaction_id == TXID
    assert msg.software == "STUN test client"
    assert msg.username == "evtj:h6vY"
    assert msg.priority == 0x6E0001FF
    assert msg.ice_controlled == 0x932FF9B151263B36
    assert msg.ice_controlling is None
    assert not msg.use_candidate
    assert stun.verify_integrity(msg, SHORT_TERM_PASSWORD)
    assert not stun.verify_integrity(msg, b"wrong")
    assert stun.verify_fingerprint(msg)


def test_rfc5769_ipv4_response() -> None:
    msg = stun.parse(RFC5769_IPV4_RESPONSE)
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_SUCCESS)
    assert msg.software == "test vector"
    assert msg.xor_mapped_address == ("192.0.2.1", 32853)
    assert stun.verify_integrity(msg, SHORT_TERM_PASSWORD)
    assert stun.verify_fingerprint(msg)
    assert stun.xor_address_attr(("192.0.2.1", 32853), TXID) == unhex("00 01 a1 47 e1 12 a6 43")


def test_rfc5769_ipv6_response() -> None:
    msg = stun.parse(RFC5769_IPV6_RESPONSE)
    assert msg.xor_mapped_address == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert stun.verify_integrity(msg, SHORT_TERM_PASSWORD)
    assert stun.verify_fingerprint(msg)


def test_rfc5769_long_term_credentials() -> None:
    msg = stun.parse(RFC5769_LONG_TERM)
    assert msg.username == "マトリックス"
    assert msg.get(stun.ATTR_NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    assert msg.get(stun.ATTR_REALM) == b"example.org"
    assert not stun.verify_fingerprint(msg)  # this vector has none
    key = stun.long_term_key("マトリックス", "example.org", "TheMatrIX")
    assert stun.verify_integrity(msg, key)
    assert not stun.verify_integrity(msg, stun.long_term_key("x", "example.org", "TheMatrIX"))


def test_rfc5769_request_reencodes_byte_for_byte() -> None:
    # Our encoder pads with zeros where the RFC pads with spaces; fix that up, then compare.
    msg = stun.parse(RFC5769_REQUEST)
    again = stun.parse(msg.encode(SHORT_TERM_PASSWORD, fingerprint=True))
    assert again.attributes == msg.attributes[:-2] + again.attributes[-2:]
    assert stun.verify_integrity(again, SHORT_TERM_PASSWORD)
    assert stun.verify_fingerprint(again)
    ipv4 = stun.parse(RFC5769_IPV4_RESPONSE)
    # SOFTWARE "test vector" is 11 bytes: its one byte of padding is 0x20 in the RFC.
    encoded = ipv4.encode(SHORT_TERM_PASSWORD, fingerprint=True)
    assert encoded[:35] == RFC5769_IPV4_RESPONSE[:35]
    assert encoded[36:44] == RFC5769_IPV4_RESPONSE[36:44]


# ---- a Chrome-style request built by hand -----------------------------------------------------


def _attr(t: int, v: bytes) -> bytes:
    return struct.pack("!HH", t, len(v)) + v + b"\x00" * ((4 - len(v) % 4) % 4)


def chrome_like_request(
    txid: bytes, username: bytes, password: bytes, *, network_info: bool = True
) -> bytes:
    """What libwebrtc sends to an ICE-lite server, assembled byte by byte."""
    attrs = _attr(0x0006, username)
    if network_info:
        attrs += _attr(0xC057, b"\x00\x01\x00\x0a")  # GOOG-NETWORK-INFO: unknown, optional
    attrs += _attr(0x802A, bytes.fromhex("1122334455667788"))  # ICE-CONTROLLING
    attrs += _attr(0x0025, b"")  # USE-CANDIDATE
    attrs += _attr(0x0024, struct.pack("!I", 1853824767))  # PRIORITY
    header = struct.pack("!HHI", 0x0001, len(attrs) + 24, 0x2112A442) + txid
    mac = hmac.new(password, header + attrs, hashlib.sha1).digest()
    attrs += _attr(0x0008, mac)
    header = struct.pack("!HHI", 0x0001, len(attrs) + 8, 0x2112A442) + txid
    crc = zlib.crc32(header + attrs) ^ 0x5354554E
    attrs += _attr(0x8028, struct.pack("!I", crc))
    return header + attrs


def test_chrome_like_request_parses_and_verifies() -> None:
    txid = bytes(range(12))
    data = chrome_like_request(txid, b"serverufrag:chrm", b"serverpassword0123456789")
    msg = stun.parse(data)
    assert msg.is_request and msg.method == stun.METHOD_BINDING
    assert msg.username == "serverufrag:chrm"
    assert msg.ice_controlling == 0x1122334455667788
    assert msg.use_candidate
    assert msg.priority == 1853824767
    assert msg.get(0xC057) == b"\x00\x01\x00\x0a"
    assert stun.verify_integrity(msg, b"serverpassword0123456789")
    assert not stun.verify_integrity(msg, b"serverpassword0123456780")
    assert stun.verify_fingerprint(msg)
    assert stun.peek_local_ufrag(data) == "serverufrag"


def test_builder_matches_hand_built_bytes() -> None:
    txid = bytes(range(12, 24))
    by_hand = chrome_like_request(txid, b"abcd:efgh", b"pw" * 12, network_info=False)
    built = stun.binding_request(
        "abcd:efgh", "pw" * 12, priority=1853824767, transaction_id=txid,
        ice_controlling=0x1122334455667788, use_candidate=True,
    )
    assert built == by_hand


# ---- builders and round trips -----------------------------------------------------------------


@pytest.mark.parametrize("addr", [("203.0.113.7", 40123), ("2001:db8::1", 1), ("::", 65535)])
def test_binding_success_round_trip(addr: tuple[str, int]) -> None:
    txid = stun.new_transaction_id()
    data = stun.binding_success(txid, addr, "secret-password")
    msg = stun.parse(data)
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_SUCCESS)
    assert msg.transaction_id == txid
    assert msg.xor_mapped_address == addr
    assert [t for t, _ in msg.attributes] == [
        stun.ATTR_XOR_MAPPED_ADDRESS, stun.ATTR_MESSAGE_INTEGRITY, stun.ATTR_FINGERPRINT,
    ]
    assert stun.verify_integrity(msg, b"secret-password")
    assert stun.verify_fingerprint(msg)


@pytest.mark.parametrize("code", [400, 401, 487])
def test_error_responses(code: int) -> None:
    txid = stun.new_transaction_id()
    msg = stun.parse(stun.error_response(txid, code))
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_ERROR)
    assert msg.error_code == (code, stun.ERROR_REASONS[code])
    assert msg.integrity_offset is None
    assert stun.verify_fingerprint(msg)
    signed = stun.parse(stun.error_response(txid, code, password="pw"))
    assert stun.verify_integrity(signed, b"pw")


def test_binding_request_round_trip_with_all_ice_attributes() -> None:
    data = stun.binding_request(
        "a:b", "password", priority=7, ice_controlling=1, use_candidate=True, nomination=5,
        software="bench",
    )
    msg = stun.parse(data)
    assert msg.username == "a:b"
    assert msg.priority == 7
    assert msg.ice_controlling == 1
    assert msg.use_candidate
    assert msg.nomination == 5
    assert msg.software == "bench"
    assert stun.verify_integrity(msg, b"password")
    controlled = stun.parse(stun.binding_request("a:b", "p", priority=1, ice_controlled=9))
    assert controlled.ice_controlled == 9


def test_message_type_bits() -> None:
    for method, cls, wire in [(1, 0, 0x0001), (1, 1, 0x0011), (1, 2, 0x0101), (1, 3, 0x0111),
                              (0x003, 0, 0x0003), (0xFFF, 3, 0x3FFF)]:
        data = StunMessage(method, cls, bytes(12)).encode()
        assert struct.unpack("!H", data[:2])[0] == wire
        msg = stun.parse(data)
        assert (msg.method, msg.cls) == (method, cls)


def test_attributes_after_integrity_are_ignored() -> None:
    # USE-CANDIDATE appended after MESSAGE-INTEGRITY is not authenticated: must be dropped.
    signed = StunMessage(1, 0, bytes(12)).add(stun.ATTR_PRIORITY, b"\0\0\0\1").encode(b"k")
    tampered = signed + _attr(stun.ATTR_USE_CANDIDATE, b"")
    tampered = tampered[:2] + struct.pack("!H", len(tampered) - 20) + tampered[4:]
    msg = stun.parse(tampered)
    assert not msg.use_candidate
    assert stun.verify_integrity(msg, b"k")


def test_integrity_and_fingerprint_detect_bit_flips() -> None:
    data = bytearray(stun.binding_request("u:v", "pw", priority=1))
    data[25] ^= 0x01  # inside USERNAME
    msg = stun.parse(bytes(data))
    assert not stun.verify_integrity(msg, b"pw")
    assert not stun.verify_fingerprint(msg)


def test_missing_integrity_and_fingerprint_verify_false() -> None:
    msg = stun.parse(StunMessage(1, 0, bytes(12)).encode())
    assert not stun.verify_integrity(msg, b"x")
    assert not stun.verify_fingerprint(msg)


def test_is_stun_and_peek() -> None:
    assert stun.is_stun(RFC5769_REQUEST)
    assert not stun.is_stun(b"\x16\xfe\xfd" + bytes(30))
    assert stun.peek_local_ufrag(RFC5769_REQUEST) == "evtj"
    assert stun.peek_local_ufrag(RFC5769_IPV4_RESPONSE) is None
    assert stun.peek_local_ufrag(b"junk") is None


# ---- malformed input --------------------------------------------------------------------------

GOOD = stun.binding_request("abc:def", "pw", priority=1)


def _set_len(data: bytes, n: int) -> bytes:
    return data[:2] + struct.pack("!H", n) + data[4:]


_extra = GOOD + _attr(stun.ATTR_SOFTWARE, b"x")
AFTER_FINGERPRINT = _set_len(_extra, len(_extra) - 20)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        GOOD[:19],  # truncated header
        GOOD[:-1],  # truncated body
        GOOD + b"\0\0\0\0",  # trailing bytes beyond the length field
        b"\x80" + GOOD[1:],  # top bits set
        GOOD[:4] + b"\x21\x12\xa4\x43" + GOOD[8:],  # bad cookie
        _set_len(GOOD, len(GOOD) - 20 + 4),  # length larger than the datagram
        _set_len(GOOD, 2) + b"",  # not a multiple of 4
        _set_len(GOOD[:20] + b"\x00\x06\x00\x40abcd", 8),  # attribute overruns
        _set_len(GOOD[:20] + b"\x00\x06", 0) + b"",  # dangling bytes with length 0
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_PRIORITY, b"\0\0\1").encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_ICE_CONTROLLING, b"\0" * 4).encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_XOR_MAPPED_ADDRESS, b"\0\x03\0\0abcd").encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_XOR_MAPPED_ADDRESS, b"\0\x02\0\0abcd").encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_USERNAME, b"\xff\xfe").encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_USERNAME, b"a" * 600).encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_ERROR_CODE, b"\0\0").encode(),
        StunMessage(1, 0, bytes(12)).add(stun.ATTR_ERROR_CODE, b"\0\0\x09\x00").encode(),
        AFTER_FINGERPRINT,
    ],
)
def test_malformed_raises_stun_error(data: bytes) -> None:
    with pytest.raises(StunError):
        stun.parse(data)


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(StunError):
        stun.parse("not bytes")  # type: ignore[arg-type]


def test_encode_rejects_bad_transaction_id() -> None:
    with pytest.raises(StunError):
        StunMessage(1, 0, b"short").encode()


# ---- fuzz ---------------------------------------------------------------------------------------


def _exercise(data: bytes) -> None:
    try:
        msg = stun.parse(data)
    except StunError:
        return
    # Everything reachable from a parsed message must be safe too.
    stun.verify_integrity(msg, b"key")
    stun.verify_fingerprint(msg)
    _ = (msg.username, msg.priority, msg.ice_controlled, msg.ice_controlling, msg.nomination,
         msg.xor_mapped_address, msg.mapped_address, msg.error_code, msg.software)
    stun.peek_local_ufrag(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=1000, deadline=None)
@given(
    seed=st.sampled_from([RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE,
                          RFC5769_LONG_TERM, GOOD]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 200),
)
def test_fuzz_mutated_vectors(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    _exercise(bytes(data[: max(0, len(data) - cut % 16)]))


@settings(max_examples=500, deadline=None)
@given(body=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=8))
def test_fuzz_valid_framing_random_attributes(body: list[tuple[int, bytes]]) -> None:
    raw = b"".join(_attr(t, v) for t, v in body)
    _exercise(struct.pack("!HHI", 0x0001, len(raw), stun.MAGIC_COOKIE) + bytes(12) + raw)
