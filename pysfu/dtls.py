"""DTLS 1.2 for DTLS-SRTP (RFC 5763/5764), sans-IO on pyOpenSSL memory BIOs.

Datagrams go in with :meth:`DtlsTransport.receive`, come out of
:meth:`DtlsTransport.take_outgoing`; time comes in as ``now`` (any monotonic clock, e.g.
``trio.current_time()``). Once ``state == "connected"``, ``srtp_keys`` holds the keys the data
plane needs. The peer is authenticated by its certificate fingerprint from signaling, not by
a CA: any self-signed certificate is accepted during the handshake and hashed afterwards.

Retransmission: pyOpenSSL exposes ``DTLSv1_get_timeout``/``DTLSv1_handle_timeout`` but not
``DTLS_set_timer_cb``, so OpenSSL's own timer runs on the wall clock with its fixed schedule
(1 s initial, doubling). We run our own timer in the caller's clock (100 ms, doubling, capped
at 4 s) and, when it fires and OpenSSL's timer has not, resend the last flight as it was.
Where the flight did arrive and only the answer was lost, the peer drops the duplicates
(DTLS replay check) and OpenSSL's own timer still retransmits properly a little later.
"""

from __future__ import annotations

import datetime
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

MTU = 1200  # leaves room for IPv6 + UDP + TURN framing on a 1280-byte path
HANDSHAKE_TIMEOUT = 30.0
RTX_INITIAL = 0.1
RTX_MAX = 4.0
_DTLS1_2_VERSION = 0xFEFD
_RECORD_HEADER = 13
MAX_APP_PENDING = 64  # application records kept until take_application() (one datagram's)
_MAX_DATAGRAM = 16384 + 2048 + _RECORD_HEADER  # record limit plus expansion, generously

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}

# (our name, OpenSSL name, key length, salt length), in server preference order.
SRTP_PROFILES: tuple[tuple[str, str, int, int], ...] = (
    ("AEAD_AES_256_GCM", "SRTP_AEAD_AES_256_GCM", 32, 12),
    ("AEAD_AES_128_GCM", "SRTP_AEAD_AES_128_GCM", 16, 12),
    ("AES_CM_128_HMAC_SHA1_80", "SRTP_AES128_CM_SHA1_80", 16, 14),
)
_PROFILES_BY_OPENSSL = {p[1]: p for p in SRTP_PROFILES}

# ECDHE only (forward secrecy); ECDSA first since that is what both sides use in WebRTC.
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)

# AEAD suites whose application records the engine side can seal (native/src/dtls_seal.rs):
# suffix of OpenSSL's name -> (key length, fixed IV length, PRF hash).
_AEAD_RECORD_KEYS: dict[str, tuple[int, int, str]] = {
    "AES128-GCM-SHA256": (16, 4, "sha256"),
    "AES256-GCM-SHA384": (32, 4, "sha384"),
    "CHACHA20-POLY1305": (32, 12, "sha256"),
}


def tls12_prf(secret: bytes, label: bytes, seed: bytes, size: int, digest: str) -> bytes:
    """RFC 5246 §5: P_hash(secret, label + seed), ``size`` bytes."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < size:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return out[:size]


@dataclass(frozen=True)
class RecordKeys:
    """The write side of an established session's epoch 1: what
    ``SctpAssociation.seal_with`` needs. Never logged."""

    cipher: str  # OpenSSL's suite name
    key: bytes
    iv: bytes
    epoch: int = 1

    def __repr__(self) -> str:
        return f"RecordKeys({self.cipher})"


DtlsRole = Literal["server", "client"]
DtlsState = Literal["new", "connecting", "connected", "failed", "closed"]


def _fingerprint(cert: x509.Certificate, algorithm: str) -> str:
    try:
        algo = _HASHES[algorithm.lower()]
    except KeyError:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}") from None
    return cert.fingerprint(algo()).hex(":").upper()


class Certificate:
    """The server's DTLS identity: private key and self-signed certificate."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self._context: SSL.Context | None = None  # shared by every transport using this cert

    def ssl_context(self) -> SSL.Context:
        if self._context is None:
            self._context = _make_context(self)
        return self._context

    @classmethod
    def generate(cls) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pysfu{secrets.token_hex(4)}")])
        now = datetime.datetime.now(datetime.UTC)
        ten_years = datetime.timedelta(days=3650)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - ten_years)
            .not_valid_after(now + ten_years)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        return _fingerprint(self.cert, algorithm)

    def dtls_fingerprints(self) -> list[dict[str, str]]:
        # mediasoup-client uses only the last entry, so sha-256 goes last.
        algos = ("sha-1", "sha-224", "sha-384", "sha-512", "sha-256")
        return [{"algorithm": a, "value": self.fingerprint(a)} for a in algos]


@dataclass(frozen=True)
class SrtpKeys:
    profile: str
    local_key: bytes
    local_salt: bytes
    remote_key: bytes
    remote_salt: bytes


def _accept_any_certificate(*_args: Any) -> bool:
    # Identity is the fingerprint exchanged over signaling, checked after the handshake.
    return True


def _make_context(certificate: Certificate) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(_DTLS1_2_VERSION)
    ctx.set_max_proto_version(_DTLS1_2_VERSION)
    # No tickets, no session cache (nothing to resume across transports); we set the MTU.
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
    ctx.use_certificate(certificate.cert)
    ctx.use_privatekey(certificate.key)
    ctx.check_privatekey()
    ctx.set_cipher_list(_CIPHERS)
    ctx.set_tlsext_use_srtp(b":".join(p[1].encode() for p in SRTP_PROFILES))
    return ctx


def split_records(data: bytes) -> list[bytes] | None:
    """Split a buffer into DTLS records; None if it is not a clean sequence of records."""
    records = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _RECORD_HEADER:
            return None
        ctype = data[pos]
        (length,) = struct.unpack_from("!H", data, pos + 11)
        end = pos + _RECORD_HEADER + length
        if not 20 <= ctype <= 63 or end > len(data):
            return None
        records.append(data[pos:end])
        pos = end
    return records


def _pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    # The memory BIO does not keep datagram boundaries; pack whole records up to the MTU.
    out: list[bytes] = []
    current = b""
    for rec in records:
        if current and len(current) + len(rec) > mtu:
            out.append(current)
            current = b""
        current += rec
    if current:
        out.append(current)
    return out


class DtlsTransport:
    def __init__(
        self,
        certificate: Certificate,
        *,
        role: DtlsRole,
        remote_fingerprint: dict[str, str] | None = None,
        max_pending: int = 64,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"bad DTLS role {role!r}")
        if remote_fingerprint is not None:
            _check_fingerprint_param(remote_fingerprint)
        self.role: DtlsRole = role
        self.remote_fingerprint = remote_fingerprint
        self.max_pending = max_pending
        self.state: DtlsState = "new"
        self.failure_reason: str | None = None
        self.srtp_keys: SrtpKeys | None = None
        self.dropped = 0  # datagrams dropped: garbage, over the pending cap, after close
        self.retransmissions = 0
        self._conn = SSL.Connection(certificate.ssl_context(), None)
        self._conn.set_ciphertext_mtu(MTU)
        if role == "server":
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._pending: list[bytes] = []  # received before start() (client role)
        self._outgoing: list[bytes] = []
        self._app_in: list[bytes] = []  # application data records read, for take_application
        self._started_at: float | None = None
        self._last_flight: list[bytes] = []
        self._rtx_interval = RTX_INITIAL
        self._rtx_deadline: float | None = None

    # ---- public API ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the handshake: a client sends its ClientHello; a server just waits (it also
        starts by itself on the first datagram it receives)."""
        if self.state != "new":
            return
        self.state = "connecting"
        self._started_at = now
        if self.role == "client":
            self._drive(now)
        pending, self._pending = self._pending, []
        while pending and self.state == "connecting":  # _feed may end the handshake
            self._feed(pending.pop(0), now)

    def receive(self, data: bytes, now: float) -> None:
        """One UDP payload from the peer. Never raises: garbage is dropped (and counted), and
        input that breaks the handshake fails the transport."""
        if self.state in ("failed", "closed") or not self._looks_like_dtls(data):
            self.dropped += 1
            return
        if self.state == "new":
            if self.role == "client":
                # Cannot speak before our ClientHello; keep a little for start().
                if len(self._pending) >= self.max_pending:
                    self.dropped += 1
                else:
                    self._pending.append(bytes(data))
                return
            self.start(now)
        self._feed(bytes(data), now)

    def take_outgoing(self) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_timeout(self) -> float | None:
        """Absolute time (caller's clock) at which handle_timeout() must be called."""
        if self.state != "connecting" or self._started_at is None:
            return None
        deadline = self._started_at + HANDSHAKE_TIMEOUT
        if self._rtx_deadline is not None:
            deadline = min(deadline, self._rtx_deadline)
        return deadline

    def handle_timeout(self, now: float) -> None:
        if self.state != "connecting" or self._started_at is None:
            return
        if now - self._started_at >= HANDSHAKE_TIMEOUT:
            self._fail("handshake_timeout")
            return
        if self._rtx_deadline is None or now < self._rtx_deadline:
            return
        self.retransmissions += 1
        try:
            self._conn.DTLSv1_handle_timeout()  # retransmits only if OpenSSL's timer expired
        except SSL.Error:
            self._fail("handshake_error")
            return
        datagrams = self._drain()
        if datagrams:
            self._last_flight = datagrams
        else:
            datagrams = list(self._last_flight)
        self._queue(datagrams)
        self._rtx_interval = min(self._rtx_interval * 2, RTX_MAX)
        self._rtx_deadline = now + self._rtx_interval

    def close(self) -> list[bytes]:
        """Send close_notify (if connected) and stop; returns the datagrams to send."""
        if self.state == "connected":
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._queue(self._drain())
        self.state = "closed"
        self._rtx_deadline = None
        return self.take_outgoing()

    # ---- internals ----------------------------------------------------------------------------

    def _looks_like_dtls(self, data: bytes) -> bool:
        # RFC 7983: DTLS datagrams start with 20..63; and it must split into whole records,
        # so a broken datagram cannot desynchronise the memory BIO.
        if not isinstance(data, bytes | bytearray | memoryview) or not data:
            return False
        if len(data) > _MAX_DATAGRAM:
            return False
        return split_records(bytes(data)) is not None

    def _feed(self, data: bytes, now: float) -> None:
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            self.dropped += 1
            return
        if self.state == "connecting":
            if now - (self._started_at or now) >= HANDSHAKE_TIMEOUT:
                self._fail("handshake_timeout")
                return
            self._drive(now)
        elif self.state == "connected":
            self._read_records()

    def _drive(self, now: float) -> None:
        done = False
        try:
            self._conn.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        except SSL.Error:
            self._queue(self._drain())  # let the peer see our alert
            self._fail("handshake_error")
            return
        datagrams = self._drain()
        if datagrams:
            # A new flight (or OpenSSL answering a retransmitted one): restart our timer.
            self._queue(datagrams)
            self._last_flight = datagrams
            self._rtx_interval = RTX_INITIAL
            self._rtx_deadline = now + RTX_INITIAL
        if done:
            try:
                self._on_handshake_done()
            except SSL.Error:  # e.g. the exporter failing: no keys, no connection
                self._fail("handshake_error")

    def _on_handshake_done(self) -> None:
        self._rtx_deadline = None
        self._last_flight = []
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        expected = self.remote_fingerprint
        if cert is None:
            self._fail("no_peer_certificate")
            return
        if expected is None:
            self._fail("no_remote_fingerprint")
            return
        try:
            actual = _fingerprint(cert, str(expected.get("algorithm", "")))
            matched = actual.lower() == str(expected.get("value", "")).lower()
        except (ValueError, AttributeError):
            matched = False  # unusable fingerprint parameters: treated as a mismatch
        if not matched:
            self._fail("fingerprint_mismatch")
            return
        name = self._conn.get_selected_srtp_profile().decode("ascii", "replace")
        profile = _PROFILES_BY_OPENSSL.get(name)
        if profile is None:
            self._fail("no_srtp_profile")
            return
        label, key_len, salt_len = profile[0], profile[2], profile[3]
        material = self._conn.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (key_len + salt_len)
        )
        # RFC 5764 §4.2: client_key | server_key | client_salt | server_salt.
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        if self.role == "client":
            keys = SrtpKeys(label, client_key, client_salt, server_key, server_salt)
        else:
            keys = SrtpKeys(label, server_key, server_salt, client_key, client_salt)
        self.srtp_keys = keys
        self.state = "connected"

    def take_application(self) -> list[bytes]:
        """Application data received since the last call (one item per DTLS record: on a
        data channel transport, one SCTP packet each)."""
        out, self._app_in = self._app_in, []
        return out

    def record_keys(self) -> RecordKeys | None:
        """Our write key and IV of the session (TLS 1.2 key expansion, RFC 5246 §6.3, from
        OpenSSL's master secret and randoms) for sealing application records elsewhere; None
        unless connected with an AEAD suite (those records stay with :meth:`protect`)."""
        if self.state != "connected":
            return None
        name = self._conn.get_cipher_name() or ""
        params = next((v for k, v in _AEAD_RECORD_KEYS.items() if name.endswith(k)), None)
        if params is None:
            return None
        master = self._conn.master_key()
        client, server = self._conn.client_random(), self._conn.server_random()
        if not master or not client or not server:
            return None
        key_len, iv_len, digest = params
        block = tls12_prf(master, b"key expansion", server + client, 2 * (key_len + iv_len),
                          digest)
        # client_write_key | server_write_key | client_write_IV | server_write_IV (no MAC keys)
        keys = (block[:key_len], block[key_len:2 * key_len])
        ivs = (block[2 * key_len:2 * key_len + iv_len], block[2 * key_len + iv_len:])
        mine = 0 if self.role == "client" else 1
        return RecordKeys(name, keys[mine], ivs[mine])

    def protect(self, packets: list[bytes]) -> list[bytes]:
        """Application data (SCTP packets) as DTLS records, one datagram each; nothing
        unless connected. Runs in Python (pyOpenSSL): see pysfu.data for the cost."""
        if self.state != "connected" or not packets:
            return []
        for packet in packets:
            try:
                self._conn.send(packet)
            except SSL.Error:
                self.dropped += 1
        data = self._bio_read_all()
        if not data:
            return []
        return split_records(data) or [data]

    def _read_records(self) -> None:
        # After the handshake: application data (SCTP, when the transport has data channels),
        # alerts and retransmitted handshake flights (SRTP goes to the data plane); reading
        # lets OpenSSL answer the last two.
        while True:
            try:
                data = self._conn.recv(65536)
                if data:
                    if len(self._app_in) >= MAX_APP_PENDING:
                        self.dropped += 1  # the owner is not taking them: don't grow
                    else:
                        self._app_in.append(data)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.state = "closed"
                break
            except SSL.Error:
                self._queue(self._drain())
                self._fail("dtls_error")
                return
        self._queue(self._drain())

    def _bio_read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _drain(self) -> list[bytes]:
        data = self._bio_read_all()
        if not data:
            return []
        records = split_records(data)
        if records is None:  # cannot happen with OpenSSL output; send as is rather than lose it
            return [data]
        return _pack_datagrams(records, MTU)

    def _queue(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            if len(self._outgoing) >= self.max_pending:
                self.dropped += 1  # the owner is not draining take_outgoing(); don't grow
            else:
                self._outgoing.append(d)

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure_reason = reason
        self.srtp_keys = None
        self._rtx_deadline = None


def _check_fingerprint_param(fp: dict[str, str]) -> None:
    if not isinstance(fp, dict) or not isinstance(fp.get("value"), str):
        raise ValueError("remote_fingerprint must be {'algorithm': ..., 'value': ...}")
    if str(fp.get("algorithm", "")).lower() not in _HASHES:
        raise ValueError(f"unsupported fingerprint algorithm {fp.get('algorithm')!r}")
