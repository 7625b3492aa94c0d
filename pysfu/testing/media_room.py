"""A media room for tests over real UDP: a host (an independent WebRTC stack: hand-built STUN,
pyOpenSSL DTLS client, libsrtp) producing VP8 into room ``ROOM``, viewers added on demand.

``host`` is a pytest fixture (import it into a test module to use it); it needs the
``server`` and ``client`` fixtures of tests/conftest.py. ``media_workers`` (imported likewise)
runs a module's server tests with 1 and with 2 media workers.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from pysfu.client import SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.webrtc_peer import Rtp, WebRtcPeer, build_rtp, connected_peer, vp8_payload

ROOM = "media"
HOST_SSRC = 0x11223344
CHROME_VP8_PT = 96
CHROME_MID_EXT = 4


#: Media worker counts every media test module runs its server tests with.
MEDIA_WORKERS = (1, 2)


@pytest.fixture(params=MEDIA_WORKERS, ids=lambda n: f"workers{n}")
def media_workers(request: pytest.FixtureRequest) -> int:
    """Overrides tests/conftest.py's ``media_workers`` in a module that imports it: the
    module's tests that use the ``server`` fixture run once per entry of MEDIA_WORKERS."""
    return int(request.param)


@dataclass
class Viewer:
    client: SignalingClient
    peer: WebRtcPeer
    consumer: dict[str, Any]


async def open_peer(client: SignalingClient, direction: str, **kwargs: Any) -> WebRtcPeer:
    """A connected test peer on a new transport in ``ROOM``."""
    return await connected_peer(client, ROOM, direction, **kwargs)


@pytest.fixture
async def host(server: Server, client: Any) -> AsyncIterator[tuple[SignalingClient, WebRtcPeer,
                                                                   str]]:
    async with client() as c:
        await c.join(ROOM, "host", "host")
        peer = await open_peer(c, "send")
        producer_id = await c.produce(ROOM, peer.transport["id"], "video",
                                      vp8_producer(mid="0", ssrc=HOST_SSRC))
        try:
            yield c, peer, producer_id
        finally:
            peer.close()


async def add_viewer(client: Any, stack: Any, name: str, producer_id: str,
                     **kwargs: Any) -> Viewer:
    c = await stack.enter_async_context(client())
    await c.join(ROOM, "viewer", name)
    peer = await open_peer(c, "recv", **kwargs)
    caps = device_caps(await c.router_rtp_capabilities(ROOM))
    consumer = await c.consume(ROOM, peer.transport["id"], producer_id, caps)
    await c.resume_consumer(ROOM, consumer["id"])
    return Viewer(c, peer, consumer)


async def send_frames(peer: WebRtcPeer, first_seq: int, count: int, *,
                      keyframe_first: bool = True) -> list[bytes]:
    sent = []
    for i in range(count):
        payload = vp8_payload(keyframe=keyframe_first and i == 0)
        rtp = build_rtp(CHROME_VP8_PT, first_seq + i, 90 * (first_seq + i), HOST_SSRC, payload,
                        marker=True, extensions={CHROME_MID_EXT: b"0"})
        sent.append(await peer.send_rtp(rtp))
        await trio.sleep(0.002)
    return sent


def rtcp_types(packet: bytes) -> list[tuple[int, int, int]]:
    """(packet type, FMT, media SSRC) of each packet in a compound RTCP packet."""
    out, offset = [], 0
    while offset + 4 <= len(packet):
        fmt, ptype, words = packet[offset] & 0x1F, packet[offset + 1], struct.unpack_from(
            "!H", packet, offset + 2)[0]
        media = struct.unpack_from("!I", packet, offset + 8)[0] if ptype in (205, 206) else 0
        out.append((ptype, fmt, media))
        offset += 4 * (words + 1)
    return out


async def streaming_viewer(client: Any, stack: Any, host_peer: WebRtcPeer, producer_id: str,
                           name: str = "v") -> tuple[Viewer, list[Rtp]]:
    """A viewer that has received the host's first 5 frames (sequence numbers 1-5)."""
    viewer = await add_viewer(client, stack, name, producer_id)
    await trio.sleep(0.1)
    await send_frames(host_peer, 1, 5)
    first = [await viewer.peer.recv_rtp() for _ in range(5)]
    assert all(first), first
    return viewer, [p for p in first if p is not None]


async def connect_time(client: Any, room: str, name: str) -> float:
    """Seconds from connectTransport to ICE + DTLS done, for a new viewer ``name`` in ``room``
    with one recv transport (``client``: the factory fixture of tests/conftest.py)."""
    async with client() as c:
        await c.join(room, "viewer", name)
        transport = await c.create_transport(room, "recv")
        peer = WebRtcPeer(transport)
        await peer.bind()
        await c.connect_transport(room, transport["id"], peer.dtls_parameters())
        start = trio.current_time()
        await peer.connect()
        elapsed = trio.current_time() - start
        peer.close()
        return elapsed


async def connect_times_under_load(client: Any, room: str, script: str,
                                   *args: str) -> tuple[list[float], bytes]:
    """Run ``python -c script *args`` (a flood, say) in another process and measure
    ``connect_time`` of three newcomers while it runs; returns those times and what the
    script printed once it ended."""
    load = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
    try:
        await trio.sleep(0.5)
        times = [await connect_time(client, room, f"under-load-{i}") for i in range(3)]
        await trio.to_thread.run_sync(load.wait)
    finally:
        load.kill()
    return times, load.stdout.read() if load.stdout else b""
