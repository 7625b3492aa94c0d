"""UDP GSO on the engine's send path, over real loopback sockets with libsrtp as the peers.

A retransmission burst (one viewer NACKs every packet it got) is a deterministic burst of
equal-size datagrams to one destination: with GSO the engine sends it as one UDP_SEGMENT
message and the kernel segments it, so each viewer must still receive every datagram, whole
and in order. With the kernel refusing GSO (SO_NO_CHECK on the engine's socket makes it
answer EINVAL) the engine falls back to plain datagrams, counted, and nothing is lost.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest
from test_engine import (
    ROUTER_VP8,
    Engine,
    Peer,
    connect_peer,
    consumer_spec,
    parse_rtp,
    producer_spec,
    rtp,
    vp8_payload,
)

BURST = 10  # within the retransmission budget of a fresh consumer
SIZE = 1000
VIEWER_SSRCS = (0xAAAA0001, 0xBBBB0001)
ROUTER_RTX = 102


def nack(sender_ssrc: int, media_ssrc: int, seqs: list[int]) -> bytes:
    """Generic NACK (RFC 4585): one FCI item per 17 consecutive sequence numbers."""
    fci = b""
    i = 0
    while i < len(seqs):
        pid, blp = seqs[i], 0
        i += 1
        while i < len(seqs) and 0 < (seqs[i] - pid) & 0xFFFF <= 16:
            blp |= 1 << (((seqs[i] - pid) & 0xFFFF) - 1)
            i += 1
        fci += struct.pack("!HH", pid, blp)
    words = 2 + len(fci) // 4
    return struct.pack("!BBHII", 0x81, 205, words, sender_ssrc, media_ssrc) + fci


class Burst:
    """A host and two viewers, each consuming the host's video; `BURST` packets sent."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.host = connect_peer(eng, 1, "hostufrag")
        self.viewers = [connect_peer(eng, 2, "v1ufrag"), connect_peer(eng, 3, "v2ufrag")]
        eng.add_producer(10, 1, producer_spec())
        for i, v in enumerate(self.viewers):
            # Retransmissions as RTX (their own SSRC and sequence numbers, as browsers
            # negotiate): the viewer's SRTP replay window then takes them.
            spec = consumer_spec(VIEWER_SSRCS[i], f"c{i}", False)
            spec.update(rtx_ssrc=VIEWER_SSRCS[i] + 1, rtx_payload_types={ROUTER_VP8: ROUTER_RTX})
            eng.add_consumer(20 + i, v.handle, 10, spec)
        for seq in range(BURST):
            packet = rtp(1000 + seq, vp8_payload(seq == 0, SIZE), ts=(seq // 10) * 3000)
            self.host.sock.sendto(self.host.tx.protect(packet), ("127.0.0.1", eng.port))
        self.first = [receive(v, BURST) for v in self.viewers]
        for got in self.first:
            assert [p["payload"] for p in got] == [vp8_payload(s == 0, SIZE) for s in range(BURST)]

    def nack_all(self, viewer: int) -> list[dict]:
        """The viewer NACKs every packet it got; what it receives back."""
        v = self.viewers[viewer]
        seqs = [p["seq"] for p in self.first[viewer]]
        report = v.tx.protect_rtcp(nack(0x5EED, VIEWER_SSRCS[viewer], seqs))
        v.sock.sendto(report, ("127.0.0.1", self.eng.port))
        return receive(v, BURST)


def receive(viewer: Peer, expect: int) -> list[dict]:
    """RTP packets (SRTCP reports skipped) until `expect` arrived or nothing more comes."""
    packets: list[dict] = []
    deadline = time.monotonic() + 3.0
    while len(packets) < expect and time.monotonic() < deadline:
        got = viewer.recv_all(0.5)
        for d in got:
            if 192 <= d[1] <= 223:  # RTCP packet types 200-207 with the marker bit
                continue
            packets.append(parse_rtp(viewer.rx.unprotect(d)))
    return packets


def in_order(resent: list[dict], first: list[dict], viewer: int) -> bool:
    """RTX packets (RFC 4588: original sequence number, then the payload) carrying `first`,
    in its order, on the viewer's RTX SSRC with consecutive RTX sequence numbers."""
    originals = [(struct.pack("!H", p["seq"]) + p["payload"]) for p in first]
    rtx_seqs = [p["seq"] for p in resent]
    return (
        [p["payload"] for p in resent] == originals
        and all(p["ssrc"] == VIEWER_SSRCS[viewer] + 1 and p["pt"] == ROUTER_RTX for p in resent)
        and rtx_seqs == [(rtx_seqs[0] + i) & 0xFFFF for i in range(len(resent))]
    )


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine("127.0.0.1", 0)
    yield eng
    eng.close()


def test_retransmission_burst_leaves_as_one_gso_message_and_arrives_whole(engine: Engine) -> None:
    room = Burst(engine)
    assert engine.gso
    before = engine.totals()
    resent = room.nack_all(0)
    after = engine.totals()
    # Every datagram of the burst arrived, whole (each decrypts), in order, as sent first.
    assert len(resent) == BURST
    assert in_order(resent, room.first[0], 0)
    # ... and it left as one UDP_SEGMENT message carrying all of them (same size each).
    assert after["gsoMessages"] - before["gsoMessages"] == 1
    assert after["gsoDatagrams"] - before["gsoDatagrams"] == BURST
    assert after["packetsRetransmitted"] - before["packetsRetransmitted"] == BURST
    assert after["gsoRefused"] == 0
    # The other viewer got nothing of it.
    assert receive(room.viewers[1], 1) == []
    assert engine.drops()["send_failed"] == 0


def test_kernel_refusing_gso_falls_back_to_plain_datagrams(engine: Engine) -> None:
    engine._test_refuse_gso()
    room = Burst(engine)
    resent = [room.nack_all(0), room.nack_all(1)]
    totals = engine.totals()
    for i in range(2):
        assert len(resent[i]) == BURST
        assert in_order(resent[i], room.first[i], i)
    # The first GSO message was refused: GSO is off for the engine from then on, counted once.
    assert totals["gsoRefused"] == 1
    assert not engine.gso
    assert totals["gsoMessages"] == 0
    assert engine.drops()["send_failed"] == 0


def test_gso_setting_off_sends_plain_datagrams() -> None:
    with Engine("127.0.0.1", 0, gso=False) as eng:
        assert not eng.gso
        room = Burst(eng)
        resent = room.nack_all(1)
        assert len(resent) == BURST
        assert in_order(resent, room.first[1], 1)
        totals = eng.totals()
        assert (totals["gsoMessages"], totals["gsoDatagrams"], totals["gsoRefused"]) == (0, 0, 0)
