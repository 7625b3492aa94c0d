"""UDP GRO on the engine's receive path, over real loopback sockets with libsrtp as the peers.

A host sends a burst of SRTP packets as one UDP GSO message (UDP_SEGMENT; the last packet
shorter). Loopback hands such a message whole to a socket with UDP_GRO on, so with ``gro``
the engine receives one coalesced buffer and must split it into the host's packets before
routing: every viewer then gets every packet, whole and in order, and the totals count one
coalesced buffer of BURST datagrams. With GRO off (the default) the kernel segments the
message before the engine's socket and the viewers get the same packets.
"""

from __future__ import annotations

import socket
import time

import pytest
from test_engine import (
    Engine,
    connect_peer,
    consumer_spec,
    producer_spec,
    rtp,
    vp8_payload,
)
from test_gso import receive

BURST = 12
SIZE = 900
SOL_UDP = 17
UDP_SEGMENT = 103


def payload(seq: int) -> bytes:
    # The last packet shorter: it ends the GSO message (and the coalesced buffer).
    return vp8_payload(seq == 0, SIZE if seq + 1 < BURST else SIZE - 300)


@pytest.mark.parametrize("gro", [True, False])
def test_coalesced_burst_is_split_into_the_hosts_packets(gro: bool) -> None:
    with Engine("127.0.0.1", 0, gro=gro) as eng:
        assert eng.gro is gro
        host = connect_peer(eng, 1, "hostufrag")
        viewers = [connect_peer(eng, 2, "v1ufrag"), connect_peer(eng, 3, "v2ufrag")]
        eng.add_producer(10, 1, producer_spec())
        for i, v in enumerate(viewers):
            spec = consumer_spec(0xAAAA0001 + i * 0x10000, f"c{i}", False)
            eng.add_consumer(20 + i, v.handle, 10, spec)
        packets = [host.tx.protect(rtp(1000 + seq, payload(seq), ts=3000)) for seq in range(BURST)]
        segment = len(packets[0])
        assert all(len(p) == segment for p in packets[:-1]) and len(packets[-1]) < segment
        before = eng.totals()
        cmsg = [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))]
        host.sock.sendmsg([b"".join(packets)], cmsg, 0, ("127.0.0.1", eng.port))
        for v in viewers:
            got = receive(v, BURST)
            assert [p["seq"] for p in got] == [(got[0]["seq"] + i) & 0xFFFF for i in range(BURST)]
            assert [p["payload"] for p in got] == [payload(s) for s in range(BURST)]
        after = eng.totals()
        coalesced = (after["groBuffers"] - before["groBuffers"],
                     after["groDatagrams"] - before["groDatagrams"])
        assert coalesced == ((1, BURST) if gro else (0, 0))
        assert after["groRefused"] == 0
        drops = eng.drops()
        assert drops["truncated"] == 0 and drops["srtp_auth"] == 0


def test_gro_is_off_by_default() -> None:
    with Engine("127.0.0.1", 0) as eng:
        assert not eng.gro
        assert eng.totals()["groRefused"] == 0


def test_gro_with_two_workers_is_on_for_every_socket() -> None:
    with Engine("127.0.0.1", 0, gro=True, workers=2) as eng:
        assert eng.gro
        # Datagrams sent as one GSO message to the port reach one worker, split there.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        before = sum(eng.drops().values())
        cmsg = [(SOL_UDP, UDP_SEGMENT, (100).to_bytes(2, "little"))]
        s.sendmsg([bytes([0x80]) + bytes(99)] * 5, cmsg, 0, ("127.0.0.1", eng.port))
        s.close()
        deadline = time.monotonic() + 2.0
        while eng.totals()["groDatagrams"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        totals = eng.totals()
        assert (totals["groBuffers"], totals["groDatagrams"]) == (1, 5)
        # Five datagrams from an unknown source: five drops, not one.
        assert sum(eng.drops().values()) - before == 5
