"""STUN message codec (RFC 5389) with the ICE attributes (RFC 8445), sans-IO.

``parse`` turns bytes into a :class:`StunMessage` or raises :class:`StunError` (never any other
exception, whatever the input). Builders produce the few messages an ICE-lite server answers
with, plus Binding requests for tests and the benchmark's fake browser.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER_SIZE = 20

# Methods and classes (RFC 5389 §6).
METHOD_BINDING = 0x001
CLASS_REQUEST = 0b00
CLASS_INDICATION = 0b01
CLASS_SUCCESS = 0b10
CLASS_ERROR = 0b11

# Attribute types.
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_PRIORITY = 0x0024
ATTR_USE_CANDIDATE = 0x0025
ATTR_SOFTWARE = 0x8022
ATTR_ALTERNATE_SERVER = 0x8023
ATTR_FINGERPRINT = 0x8028
ATTR_ICE_CONTROLLED = 0x8029
ATTR_ICE_CONTROLLING = 0x802A
ATTR_NOMINATION = 0xC001

_INTEGRITY_SIZE = 20
_FIXED_SIZES = {
    ATTR_MESSAGE_INTEGRITY: _INTEGRITY_SIZE,
    ATTR_FINGERPRINT: 4,
    ATTR_PRIORITY: 4,
    ATTR_USE_CANDIDATE: 0,
    ATTR_ICE_CONTROLLED: 8,
    ATTR_ICE_CONTROLLING: 8,
    ATTR_NOMINATION: 4,
}
# RFC 5389 §15.3: USERNAME must be < 513 bytes; §15.6: reason phrase < 763 bytes.
_MAX_USERNAME = 512

Address = tuple[str, int]


class StunError(ValueError):
    """Malformed STUN message."""


def _message_type(method: int, cls: int) -> int:
    # The class bits are interleaved with the method bits (RFC 5389 §6, figure 3).
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def _split_type(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return method, cls


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass
class StunMessage:
    """A STUN message: header fields and attributes in wire order.

    ``attributes`` holds raw values; the properties decode the common ones. For a parsed
    message, ``raw`` is the input and the offsets locate MESSAGE-INTEGRITY / FINGERPRINT so they
    can be verified. Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are dropped
    while parsing: RFC 5389 §15.4 says to ignore them, and they are not authenticated.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    raw: bytes = b""
    integrity_offset: int | None = None
    fingerprint_offset: int | None = None

    # ---- attribute access -----------------------------------------------------------------

    def get(self, attr_type: int) -> bytes | None:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def has(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def add(self, attr_type: int, value: bytes = b"") -> StunMessage:
        self.attributes.append((attr_type, value))
        return self

    @property
    def is_request(self) -> bool:
        return self.cls == CLASS_REQUEST

    @property
    def username(self) -> str | None:
        v = self.get(ATTR_USERNAME)
        return None if v is None else v.decode("utf-8")  # validated by parse()

    @property
    def priority(self) -> int | None:
        v = self.get(ATTR_PRIORITY)
        return None if v is None else struct.unpack("!I", v)[0]

    @property
    def use_candidate(self) -> bool:
        return self.has(ATTR_USE_CANDIDATE)

    @property
    def ice_controlled(self) -> int | None:
        v = self.get(ATTR_ICE_CONTROLLED)
        return None if v is None else struct.unpack("!Q", v)[0]

    @property
    def ice_controlling(self) -> int | None:
        v = self.get(ATTR_ICE_CONTROLLING)
        return None if v is None else struct.unpack("!Q", v)[0]

    @property
    def nomination(self) -> int | None:
        v = self.get(ATTR_NOMINATION)
        return None if v is None else struct.unpack("!I", v)[0]

    @property
    def xor_mapped_address(self) -> Address | None:
        v = self.get(ATTR_XOR_MAPPED_ADDRESS)
        return None if v is None else _decode_address(v, self.transaction_id, xor=True)

    @property
    def mapped_address(self) -> Address | None:
        v = self.get(ATTR_MAPPED_ADDRESS)
        return None if v is None else _decode_address(v, self.transaction_id, xor=False)

    @property
    def error_code(self) -> tuple[int, str] | None:
        v = self.get(ATTR_ERROR_CODE)
        if v is None:
            return None
        return (v[2] & 0x07) * 100 + v[3], v[4:].decode("utf-8", "replace")

    @property
    def software(self) -> str | None:
        v = self.get(ATTR_SOFTWARE)
        return None if v is None else v.decode("utf-8", "replace")

    # ---- encoding ---------------------------------------------------------------------------

    def encode(self, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
        """Serialize; MESSAGE-INTEGRITY and FINGERPRINT are appended (in that order) on request.

        Any MESSAGE-INTEGRITY / FINGERPRINT already in ``attributes`` is left out, so a parsed
        message can be re-signed.
        """
        if len(self.transaction_id) != 12:
            raise StunError("transaction id must be 12 bytes")
        body = bytearray()
        for t, v in self.attributes:
            if t in (ATTR_MESSAGE_INTEGRITY, ATTR_FINGERPRINT):
                continue
            body += struct.pack("!HH", t, len(v)) + v + b"\x00" * _pad(len(v))
        msg_type = _message_type(self.method, self.cls)

        def header(length: int) -> bytes:
            return struct.pack("!HHI", msg_type, length, MAGIC_COOKIE) + self.transaction_id

        if integrity_key is not None:
            # The length field covers the MESSAGE-INTEGRITY attribute but not what follows it.
            mac = hmac.digest(integrity_key, header(len(body) + 24) + body, "sha1")
            body += struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, _INTEGRITY_SIZE) + mac
        if fingerprint:
            crc = binascii.crc32(header(len(body) + 8) + body) ^ FINGERPRINT_XOR
            body += struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)
        return header(len(body)) + bytes(body)


def _decode_address(value: bytes, transaction_id: bytes, *, xor: bool) -> Address:
    family, port = value[1], struct.unpack("!H", value[2:4])[0]
    addr = value[4:]
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = _COOKIE_BYTES + (transaction_id if family == 0x02 else b"")
        addr = bytes(a ^ m for a, m in zip(addr, mask, strict=True))
    if family == 0x01:
        return str(ipaddress.IPv4Address(addr)), port
    return str(ipaddress.IPv6Address(addr)), port


def _encode_address(addr: Address, transaction_id: bytes, *, xor: bool) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1]
    packed = ip.packed
    family = 0x01 if ip.version == 4 else 0x02
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = _COOKIE_BYTES + (transaction_id if family == 0x02 else b"")
        packed = bytes(a ^ m for a, m in zip(packed, mask, strict=True))
    return struct.pack("!BBH", 0, family, port) + packed


def _check_attribute(t: int, v: bytes) -> None:
    size = _FIXED_SIZES.get(t)
    if size is not None and len(v) != size:
        raise StunError(f"attribute 0x{t:04x}: bad length {len(v)}")
    if t in (ATTR_XOR_MAPPED_ADDRESS, ATTR_MAPPED_ADDRESS, ATTR_ALTERNATE_SERVER):
        if len(v) < 4 or (v[1], len(v)) not in ((0x01, 8), (0x02, 20)):
            raise StunError(f"attribute 0x{t:04x}: bad address")
    elif t == ATTR_USERNAME:
        if len(v) > _MAX_USERNAME:
            raise StunError("USERNAME too long")
        try:
            v.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError("USERNAME is not UTF-8") from exc
    elif t == ATTR_ERROR_CODE:
        if len(v) < 4 or not 3 <= (v[2] & 0x07) <= 6 or v[3] > 99:
            raise StunError("bad ERROR-CODE")


def is_stun(data: bytes) -> bool:
    """Cheap check (RFC 7983 first byte + magic cookie), for demultiplexing."""
    return len(data) >= HEADER_SIZE and data[0] < 4 and data[4:8] == _COOKIE_BYTES


def parse(data: bytes) -> StunMessage:
    """Parse one STUN message (the whole datagram). Raises StunError if malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StunError("not bytes")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise StunError("truncated header")
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type & 0xC000:
        raise StunError("top bits of the type are not zero")
    if data[4:8] != _COOKIE_BYTES:
        raise StunError("bad magic cookie")
    if length % 4:
        raise StunError("length not a multiple of 4")
    if HEADER_SIZE + length != len(data):
        raise StunError("length does not match the datagram")
    method, cls = _split_type(msg_type)
    msg = StunMessage(method=method, cls=cls, transaction_id=data[8:20], raw=data)
    pos = HEADER_SIZE
    after_integrity = False
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        t, n = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + n
        if end + _pad(n) > len(data):
            raise StunError("attribute overruns the message")
        v = data[pos + 4 : end]
        if msg.fingerprint_offset is not None:
            raise StunError("attribute after FINGERPRINT")
        _check_attribute(t, v)
        if t == ATTR_FINGERPRINT:
            msg.fingerprint_offset = pos
            msg.attributes.append((t, v))
        elif after_integrity:
            pass  # not covered by the integrity check: ignored (RFC 5389 §15.4)
        else:
            if t == ATTR_MESSAGE_INTEGRITY:
                msg.integrity_offset = pos
                after_integrity = True
            msg.attributes.append((t, v))
        pos = end + _pad(n)
    return msg


def verify_integrity(msg: StunMessage, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY (HMAC-SHA1) of a parsed message; False if absent."""
    off = msg.integrity_offset
    if off is None or not msg.raw:
        return False
    raw = msg.raw
    # Length as if MESSAGE-INTEGRITY were the last attribute.
    header = raw[:2] + struct.pack("!H", off + 24 - HEADER_SIZE) + raw[4:HEADER_SIZE]
    expected = hmac.digest(key, header + raw[HEADER_SIZE:off], "sha1")
    return hmac.compare_digest(expected, raw[off + 4 : off + 24])


def verify_fingerprint(msg: StunMessage) -> bool:
    """Check FINGERPRINT (CRC-32 ^ 0x5354554e) of a parsed message; False if absent."""
    off = msg.fingerprint_offset
    if off is None or not msg.raw:
        return False
    raw = msg.raw
    crc = binascii.crc32(raw[:off]) ^ FINGERPRINT_XOR
    return bool(struct.unpack_from("!I", raw, off + 4)[0] == crc)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key (RFC 5389 §15.4), for the RFC 5769 test vectors."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def new_transaction_id() -> bytes:
    return os.urandom(12)


# ---- builders ------------------------------------------------------------------------------


def binding_request(
    username: str,
    password: str,
    *,
    priority: int,
    transaction_id: bytes | None = None,
    ice_controlling: int | None = None,
    ice_controlled: int | None = None,
    use_candidate: bool = False,
    nomination: int | None = None,
    software: str | None = None,
) -> bytes:
    """A Binding request as a browser sends it: USERNAME ``remoteUfrag:localUfrag`` from the
    browser's point of view, short-term integrity with the server's password, FINGERPRINT."""
    msg = StunMessage(METHOD_BINDING, CLASS_REQUEST, transaction_id or new_transaction_id())
    msg.add(ATTR_USERNAME, username.encode())
    if software is not None:
        msg.add(ATTR_SOFTWARE, software.encode())
    if ice_controlling is not None:
        msg.add(ATTR_ICE_CONTROLLING, struct.pack("!Q", ice_controlling))
    if ice_controlled is not None:
        msg.add(ATTR_ICE_CONTROLLED, struct.pack("!Q", ice_controlled))
    if use_candidate:
        msg.add(ATTR_USE_CANDIDATE)
    if nomination is not None:
        msg.add(ATTR_NOMINATION, struct.pack("!I", nomination))
    msg.add(ATTR_PRIORITY, struct.pack("!I", priority))
    return msg.encode(password.encode(), fingerprint=True)


def binding_success(transaction_id: bytes, addr: Address, password: str) -> bytes:
    """Binding success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT."""
    msg = StunMessage(METHOD_BINDING, CLASS_SUCCESS, transaction_id)
    msg.add(ATTR_XOR_MAPPED_ADDRESS, _encode_address(addr, transaction_id, xor=True))
    return msg.encode(password.encode(), fingerprint=True)


ERROR_REASONS = {400: "Bad Request", 401: "Unauthorized", 487: "Role Conflict"}


def error_response(
    transaction_id: bytes,
    code: int,
    reason: str | None = None,
    *,
    password: str | None = None,
    method: int = METHOD_BINDING,
) -> bytes:
    """Error response (400/401/487...). Integrity only when the request was authenticated
    (never for 400/401: the sender's key is unknown or wrong)."""
    phrase = (reason if reason is not None else ERROR_REASONS.get(code, "")).encode()
    msg = StunMessage(method, CLASS_ERROR, transaction_id)
    msg.add(ATTR_ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + phrase)
    return msg.encode(None if password is None else password.encode(), fingerprint=True)


def xor_address_attr(addr: Address, transaction_id: bytes) -> bytes:
    """Encoded XOR-MAPPED-ADDRESS value (exposed for tests and custom builders)."""
    return _encode_address(addr, transaction_id, xor=True)


def peek_local_ufrag(data: bytes) -> str | None:
    """The ``localUfrag`` part of a Binding request's USERNAME, to route it to its transport
    when many transports share one UDP port. None if ``data`` is not such a request."""
    try:
        msg = parse(data)
    except StunError:
        return None
    if not (msg.is_request and msg.method == METHOD_BINDING):
        return None
    username = msg.username
    if username is None:
        return None
    return username.split(":", 1)[0]
