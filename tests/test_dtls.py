"""DTLS-SRTP handshake between DtlsTransport and plain pyOpenSSL, datagrams passed in memory."""

from __future__ import annotations

import datetime
import re
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from pysfu.dtls import (
    MTU,
    RTX_INITIAL,
    RTX_MAX,
    SRTP_PROFILES,
    Certificate,
    DtlsTransport,
    SrtpKeys,
)

KEY_SALT = {name: (k, s) for name, _, k, s in SRTP_PROFILES}


def fp(cert: Certificate, algorithm: str = "sha-256") -> dict[str, str]:
    return {"algorithm": algorithm, "value": cert.fingerprint(algorithm)}


class RawClient:
    """A DTLS client straight on pyOpenSSL memory BIOs, standing in for the browser."""

    def __init__(self, profiles: bytes, certificate: Certificate | None = None) -> None:
        self.cert = certificate or Certificate.generate()
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_QUERY_MTU)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        ctx.use_certificate(self.cert.cert)
        ctx.use_privatekey(self.cert.key)
        ctx.set_tlsext_use_srtp(profiles)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(MTU)
        self.done = False

    def step(self, incoming: list[bytes]) -> list[bytes]:
        for data in incoming:
            self.conn.bio_write(data)
        if not self.done:
            try:
                self.conn.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
        else:
            try:
                self.conn.recv(4096)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
        out = []
        while True:
            try:
                out.append(self.conn.bio_read(65536))
            except SSL.WantReadError:
                return out

    def keys(self) -> SrtpKeys:
        profile = next(p for p in SRTP_PROFILES
                       if p[1].encode() == self.conn.get_selected_srtp_profile())
        name, _, k, s = profile
        m = self.conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (k + s))
        return SrtpKeys(name, m[:k], m[2 * k : 2 * k + s], m[k : 2 * k], m[2 * k + s :])


def run_raw(client: RawClient, server: DtlsTransport, now: float = 0.0) -> None:
    to_server = client.step([])
    for _ in range(10):
        for d in to_server:
            server.receive(d, now)
        to_client = server.take_outgoing()
        if not to_client and client.done:
            return
        to_server = client.step(to_client)


def pump(a: DtlsTransport, b: DtlsTransport, now: float = 0.0, rounds: int = 10) -> None:
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for d in src.take_outgoing():
                moved = True
                dst.receive(d, now)
        if not moved:
            return


# ---- certificate ------------------------------------------------------------------------------


def test_certificate_properties() -> None:
    cert = Certificate.generate()
    c = cert.cert
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(c.public_key().curve, ec.SECP256R1)
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    assert c.subject == c.issuer
    cn = c.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn != Certificate.generate().cert.subject.rfc4514_string()
    now = datetime.datetime.now(datetime.UTC)
    assert c.not_valid_before_utc < now - datetime.timedelta(days=3600)
    assert c.not_valid_after_utc > now + datetime.timedelta(days=3600)
    assert cn


def test_fingerprints() -> None:
    cert = Certificate.generate()
    value = cert.fingerprint()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", value)
    assert value == cert.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    fps = cert.dtls_fingerprints()
    assert [f["algorithm"] for f in fps] == ["sha-1", "sha-224", "sha-384", "sha-512", "sha-256"]
    assert fps[-1]["value"] == value
    assert len(cert.fingerprint("sha-1").split(":")) == 20
    with pytest.raises(ValueError):
        cert.fingerprint("md5")


def test_bad_constructor_arguments() -> None:
    cert = Certificate.generate()
    with pytest.raises(ValueError):
        DtlsTransport(cert, role="auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DtlsTransport(cert, role="server", remote_fingerprint={"algorithm": "md5", "value": "x"})


# ---- handshakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [p[0] for p in SRTP_PROFILES])
def test_server_with_raw_client_each_profile(profile: str) -> None:
    openssl_name = next(p[1] for p in SRTP_PROFILES if p[0] == profile)
    client = RawClient(openssl_name.encode())
    cert = Certificate.generate()
    server = DtlsTransport(cert, role="server", remote_fingerprint=fp(client.cert))
    assert server.state == "new"
    run_raw(client, server)
    assert client.done
    assert server.state == "connected", server.failure_reason
    keys = server.srtp_keys
    assert keys is not None and keys.profile == profile
    k, s = KEY_SALT[profile]
    assert (len(keys.local_key), len(keys.local_salt)) == (k, s)
    assert (len(keys.remote_key), len(keys.remote_salt)) == (k, s)
    theirs = client.keys()
    assert theirs.profile == profile
    assert theirs.local_key == keys.remote_key and theirs.local_salt == keys.remote_salt
    assert theirs.remote_key == keys.local_key and theirs.remote_salt == keys.local_salt
    assert keys.local_key != keys.remote_key
    # The browser checks our fingerprint the same way.
    peer = client.conn.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    assert peer.fingerprint(hashes.SHA256()).hex(":").upper() == cert.fingerprint()
    assert server.next_timeout() is None


def test_server_prefers_gcm_256() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM")
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(client.cert)
    )
    run_raw(client, server)
    assert server.srtp_keys is not None and server.srtp_keys.profile == "AEAD_AES_256_GCM"


def test_fingerprint_compare_is_case_insensitive_and_uses_given_algorithm() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80")
    remote = {"algorithm": "SHA-512", "value": client.cert.fingerprint("sha-512").lower()}
    server = DtlsTransport(Certificate.generate(), role="server", remote_fingerprint=remote)
    run_raw(client, server)
    assert server.state == "connected"


def test_wrong_fingerprint_fails_without_keys() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80")
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(Certificate.generate())
    )
    run_raw(client, server)
    assert server.state == "failed"
    assert server.failure_reason == "fingerprint_mismatch"
    assert server.srtp_keys is None


def test_missing_remote_fingerprint_fails() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80")
    server = DtlsTransport(Certificate.generate(), role="server")
    run_raw(client, server)
    assert server.state == "failed" and server.srtp_keys is None


def test_client_without_certificate_is_refused() -> None:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(Certificate.generate())
    )
    incoming: list[bytes] = []
    for _ in range(6):
        for d in incoming:
            conn.bio_write(d)
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            break
        while True:
            try:
                server.receive(conn.bio_read(65536), 0.0)
            except SSL.WantReadError:
                break
        incoming = server.take_outgoing()
    assert server.state == "failed"
    assert server.srtp_keys is None


def test_client_transport_against_server_transport() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(0.0)
    assert client.state == "connecting"
    assert client.next_timeout() == pytest.approx(RTX_INITIAL)
    pump(client, server)
    assert client.state == server.state == "connected"
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.profile == "AEAD_AES_256_GCM"
    assert client.srtp_keys.local_key == server.srtp_keys.remote_key
    assert client.srtp_keys.local_salt == server.srtp_keys.remote_salt
    assert client.srtp_keys.remote_key == server.srtp_keys.local_key
    assert client.srtp_keys.remote_salt == server.srtp_keys.local_salt
    assert client.next_timeout() is None and server.next_timeout() is None


def test_datagrams_respect_mtu() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(0.0)
    sizes = []
    for _ in range(6):
        for src, dst in ((client, server), (server, client)):
            for d in src.take_outgoing():
                sizes.append(len(d))
                dst.receive(d, 0.0)
    assert client.state == "connected"
    assert sizes and max(sizes) <= MTU


# ---- loss and retransmission ------------------------------------------------------------------


def test_lost_client_hello_recovered_by_timer() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(10.0)
    assert client.take_outgoing()  # lost
    deadline = client.next_timeout()
    assert deadline == pytest.approx(10.0 + RTX_INITIAL)
    client.handle_timeout(10.05)  # too early: nothing
    assert client.take_outgoing() == []
    client.handle_timeout(deadline)
    assert client.retransmissions == 1
    pump(client, server, now=deadline)
    assert client.state == server.state == "connected"


def test_lost_server_flight_recovered_by_server_timer() -> None:
    client = RawClient(b"SRTP_AEAD_AES_128_GCM")
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(client.cert)
    )
    for d in client.step([]):
        server.receive(d, 0.0)
    assert server.state == "connecting"
    assert server.take_outgoing()  # ServerHello..ServerHelloDone: lost
    assert server.next_timeout() == pytest.approx(RTX_INITIAL)
    server.handle_timeout(RTX_INITIAL)
    flight = server.take_outgoing()
    assert flight
    to_server = client.step(flight)
    for d in to_server:
        server.receive(d, 0.2)
    client.step(server.take_outgoing())
    assert server.state == "connected" and client.done
    assert client.keys().remote_key == server.srtp_keys.local_key  # type: ignore[union-attr]


def test_lost_final_server_flight_recovered_by_openssl_timer() -> None:
    # The client's verbatim resends of its Finished flight are dropped by the server as
    # replays; OpenSSL's own wall-clock timer (1 s) then retransmits with fresh record
    # numbers, which makes the server resend its last flight. Takes about a second.
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(0.0)
    for src, dst in ((client, server), (server, client), (client, server)):
        for d in src.take_outgoing():
            dst.receive(d, 0.0)
    assert server.state == "connected" and client.state == "connecting"
    assert server.take_outgoing()  # ChangeCipherSpec + Finished: lost
    start = time.monotonic()
    while client.state == "connecting" and time.monotonic() - start < 5.0:
        now = client.next_timeout()
        assert now is not None
        time.sleep(max(0.0, now - (time.monotonic() - start)))  # our clock == wall clock
        client.handle_timeout(now)
        for d in client.take_outgoing():
            server.receive(d, now)
        for d in server.take_outgoing():
            client.receive(d, now)
    assert client.state == "connected"
    assert client.srtp_keys == SrtpKeys(
        server.srtp_keys.profile,  # type: ignore[union-attr]
        server.srtp_keys.remote_key,  # type: ignore[union-attr]
        server.srtp_keys.remote_salt,  # type: ignore[union-attr]
        server.srtp_keys.local_key,  # type: ignore[union-attr]
        server.srtp_keys.local_salt,  # type: ignore[union-attr]
    )


def test_retransmission_backoff_and_handshake_timeout() -> None:
    client = DtlsTransport(Certificate.generate(), role="client",
                           remote_fingerprint=fp(Certificate.generate()))
    client.start(0.0)
    client.take_outgoing()
    intervals = []
    now = 0.0
    while client.state == "connecting":
        deadline = client.next_timeout()
        assert deadline is not None
        intervals.append(round(deadline - now, 6))
        now = deadline
        client.handle_timeout(now)
        assert client.take_outgoing() or client.state == "failed"
    assert intervals[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 4.0]
    assert max(intervals) <= RTX_MAX
    assert client.state == "failed" and client.failure_reason == "handshake_timeout"
    assert now == pytest.approx(30.0)
    assert client.next_timeout() is None


def test_server_handshake_timeout() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80")
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(client.cert)
    )
    for d in client.step([]):
        server.receive(d, 5.0)
    server.handle_timeout(34.9)
    assert server.state == "connecting"
    server.handle_timeout(35.0)
    assert server.state == "failed" and server.failure_reason == "handshake_timeout"


# ---- garbage, caps, close ---------------------------------------------------------------------


GARBAGE = [
    b"",
    b"\x00\x01\x00\x00",  # STUN-ish
    b"\x80" + bytes(20),  # RTP-ish
    b"\x16\xfe\xfd",  # truncated record header
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x40" + b"x" * 10,  # length overrun
    b"\x17\xfe\xfd\x00\x01" + bytes(6) + b"\x00\x10" + bytes(16),  # app data, bad epoch
    b"\x15\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x02\x02\x28",  # plaintext fatal alert
]


def test_garbage_before_and_after_handshake_never_raises() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    for g in GARBAGE[:5]:
        server.receive(g, 0.0)
    assert server.dropped == 5
    assert server.state == "new"
    client.start(0.0)
    pump(client, server)
    assert client.state == server.state == "connected"
    for g in GARBAGE:
        server.receive(g, 1.0)
        client.receive(g, 1.0)
    assert server.state in ("connected", "failed", "closed")
    # Records that do not decrypt are dropped by the record layer: keys stay good.
    assert client.srtp_keys is not None or client.state == "failed"


def test_garbage_during_handshake_is_dropped_or_fails() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(0.0)
    for d in client.take_outgoing():
        server.receive(d, 0.0)
    for g in GARBAGE:
        server.receive(g, 0.0)
    assert server.state in ("connecting", "failed")
    if server.state == "failed":
        assert server.failure_reason == "handshake_error"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.sampled_from(["server", "client"]))
def test_fuzz_receive_never_raises(datagrams: list[bytes], role: str) -> None:
    t = DtlsTransport(CERT, role=role, remote_fingerprint=fp(CERT))  # type: ignore[arg-type]
    if role == "client":
        t.start(0.0)
    for i, d in enumerate(datagrams):
        t.receive(d, float(i))
        t.receive(b"\x16\xfe\xfd" + d, float(i))
        t.handle_timeout(float(i))
    t.take_outgoing()
    t.close()


CERT = Certificate.generate()


def test_pending_cap_before_start() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb), max_pending=4)
    record = b"\x16\xfe\xfd" + bytes(8) + b"\x00\x01" + b"\x00"
    for _ in range(10):
        client.receive(record, 0.0)
    assert client.dropped == 6
    assert client.state == "new"


def test_outgoing_cap() -> None:
    client = DtlsTransport(Certificate.generate(), role="client",
                           remote_fingerprint=fp(Certificate.generate()), max_pending=2)
    client.start(0.0)
    now = 0.0
    for _ in range(5):  # never drained: the queue stops growing
        now = client.next_timeout() or now
        client.handle_timeout(now)
    assert len(client.take_outgoing()) == 2
    assert client.dropped > 0


def test_close_sends_close_notify() -> None:
    ca, cb = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(ca, role="client", remote_fingerprint=fp(cb))
    server = DtlsTransport(cb, role="server", remote_fingerprint=fp(ca))
    client.start(0.0)
    pump(client, server)
    datagrams = server.close()
    assert datagrams and all(d[0] == 21 for d in datagrams)  # alert records
    assert server.state == "closed"
    for d in datagrams:
        client.receive(d, 1.0)
    assert client.state == "closed"
    client.receive(b"\x16\xfe\xfd" + bytes(10), 2.0)  # after close: dropped
    assert client.dropped == 1
    assert DtlsTransport(ca, role="server").close() == []


def test_server_start_is_optional_and_idempotent() -> None:
    client = RawClient(b"SRTP_AES128_CM_SHA1_80")
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(client.cert)
    )
    server.start(0.0)
    server.start(1.0)
    assert server.take_outgoing() == []
    assert server.next_timeout() == pytest.approx(30.0)
    run_raw(client, server, now=1.0)
    assert server.state == "connected"


# ---- the keys work with libsrtp ---------------------------------------------------------------

_LIBSRTP_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": "SRTP_PROFILE_AES128_CM_SHA1_80",
    "AEAD_AES_128_GCM": "SRTP_PROFILE_AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM": "SRTP_PROFILE_AEAD_AES_256_GCM",
}


@pytest.mark.parametrize("profile", [p[0] for p in SRTP_PROFILES])
def test_exported_keys_protect_and_unprotect_with_libsrtp(profile: str) -> None:
    pylibsrtp = pytest.importorskip("pylibsrtp")
    client = RawClient(next(p[1] for p in SRTP_PROFILES if p[0] == profile).encode())
    server = DtlsTransport(
        Certificate.generate(), role="server", remote_fingerprint=fp(client.cert)
    )
    run_raw(client, server)
    ours, theirs = server.srtp_keys, client.keys()
    assert ours is not None
    srtp_profile = getattr(pylibsrtp.Policy, _LIBSRTP_PROFILES[profile])

    def session(key: bytes, salt: bytes, direction: str) -> object:
        policy = pylibsrtp.Policy(key=key + salt, ssrc_type=getattr(pylibsrtp.Policy, direction),
                                  srtp_profile=srtp_profile)
        return pylibsrtp.Session(policy=policy)

    rtp = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]) + b"payload" * 10
    sent = session(ours.local_key, ours.local_salt, "SSRC_ANY_OUTBOUND").protect(rtp)
    got = session(theirs.remote_key, theirs.remote_salt, "SSRC_ANY_INBOUND").unprotect(sent)
    assert got == rtp
    back = session(theirs.local_key, theirs.local_salt, "SSRC_ANY_OUTBOUND").protect(rtp)
    assert session(ours.remote_key, ours.remote_salt, "SSRC_ANY_INBOUND").unprotect(back) == rtp
