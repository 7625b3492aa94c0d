"""A WebRTC endpoint for tests, made of an independent stack: hand-built STUN requests,
pyOpenSSL as DTLS client, libsrtp (pylibsrtp) for SRTP. It plays a browser's part against
the server over real UDP on loopback, or (``protocol="tcp"``) over a real TCP connection to
the server's passive ICE-TCP candidate, RFC 4571 framing (a browser's active TCP candidate)."""

from __future__ import annotations

import binascii
import datetime
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any

import pylibsrtp
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

SRTP_KEY_SIZES = {
    b"SRTP_AES128_CM_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    b"SRTP_AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    b"SRTP_AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
}
MAGIC = 0x2112A442


def make_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    fp = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    return cert, key, fp


def stun_binding_request(username: str, password: str, *, use_candidate: bool = True,
                         controlled: bool = False) -> bytes:
    """RFC 5389/8445 Binding request with USERNAME, PRIORITY, ICE-CONTROLLING (or -CONTROLLED),
    USE-CANDIDATE, MESSAGE-INTEGRITY and FINGERPRINT, built by hand."""
    txid = os.urandom(12)

    def attr(kind: int, value: bytes) -> bytes:
        pad = (4 - len(value) % 4) % 4
        return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad

    body = attr(0x0006, username.encode())
    body += attr(0x0024, struct.pack("!I", 1853824767))
    body += attr(0x8029 if controlled else 0x802A, os.urandom(8))
    if use_candidate:
        body += attr(0x0025, b"")
    # MESSAGE-INTEGRITY covers the header with the length including itself.
    head = struct.pack("!HHI", 0x0001, len(body) + 24, MAGIC) + txid
    mac = hmac.new(password.encode(), head + body, hashlib.sha1).digest()
    body += attr(0x0008, mac)
    head = struct.pack("!HHI", 0x0001, len(body) + 8, MAGIC) + txid
    crc = (binascii.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += attr(0x8028, struct.pack("!I", crc))
    return head + body


def build_rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, *, marker: bool = False,
              extensions: dict[int, bytes] | None = None) -> bytes:
    """An RTP packet with a one-byte-header extension block (RFC 8285)."""
    first = 0x80
    ext = b""
    if extensions:
        first |= 0x10
        elems = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in extensions.items())
        elems += b"\0" * ((4 - len(elems) % 4) % 4)
        ext = struct.pack("!HH", 0xBEDE, len(elems) // 4) + elems
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + ext + payload


@dataclass
class Rtp:
    pt: int
    seq: int
    ts: int
    ssrc: int
    marker: bool
    extensions: dict[int, bytes]
    payload: bytes


def parse_rtp(data: bytes) -> Rtp:
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    exts: dict[int, bytes] = {}
    if first & 0x10:
        profile, words = struct.unpack_from("!HH", data, offset)
        block = data[offset + 4: offset + 4 + words * 4]
        offset += 4 + words * 4
        i = 0
        while i < len(block):
            if profile == 0xBEDE:
                if block[i] == 0:
                    i += 1
                    continue
                ident, length = block[i] >> 4, (block[i] & 0x0F) + 1
                exts[ident] = block[i + 1: i + 1 + length]
                i += 1 + length
            else:
                if block[i] == 0:
                    i += 1
                    continue
                ident, length = block[i], block[i + 1]
                exts[ident] = block[i + 2: i + 2 + length]
                i += 2 + length
    return Rtp(second & 0x7F, seq, ts, ssrc, bool(second & 0x80), exts, data[offset:])


def vp8_payload(keyframe: bool, size: int = 300) -> bytes:
    """VP8 payload descriptor (S=1, PID 0) + a frame header whose P bit says key/delta."""
    descriptor = b"\x10"
    if keyframe:
        header = bytes([0x00, 0x00, 0x00]) + b"\x9d\x01\x2a" + struct.pack("<HH", 640, 480)
    else:
        header = bytes([0x01, 0x00, 0x00])
    return descriptor + header + os.urandom(max(0, size - len(header) - 1))


class WebRtcPeer:
    """One side of one WebRTC transport (a browser's RTCPeerConnection, for our purposes)."""

    def __init__(self, transport: dict[str, Any], *,
                 srtp_profiles: bytes = b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
                 protocol: str = "udp") -> None:
        self.transport = transport
        self.ice = transport["iceParameters"]
        cands = [c for c in transport["iceCandidates"] if c["protocol"] == protocol]
        assert cands, f"the server offers no {protocol} candidate"
        cand = cands[0]
        self.protocol = protocol
        self.server = (cand["address"], cand["port"])
        # TCP: the connection (opened by bind), bytes of an incomplete frame, one writer at
        # a time (media and consent checks are sent from different tasks).
        self.stream: trio.SocketStream | None = None
        self._inbuf = bytearray()
        self._send_lock = trio.Lock()
        self._bound = False
        self.server_fingerprint = transport["dtlsParameters"]["fingerprints"][-1]["value"]
        self.cert, self.key, self.fingerprint = make_certificate()
        self.srtp_profiles = srtp_profiles
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.ufrag = binascii.hexlify(os.urandom(4)).decode()
        self.tx: pylibsrtp.Session | None = None
        self.rx: pylibsrtp.Session | None = None
        self.profile: bytes | None = None
        self.rtcp_received: list[bytes] = []

    def dtls_parameters(self, *, fingerprint: str | None = None) -> dict[str, Any]:
        value = fingerprint or self.fingerprint
        return {"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": value}]}

    async def bind(self, *, recv_buffer: int | None = None) -> None:
        """UDP: bind the local socket; TCP: connect to the server's TCP candidate.
        ``recv_buffer``: SO_RCVBUF of the TCP socket, set before connecting (a small one
        makes a reader that stops reading felt by the server at once)."""
        if self.protocol == "tcp":
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            if recv_buffer is not None:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, recv_buffer)
            await sock.connect(self.server)
            self.stream = trio.SocketStream(sock)
        else:
            await self.sock.bind(("127.0.0.1", 0))
        self._bound = True

    @property
    def local_address(self) -> tuple[str, int]:
        if self.stream is not None:
            ip, port = self.stream.socket.getsockname()[:2]
        else:
            ip, port = self.sock.getsockname()[:2]
        return str(ip), int(port)

    async def send_raw(self, data: bytes) -> None:
        """One datagram to the server (on TCP: one RFC 4571 frame)."""
        if self.stream is None:
            await self.sock.sendto(data, self.server)
            return
        async with self._send_lock:
            await self.stream.send_all(len(data).to_bytes(2, "big") + data)

    async def recv_raw(self) -> bytes:
        """The next datagram (on TCP: frame) from the server."""
        if self.stream is None:
            return bytes(await self.sock.recv(4096))
        while True:
            if len(self._inbuf) >= 2:
                size = int.from_bytes(self._inbuf[:2], "big")
                if len(self._inbuf) >= 2 + size:
                    frame = bytes(self._inbuf[2:2 + size])
                    del self._inbuf[:2 + size]
                    return frame
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("the server closed the TCP connection")
            self._inbuf += chunk

    async def ice_check(self, *, password: str | None = None, timeout: float = 2.0) -> bytes | None:
        """Send one Binding request; return the server's response (or None on time-out)."""
        req = stun_binding_request(f"{self.ice['usernameFragment']}:{self.ufrag}",
                                   password or self.ice["password"])
        await self.send_raw(req)
        with trio.move_on_after(timeout):
            while True:
                data = await self.recv_raw()
                if data[:1] in (b"\x01",) and data[4:8] == struct.pack("!I", MAGIC):
                    return data
        return None

    async def connect(self, *, timeout: float = 10.0) -> None:
        """ICE (USE-CANDIDATE) then the DTLS handshake as client; then SRTP sessions."""
        if not self._bound:
            await self.bind()
        response = await self.ice_check()
        assert response is not None and response[:2] == b"\x01\x01", "no ICE success response"
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        ctx.set_tlsext_use_srtp(self.srtp_profiles)
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        with trio.fail_after(timeout):
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                await self._flush(conn)
                with trio.move_on_after(0.2):
                    data = await self.recv_raw()
                    if 20 <= data[0] <= 63:
                        conn.bio_write(data)
                        continue
                try:
                    conn.DTLSv1_handle_timeout()
                except SSL.Error:
                    pass
            await self._flush(conn)
        peer_cert = conn.get_peer_certificate(as_cryptography=True)
        assert peer_cert is not None, "server sent no certificate"
        peer_der = peer_cert.public_bytes(serialization.Encoding.DER)
        got = ":".join(f"{b:02X}" for b in hashlib.sha256(peer_der).digest())
        assert got == self.server_fingerprint, "server certificate does not match its fingerprint"
        self.profile = conn.get_selected_srtp_profile()
        srtp_profile, klen, slen = SRTP_KEY_SIZES[self.profile]
        material = conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (klen + slen))
        client_key, server_key = material[:klen], material[klen:2 * klen]
        client_salt = material[2 * klen:2 * klen + slen]
        server_salt = material[2 * klen + slen:]
        self.tx = pylibsrtp.Session(pylibsrtp.Policy(
            key=client_key + client_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=srtp_profile))
        self.rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=server_key + server_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=srtp_profile))
        self.dtls = conn

    async def _flush(self, conn: SSL.Connection) -> None:
        while True:
            try:
                data = conn.bio_read(65535)
            except SSL.WantReadError:
                return
            await self.send_raw(data)

    def protect(self, rtp: bytes) -> bytes:
        assert self.tx is not None
        return self.tx.protect(rtp)

    async def send_rtp(self, rtp: bytes) -> bytes:
        """Protect and send; returns the SRTP bytes (for replay tests)."""
        srtp = self.protect(rtp)
        await self.send_raw(srtp)
        return srtp

    async def _next_srtp(self) -> tuple[bool, bytes]:
        """The next SRTP or SRTCP datagram, still protected: (is_rtcp, data); STUN and DTLS
        are skipped."""
        while True:
            data = await self.recv_raw()
            if 128 <= data[0] <= 191:
                return 192 <= data[1] <= 223, data

    async def recv_rtp(self, timeout: float = 2.0) -> Rtp | None:
        """The next RTP packet (RTCP is kept in rtcp_received); None on time-out."""
        assert self.rx is not None
        with trio.move_on_after(timeout):
            while True:
                is_rtcp, data = await self._next_srtp()
                if not is_rtcp:
                    return parse_rtp(self.rx.unprotect(data))
                self.rtcp_received.append(self.rx.unprotect_rtcp(data))
        return None

    async def recv_rtcp(self, timeout: float = 2.0) -> bytes | None:
        """The next decrypted RTCP compound packet (RTP meanwhile is discarded)."""
        assert self.rx is not None
        if self.rtcp_received:
            return self.rtcp_received.pop(0)
        with trio.move_on_after(timeout):
            while True:
                is_rtcp, data = await self._next_srtp()
                if is_rtcp:
                    return self.rx.unprotect_rtcp(data)
        return None

    def close(self) -> None:
        self.sock.close()
        if self.stream is not None:
            self.stream.socket.close()

    # ---- RTCP and RTX (loss repair tests) -----------------------------------------------------

    async def send_rtcp(self, packet: bytes) -> None:
        """Protect a (compound) RTCP packet and send it."""
        assert self.tx is not None
        await self.send_raw(self.tx.protect_rtcp(packet))

    async def recv_packet(self, timeout: float = 2.0) -> tuple[str, Any] | None:
        """The next SRTP/SRTCP datagram, decrypted: ("rtp", Rtp) or ("rtcp", bytes)."""
        assert self.rx is not None
        with trio.move_on_after(timeout):
            while True:
                is_rtcp, data = await self._next_srtp()
                try:
                    if is_rtcp:
                        return "rtcp", self.rx.unprotect_rtcp(data)
                    return "rtp", parse_rtp(self.rx.unprotect(data))
                except pylibsrtp.Error as exc:
                    # Replays and forgeries are the sender's fault: note them, go on.
                    self.srtp_errors = [*getattr(self, "srtp_errors", []), (str(exc), data[:12])]
        return None


async def connected_peer(client: Any, room: str, direction: str, **kwargs: Any) -> WebRtcPeer:
    """A ``direction`` transport of signaling ``client`` in ``room`` and a test peer on it,
    connected (ICE, DTLS, SRTP) as a browser would; ``kwargs`` go to :class:`WebRtcPeer`."""
    transport = await client.create_transport(room, direction)
    peer = WebRtcPeer(transport, **kwargs)
    await peer.bind()
    await client.connect_transport(room, transport["id"], peer.dtls_parameters())
    await peer.connect()
    return peer


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: list[int]) -> bytes:
    """RTPFB generic NACK (RFC 4585 §6.2.1) for ``seqs``."""
    fci = b""
    todo = sorted(set(s & 0xFFFF for s in seqs))
    while todo:
        pid, blp = todo.pop(0), 0
        for s in list(todo):
            d = (s - pid) & 0xFFFF
            if 1 <= d <= 16:
                blp |= 1 << (d - 1)
                todo.remove(s)
        fci += struct.pack("!HH", pid, blp)
    return struct.pack("!BBHII", 0x81, 205, 2 + len(fci) // 4, sender_ssrc, media_ssrc) + fci


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, sender_ssrc, media_ssrc)


def build_rr(sender_ssrc: int, blocks: list[dict[str, int]]) -> bytes:
    """Receiver report; blocks have ssrc, fraction_lost, lost, highest_seq, jitter, lsr, dlsr."""
    body = b"".join(
        struct.pack("!IIIIII", b["ssrc"], (b.get("fraction_lost", 0) << 24)
                    | (b.get("lost", 0) & 0xFFFFFF), b.get("highest_seq", 0), b.get("jitter", 0),
                    b.get("lsr", 0), b.get("dlsr", 0))
        for b in blocks)
    return struct.pack("!BBHI", 0x80 | len(blocks), 201, 1 + len(body) // 4, sender_ssrc) + body


def build_sr(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    return struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets, octets)


def parse_rtcp(compound: bytes) -> list[dict[str, Any]]:
    """Each packet of a compound: {"pt", "fmt", "ssrc"} plus SR sender info / report blocks,
    NACK/PLI media SSRC and NACKed seqs, SDES CNAME."""
    out: list[dict[str, Any]] = []
    pos = 0
    while pos + 8 <= len(compound):
        first, pt, words = struct.unpack_from("!BBH", compound, pos)
        body = compound[pos + 4: pos + 4 * (words + 1)]
        item: dict[str, Any] = {"pt": pt, "fmt": first & 0x1F,
                                "ssrc": struct.unpack_from("!I", body)[0]}
        if pt in (200, 201):
            at = 4
            if pt == 200:
                item["ntp"], item["rtp_ts"], item["packets"], item["octets"] = struct.unpack_from(
                    "!QIII", body, 4)
                at = 24
            item["blocks"] = []
            for _ in range(first & 0x1F):
                ssrc, lost, high, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, at)
                item["blocks"].append({"ssrc": ssrc, "fraction_lost": lost >> 24,
                                       "lost": lost & 0xFFFFFF, "highest_seq": high,
                                       "jitter": jitter, "lsr": lsr, "dlsr": dlsr})
                at += 24
        elif pt == 202 and len(body) >= 6 and body[4] == 1:
            item["cname"] = body[6: 6 + body[5]].decode(errors="replace")
        elif pt in (205, 206) and len(body) >= 8:
            item["media_ssrc"] = struct.unpack_from("!I", body, 4)[0]
            if pt == 205 and item["fmt"] == 1:
                seqs = []
                for at in range(8, len(body) - 3, 4):
                    pid, blp = struct.unpack_from("!HH", body, at)
                    seqs.append(pid)
                    seqs += [(pid + i + 1) & 0xFFFF for i in range(16) if blp & (1 << i)]
                item["seqs"] = seqs
        out.append(item)
        pos += 4 * (words + 1)
    return out


def rtx_original(packet: Rtp) -> tuple[int, bytes]:
    """RFC 4588: (original sequence number, original payload) of an RTX packet."""
    return struct.unpack_from("!H", packet.payload)[0], packet.payload[2:]


def build_rtx(original: bytes, rtx_pt: int, rtx_ssrc: int, rtx_seq: int) -> bytes:
    """The RTX packet (RFC 4588) for an unencrypted RTP packet: same header and extensions,
    RTX PT/SSRC/sequence number, original sequence number in front of the payload."""
    p = parse_rtp(original)
    return build_rtp(rtx_pt, rtx_seq, p.ts, rtx_ssrc, struct.pack("!H", p.seq) + p.payload,
                     marker=p.marker, extensions=p.extensions)


def ntp_now() -> int:
    """64-bit NTP timestamp of the wall clock."""
    import time

    t = time.time() + 2_208_988_800
    return (int(t) << 32) | int((t % 1) * (1 << 32))
