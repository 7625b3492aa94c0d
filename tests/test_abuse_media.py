"""Hostile datagrams during a live session, over real UDP on loopback.

A host streams VP8 to a viewer through the server while 8 classes x 10,000 malformed
datagrams are sent to the media port, twice: from a stranger's socket (an off-path attacker)
and from the host's own socket (an attacker that can use the host's validated address).
The stream must not lose a packet, the server's memory must stay flat, and every hostile
datagram must be accounted for: dropped with a counted reason, or (DTLS) handed to the
transport, which refuses it. STUN without the transport's password never leaves the engine
(its MESSAGE-INTEGRITY is checked there: ``stun_integrity``).
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu.server import Server
from pysfu.testing.media_room import (
    CHROME_MID_EXT,
    CHROME_VP8_PT,
    HOST_SSRC,
    ROOM,
    add_viewer,
    host,  # noqa: F401  (fixture)
    media_workers,  # noqa: F401  (fixture: 1 and 2 workers)
)
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, stun_binding_request, vp8_payload

PER_CLASS = 10_000
PACE = 200  # datagrams between short sleeps, so the live stream's tasks keep running


def rss_kib() -> int:
    """Resident memory of this process (the server, engine included, runs in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hostile_classes(host_peer: WebRtcPeer, replays: list[bytes]) -> dict[str, Callable[[int],
                                                                                        bytes]]:
    """Datagram makers, one per class; ``i`` is the datagram's number in its class."""
    rnd = random.Random(1234)
    ufrag = host_peer.ice["usernameFragment"]
    first_bad_seq = 30_000

    def truncated_rtp(i: int) -> bytes:
        return bytes([0x80, CHROME_VP8_PT]) + os.urandom(rnd.randrange(0, 10))

    def bad_ext_len(i: int) -> bytes:
        head = struct.pack("!BBHII", 0x90, CHROME_VP8_PT, i & 0xFFFF, i, HOST_SSRC)
        return head + struct.pack("!HH", 0xBEDE, rnd.randrange(50, 0x10000)) + b"\x10\x00" * 4

    def bad_rtcp_len(i: int) -> bytes:
        return struct.pack("!BBHI", 0x81, 201, rnd.randrange(40, 0x10000), HOST_SSRC) + \
            os.urandom(rnd.randrange(0, 40))

    def random_bytes(i: int) -> bytes:
        return os.urandom(rnd.randrange(1, 300))

    def stun_bad_integrity(i: int) -> bytes:
        return stun_binding_request(f"{ufrag}:x{i}", "not-the-password-" + str(i))

    def dtls_garbage(i: int) -> bytes:
        return bytes([rnd.randrange(20, 64)]) + bytes([0xFE, 0xFD]) + os.urandom(
            rnd.randrange(0, 200))

    def srtp_bad_tag(i: int) -> bytes:
        # A real SRTP packet with a fresh sequence number (ahead of the live stream, so not a
        # replay) and a damaged tag.
        srtp = bytearray(replays[i % len(replays)])
        srtp[2:4] = struct.pack("!H", first_bad_seq + i % 1000)
        srtp[-1] ^= 0x5A
        return bytes(srtp)

    def replay(i: int) -> bytes:
        return replays[i % len(replays)]

    return {
        "truncated_rtp": truncated_rtp, "bad_ext_len": bad_ext_len, "bad_rtcp_len": bad_rtcp_len,
        "random_bytes": random_bytes, "stun_bad_integrity": stun_bad_integrity,
        "dtls_garbage": dtls_garbage, "srtp_bad_tag": srtp_bad_tag, "replay": replay,
    }


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# The test peers send no consent checks; keep the session alive through the long test.
@pytest.mark.parametrize("config_overrides", [{"consent_timeout": 600.0}])
async def test_hostile_datagrams_during_live_session(server: Server, client: Any,
                                                     host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    room = server.rooms.get(ROOM)
    host_transport = room.transports[host_peer.transport["id"]]
    selected_before = host_transport.selected_tuple()
    assert selected_before is not None
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        await trio.sleep(0.1)
        # Some real packets first, kept for the replay class.
        replays = []
        seq = 1
        for _ in range(20):
            rtp = build_rtp(CHROME_VP8_PT, seq, 90 * seq, HOST_SSRC, vp8_payload(seq == 1),
                            marker=True, extensions={CHROME_MID_EXT: b"0"})
            replays.append(await host_peer.send_rtp(rtp))
            seq += 1
        for _ in range(20):
            assert await viewer.peer.recv_rtp() is not None
        classes = hostile_classes(host_peer, replays)
        stranger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await stranger.bind(("127.0.0.1", 0))
        stack.callback(stranger.close)

        stream_done = trio.Event()
        sent_live: list[int] = []
        got_live: list[int] = []

        async def live_stream() -> None:
            nonlocal seq
            while not stream_done.is_set():
                rtp = build_rtp(CHROME_VP8_PT, seq, 90 * seq, HOST_SSRC, vp8_payload(False),
                                marker=True, extensions={CHROME_MID_EXT: b"0"})
                await host_peer.send_rtp(rtp)
                sent_live.append(seq)
                seq += 1
                await trio.sleep(0.005)

        async def live_receive() -> None:
            while True:
                packet = await viewer.peer.recv_rtp(timeout=2)
                if packet is None:
                    return
                got_live.append(packet.seq)

        rss_before = rss_kib()
        figures: dict[str, dict[str, Any]] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live_receive)
            nursery.start_soon(live_stream)
            for source, sock in (("stranger", stranger), ("host_addr", host_peer.sock)):
                for name, make in classes.items():
                    drops0 = server.media.drops()
                    stats0 = server.media.stats(host_transport.handle)
                    inbox0 = host_transport.inbox_dropped
                    for i in range(PER_CLASS):
                        await sock.sendto(make(i), host_peer.server)
                        if i % PACE == PACE - 1:
                            await trio.sleep(0.001)
                    # Wait (bounded) until the engine has accounted for all of them.
                    with trio.move_on_after(10):
                        while True:
                            d = diff(server.media.drops(), drops0)
                            stats = server.media.stats(host_transport.handle)
                            up = (stats["stunReceived"] - stats0["stunReceived"]
                                  + stats["dtlsReceived"] - stats0["dtlsReceived"])
                            if sum(d.values()) + up >= PER_CLASS:
                                break
                            await trio.sleep(0.05)
                    d["to_transport_stun"] = stats["stunReceived"] - stats0["stunReceived"]
                    d["to_transport_dtls"] = stats["dtlsReceived"] - stats0["dtlsReceived"]
                    d["transport_inbox_full"] = host_transport.inbox_dropped - inbox0
                    figures[f"{source}/{name}"] = {k: v for k, v in d.items() if v}
                    print(f"abuse: {source}/{name}: {figures[f'{source}/{name}']}")
            await trio.sleep(0.2)
            stream_done.set()
            await trio.sleep(0.5)
            nursery.cancel_scope.deadline = trio.current_time() + 3
        rss_after = rss_kib()

        print(f"\nabuse: {PER_CLASS} datagrams per class per source; "
              f"live packets sent {len(sent_live)} received {len(got_live)}; "
              f"RSS {rss_before} KiB -> {rss_after} KiB")

        # The live stream lost nothing and stayed in order.
        live_seqs = [(s - sent_live[0]) for s in got_live] if got_live else []
        assert len(got_live) == len(sent_live), (len(got_live), len(sent_live))
        assert live_seqs == [(live_seqs[0] + i) & 0xFFFF for i in range(len(live_seqs))]
        # Memory stays flat (generous bound: 160,000 datagrams went through).
        assert rss_after - rss_before < 30_000
        # The selected tuple never moved; the room and engine objects are intact.
        assert host_transport.selected_tuple() == selected_before
        assert server.media.counts()["producers"] == 1
        assert server.media.counts()["consumers"] == 1

        # Every datagram accounted for, with the reasons each class can have.
        allowed = {
            "stranger": {
                "truncated_rtp": {"unknown_source"}, "bad_ext_len": {"unknown_source"},
                "bad_rtcp_len": {"unknown_source"},
                "random_bytes": {"unknown_source", "demux", "stun_unknown"},
                # The right ufrag finds the transport; the engine checks the integrity.
                "stun_bad_integrity": {"stun_integrity"},
                "dtls_garbage": {"unknown_source"}, "srtp_bad_tag": {"unknown_source"},
                "replay": {"unknown_source"},
            },
            "host_addr": {
                "truncated_rtp": {"srtp_malformed"},
                "bad_ext_len": {"srtp_malformed"},
                "bad_rtcp_len": {"srtcp_malformed", "srtcp_auth"},
                "random_bytes": {"demux", "srtp_malformed", "srtp_auth", "srtcp_malformed",
                                 "srtcp_auth", "to_transport_dtls", "up_queue_full",
                                 "stun_integrity"},
                "stun_bad_integrity": {"stun_integrity"},
                "dtls_garbage": {"to_transport_dtls", "up_queue_full"},
                "srtp_bad_tag": {"srtp_auth"},
                "replay": {"srtp_replay"},
            },
        }
        for key, got in figures.items():
            source, name = key.split("/")
            accounted = {k: v for k, v in got.items() if k != "transport_inbox_full"}
            assert set(accounted) <= allowed[source][name], (key, got)
            assert sum(accounted.values()) == PER_CLASS, (key, got)
        assert Counter(server.media.drops())["panic"] == 0
    # The host is still connected and its media still flows after all of it.
    assert server.media.stats(host_transport.handle)["srtp"] is True
