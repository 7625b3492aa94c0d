"""Application records sealed by the native side (SctpAssociation.seal_with, dtls_seal.rs)
with the keys pysfu.dtls derives from OpenSSL's session: OpenSSL on the other end reads
them, for every AEAD suite we offer and either DTLS role; an SCTP association runs over a
session whose one direction is sealed natively and the other by pyOpenSSL."""

from __future__ import annotations

import pytest

from pysfu._native import SctpAssociation
from pysfu.dtls import Certificate, DtlsTransport, split_records, tls12_prf

SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
          "ECDHE-ECDSA-CHACHA20-POLY1305"]


def fp(cert: Certificate) -> dict[str, str]:
    return {"algorithm": "sha-256", "value": cert.fingerprint("sha-256")}


def connected_pair(suite: str | None) -> tuple[DtlsTransport, DtlsTransport]:
    """(server, client) after the handshake; the client offers only ``suite``."""
    server_cert, client_cert = Certificate.generate(), Certificate.generate()
    if suite is not None:
        client_cert.ssl_context().set_cipher_list(suite.encode())
    server = DtlsTransport(server_cert, role="server", remote_fingerprint=fp(client_cert))
    client = DtlsTransport(client_cert, role="client", remote_fingerprint=fp(server_cert))
    server.start(0.0)
    client.start(0.0)
    for _ in range(10):
        for d in client.take_outgoing():
            server.receive(d, 0.0)
        for d in server.take_outgoing():
            client.receive(d, 0.0)
    assert server.state == client.state == "connected"
    return server, client


def test_tls12_prf_known_answer() -> None:
    # The TLS 1.2 PRF (SHA-256) test vector published with RFC 5246's errata discussion
    # (IETF TLS list, "TLS 1.2 PRF test vectors").
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    out = tls12_prf(secret, b"test label", seed, 100, "sha256")
    assert out.hex() == (
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a4"
        "6b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d1"
        "22ee42c5a72e5a5110fff70187347b66")


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("sealing", ["server", "client"])
def test_natively_sealed_records_are_read_by_openssl(suite: str, sealing: str) -> None:
    server, client = connected_pair(suite)
    near, far = (server, client) if sealing == "server" else (client, server)
    keys = near.record_keys()
    assert keys is not None and keys.cipher == suite
    assert str(keys.key) not in repr(keys) and keys.key.hex() not in repr(keys)  # not printed
    # The sealing side runs the SCTP client (it sends INIT first), the other the server.
    a, b = SctpAssociation("client", 0.0), SctpAssociation("server", 0.0)
    assert a.seal_with(keys.cipher, keys.key, keys.iv, keys.epoch) and a.sealed
    messages: list[bytes] = []
    sent = False
    now = 0.0
    for _ in range(50):
        now += 0.01
        for record in a.take_packets(now):  # DTLS records already
            assert record[0] == 23 and record[1:3] == b"\xfe\xfd"
            assert int.from_bytes(record[5:11], "big") >= 1 << 32  # above OpenSSL's numbers
            far.receive(record, now)
        for packet in far.take_application():
            b.handle_packet(packet, now)
        for datagram in far.protect(b.take_packets(now)):  # pyOpenSSL the other way
            near.receive(datagram, now)
        for packet in near.take_application():
            a.handle_packet(packet, now)
        if a.connected and not sent:
            sent = True
            a.open_stream(1)
            assert a.send(1, 51, b"sealed in Rust") == "sent"
            assert a.send(1, 53, bytes(range(256)) * 40) == "sent"  # several records
        messages += [e[3] for e in b.take_events() if e[0] == "message"]
        if len(messages) == 2:
            break
    assert messages == [b"sealed in Rust", bytes(range(256)) * 40]
    assert a.counters()["recordsSealed"] >= 3 and a.counters()["sealFailed"] == 0
    assert far.state == near.state == "connected"  # no alert, no failure either side


def test_non_aead_suites_and_unconnected_sessions_have_no_record_keys() -> None:
    server, client = connected_pair("ECDHE-ECDSA-AES128-SHA")
    assert server.record_keys() is None and client.record_keys() is None
    fresh = DtlsTransport(Certificate.generate(), role="server")
    assert fresh.record_keys() is None
    a = SctpAssociation("client", 0.0)
    assert not a.seal_with("ECDHE-ECDSA-AES128-SHA", b"k" * 16, b"i" * 4, 1)
    assert not a.seal_with("ECDHE-ECDSA-AES128-GCM-SHA256", b"short", b"i" * 4, 1)
    assert not a.sealed
    # Not sealing: SCTP packets as they are (the caller protects them).
    assert split_records(a.take_packets(0.0)[0]) is None
