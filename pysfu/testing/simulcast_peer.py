"""Test helpers for simulcast and congestion control: a Chrome-like simulcast sender (three
rid layers, transport-wide sequence numbers, key frames on PLI) and independent RTCP
parsers/builders for transport-cc feedback and REMB."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import trio

from pysfu.testing.fixtures import ABS_SEND_TIME, MID, RID, RRID, chrome_simulcast_encodings
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp

TCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
CHROME_VP8_PT = 96
MID_ID, TCC_ID, RID_ID, RRID_ID, ABS_ID = 4, 3, 10, 11, 2
# Payload bytes per packet of each layer (r0 small ... r2 large), one packet per frame.
LAYER_SIZES = (150, 500, 1100)


def simulcast_producer(mid: str = "0", *, transport_cc: bool = True) -> dict[str, Any]:
    """What mediasoup-client in Chrome sends for VP8 with three encodings: rids, no SSRCs."""
    feedback = [{"type": "goog-remb", "parameter": ""}, {"type": "ccm", "parameter": "fir"},
                {"type": "nack", "parameter": ""}, {"type": "nack", "parameter": "pli"}]
    exts = [{"uri": MID, "id": MID_ID, "encrypt": False, "parameters": {}},
            {"uri": ABS_SEND_TIME, "id": ABS_ID, "encrypt": False, "parameters": {}},
            {"uri": RID, "id": RID_ID, "encrypt": False, "parameters": {}},
            {"uri": RRID, "id": RRID_ID, "encrypt": False, "parameters": {}}]
    if transport_cc:
        feedback.append({"type": "transport-cc", "parameter": ""})
        exts.append({"uri": TCC, "id": TCC_ID, "encrypt": False, "parameters": {}})
    return {
        "mid": mid,
        "codecs": [
            {"mimeType": "video/VP8", "payloadType": CHROME_VP8_PT, "clockRate": 90000,
             "parameters": {}, "rtcpFeedback": feedback},
            {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000,
             "parameters": {"apt": CHROME_VP8_PT}, "rtcpFeedback": []},
        ],
        "headerExtensions": exts,
        "encodings": chrome_simulcast_encodings(),
        "rtcp": {"cname": "", "reducedSize": True},
    }


# VP8 L1T3 as libwebrtc sends it: TIDs 0, 2, 1, 2 repeating.
L1T3_TIDS = (0, 2, 1, 2)
PICTURE_ID_BASE = (0x7F00, 1000, 20000)  # per layer; layer 0 wraps (15 bits) early


def l1t3_descriptor(layer: int, frame: int) -> bytes:
    """RFC 7741 payload descriptor of ``frame`` in an L1T3 stream: X, S, 15-bit PictureID,
    TL0PICIDX, TID, and the layer sync bit (Y) on the TL2 and TL1 frames of every second
    cycle of four frames."""
    tid = L1T3_TIDS[frame % 4]
    sync = tid > 0 and (frame // 4) % 2 == 0 and frame % 4 < 3
    picture_id = (PICTURE_ID_BASE[layer] + frame) & 0x7FFF
    tl0 = (frame // 4 + 50 * layer) & 0xFF
    return struct.pack("!BBHBB", 0x90, 0xE0, 0x8000 | picture_id, tl0,
                       tid << 6 | (0x20 if sync else 0))


@dataclass(frozen=True)
class Vp8Descriptor:
    """The fields of an RFC 7741 payload descriptor a test looks at."""
    length: int
    start: bool
    picture_id: int | None
    tl0_pic_idx: int | None
    tid: int | None
    layer_sync: bool


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """RFC 7741 §4.2, written independently of the engine's parser."""
    b0 = payload[0]
    off, picture_id, tl0, tid, sync = 1, None, None, None, False
    if b0 & 0x80:
        x = payload[1]
        off = 2
        if x & 0x80:
            if payload[off] & 0x80:
                picture_id = struct.unpack_from("!H", payload, off)[0] & 0x7FFF
                off += 2
            else:
                picture_id = payload[off]
                off += 1
        if x & 0x40:
            tl0 = payload[off]
            off += 1
        if x & 0x30:
            if x & 0x20:
                tid = payload[off] >> 6
                sync = bool(payload[off] & 0x20)
            off += 1
    return Vp8Descriptor(off, bool(b0 & 0x10), picture_id, tl0, tid, sync)


def layer_payload(layer: int, keyframe: bool, frame: int, *, temporal: bool = False) -> bytes:
    """A VP8 packet whose last bytes say which layer and frame it is (the SFU forwards the
    payload untouched, so the viewer can tell where each packet came from). ``temporal``:
    with an L1T3 payload descriptor (``l1t3_descriptor``) instead of the one-byte one."""
    descriptor = l1t3_descriptor(layer, frame) if temporal else b"\x10"
    if keyframe:
        header = bytes([0x00, 0x00, 0x00]) + b"\x9d\x01\x2a" + struct.pack(
            "<HH", 160 << layer, 120 << layer)
    else:
        header = bytes([0x01, 0x00, 0x00])
    tail = struct.pack("!BI", layer, frame)
    fill = LAYER_SIZES[layer] - len(descriptor) - len(header) - len(tail)
    return descriptor + header + b"\xab" * fill + tail


def payload_layer(payload: bytes) -> tuple[int, int]:
    """(layer, frame) written by layer_payload."""
    layer, frame = struct.unpack("!BI", payload[-5:])
    return layer, frame


def is_vp8_keyframe(payload: bytes) -> bool:
    if len(payload) < 2:
        return False
    tag = parse_vp8_descriptor(payload).length
    return len(payload) > tag and payload[tag] & 0x01 == 0


@dataclass
class SimulcastSender:
    """Sends one packet per frame on each of three layers at ~30 fps, each layer with its
    own SSRC, sequence and timestamp base, stamped with a transport-wide sequence number.
    A PLI for a layer's SSRC is answered with a key frame on that layer after
    ``key_frame_delay`` frames (so tests can see the SFU wait for it). With ``temporal``
    (may be set while running) each layer is an L1T3 stream (``l1t3_descriptor``)."""

    peer: WebRtcPeer
    ssrcs: tuple[int, int, int] = (0x0A000001, 0x0B000002, 0x0C000003)
    key_frame_delay: int = 3
    frame: int = 0
    tcc_seq: int = 0xFFF0  # wraps early on purpose
    sent_tcc: list[int] = field(default_factory=list)
    plis: list[tuple[int, int]] = field(default_factory=list)  # (frame, media ssrc)
    feedback: list[bytes] = field(default_factory=list)  # transport-cc FCIs
    key_frames_sent: list[tuple[int, int]] = field(default_factory=list)  # (frame, layer)
    _key_due: dict[int, int] = field(default_factory=dict)  # layer -> frame
    seq_base: tuple[int, int, int] = (100, 20000, 65500)
    ts_base: tuple[int, int, int] = (1000, 5_000_000, 4_294_000_000)
    temporal: bool = False

    async def run(self, frames: int = 100_000) -> None:
        for _ in range(frames):
            await self.send_frame()
            await trio.sleep(1 / 30)

    async def send_frame(self) -> None:
        f = self.frame
        for layer in range(3):
            due = self._key_due.get(layer)
            key = f == 0 or (due is not None and f >= due)
            if key:
                self._key_due.pop(layer, None)
                self.key_frames_sent.append((f, layer))
            exts = {MID_ID: b"0", RID_ID: f"r{layer}".encode(),
                    TCC_ID: struct.pack("!H", self.tcc_seq & 0xFFFF)}
            self.sent_tcc.append(self.tcc_seq & 0xFFFF)
            self.tcc_seq += 1
            rtp = build_rtp(CHROME_VP8_PT, self.seq_base[layer] + f,
                            self.ts_base[layer] + 3000 * f, self.ssrcs[layer],
                            layer_payload(layer, key, f, temporal=self.temporal), marker=True,
                            extensions=exts)
            await self.peer.send_rtp(rtp)
        self.frame += 1

    async def read_rtcp(self) -> None:
        """Collect PLIs (schedule key frames) and transport-cc feedback from the server."""
        while True:
            packet = await self.peer.recv_rtcp(timeout=60)
            if packet is None:
                continue
            for ptype, fmt, body in rtcp_packets(packet):
                media = struct.unpack_from("!I", body, 4)[0] if len(body) >= 8 else 0
                if ptype == 206 and fmt == 1:
                    self.plis.append((self.frame, media))
                    if media in self.ssrcs:
                        layer = self.ssrcs.index(media)
                        self._key_due.setdefault(layer, self.frame + self.key_frame_delay)
                elif ptype == 205 and fmt == 15:
                    self.feedback.append(body[8:])


def rtcp_packets(compound: bytes) -> list[tuple[int, int, bytes]]:
    """(packet type, FMT, body after the 4-byte header, without padding) of each packet."""
    out, offset = [], 0
    while offset + 4 <= len(compound):
        first, ptype, words = compound[offset], compound[offset + 1], struct.unpack_from(
            "!H", compound, offset + 2)[0]
        end = offset + 4 * (words + 1)
        body = compound[offset + 4:end]
        if first & 0x20 and body:
            body = body[:len(body) - body[-1]]
        out.append((ptype, first & 0x1F, body))
        offset = end
    return out


def parse_transport_cc(fci: bytes) -> dict[str, Any]:
    """Decode a transport-cc FCI (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1):
    returns base, count, reference time, feedback count and {seq: arrival µs or None}."""
    base, count = struct.unpack_from("!HH", fci, 0)
    ref = int.from_bytes(fci[4:7], "big", signed=True)
    fb_count = fci[7]
    statuses: list[int] = []
    pos = 8
    while len(statuses) < count:
        (chunk,) = struct.unpack_from("!H", fci, pos)
        pos += 2
        if not chunk & 0x8000:
            statuses += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif not chunk & 0x4000:
            statuses += [(chunk >> (13 - k)) & 1 for k in range(14)]
        else:
            statuses += [(chunk >> (12 - 2 * k)) & 3 for k in range(7)]
    statuses = statuses[:count]
    t = ref * 64_000
    arrivals: dict[int, int | None] = {}
    for i, s in enumerate(statuses):
        seq = (base + i) & 0xFFFF
        if s == 0:
            arrivals[seq] = None
            continue
        if s == 1:
            delta = fci[pos]
            pos += 1
        else:
            (delta,) = struct.unpack_from("!h", fci, pos)
            pos += 2
        t += delta * 250
        arrivals[seq] = t
    return {"base": base, "count": count, "reference": ref, "feedback_count": fb_count,
            "arrivals": arrivals}


def build_transport_cc(sender_ssrc: int, media_ssrc: int, arrivals: list[tuple[int, int]],
                       feedback_count: int = 0) -> bytes:
    """RTPFB transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1)
    for ``arrivals``, (transport-wide seq, arrival µs) in any order: every status in two-bit
    vector chunks, every received packet with a large (16-bit) delta. Sequence numbers are
    taken relative to the first one given (a test's packets span far less than 2^15)."""
    first = arrivals[0][0]
    rel = sorted((((seq - first + 0x8000) & 0xFFFF) - 0x8000, at) for seq, at in arrivals)
    base_rel, last_rel = rel[0][0], rel[-1][0]
    at_of = dict(rel)
    ref = min(at for _, at in rel) // 64_000
    statuses = [2 if r in at_of else 0 for r in range(base_rel, last_rel + 1)]
    chunks = b""
    for i in range(0, len(statuses), 7):
        chunk = 0xC000
        for k, st in enumerate(statuses[i:i + 7]):
            chunk |= st << (12 - 2 * k)
        chunks += struct.pack("!H", chunk)
    deltas, prev = b"", ref * 64_000 // 250
    for r in range(base_rel, last_rel + 1):
        if r in at_of:
            ticks = at_of[r] // 250
            delta = max(-0x8000, min(0x7FFF, ticks - prev))
            prev += delta
            deltas += struct.pack("!h", delta)
    body = struct.pack("!IIHH", sender_ssrc, media_ssrc, (first + base_rel) & 0xFFFF,
                       len(statuses))
    body += (ref & 0xFFFFFF).to_bytes(3, "big") + bytes([feedback_count & 0xFF])
    body += chunks + deltas
    pad = -len(body) % 4
    first_byte = 0x80 | 15
    if pad:
        body += bytes(pad - 1) + bytes([pad])
        first_byte |= 0x20
    return struct.pack("!BBH", first_byte, 205, len(body) // 4) + body


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """PSFB AFB "REMB" (draft-alvestrand-rmcat-remb)."""
    exp = 0
    while bitrate >> exp > 0x3FFFF:
        exp += 1
    mantissa = bitrate >> exp
    body = struct.pack("!II", sender_ssrc, 0) + b"REMB" + bytes([len(ssrcs)])
    body += ((exp << 18) | mantissa).to_bytes(3, "big")
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return struct.pack("!BBH", 0x80 | 15, 206, len(body) // 4) + body


async def send_rtcp(peer: WebRtcPeer, packet: bytes) -> None:
    assert peer.tx is not None
    await peer.send_raw(peer.tx.protect_rtcp(packet))
