"""Peers of the cluster tests and benches (pysfu.testing.cluster_nodes starts the nodes): a
host that joins (following placement redirects) and sends VP8, viewers that consume it on
any node, with independent WebRTC test peers (pysfu.testing.webrtc_peer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import trio

from pysfu.client import SignalingClient, connect, connect_and_join
from pysfu.testing.cluster_nodes import Node
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.media_room import CHROME_MID_EXT, CHROME_VP8_PT, HOST_SSRC
from pysfu.testing.webrtc_peer import Rtp, WebRtcPeer, build_rtp, connected_peer, vp8_payload

open_peer = connected_peer  # (client, room, direction): a connected test peer in ``room``


async def start_host(stack: AsyncExitStack, node: Node | str, room: str, *,
                     stay: bool = False) -> tuple[SignalingClient, WebRtcPeer, str]:
    """A host joined to ``room`` on ``node`` (or where placement redirects lead: the
    client's ``url``; ``stay``: joins as if redirected there, so it is not sent on) with one
    VP8 producer; its client, test peer and producer id."""
    url = node.ws_url if isinstance(node, Node) else node
    if stay:
        host = await stack.enter_async_context(connect(url))
        await host.join(room, "host", "host", redirected=True)
    else:
        host = await stack.enter_async_context(connect_and_join(url, room, "host", "host"))
    peer = await open_peer(host, room, "send")
    stack.callback(peer.close)
    producer_id = await host.produce(room, peer.transport["id"], "video",
                                     vp8_producer(mid="0", ssrc=HOST_SSRC))
    return host, peer, producer_id


@dataclass
class Viewer:
    client: SignalingClient
    peer: WebRtcPeer
    consumer: dict[str, Any]


async def start_viewer(stack: AsyncExitStack, node: Node | str, name: str, room: str
                       ) -> Viewer:
    """A viewer on ``node`` consuming the room's (only) video producer, as that node
    names it (on an edge node: the piped producer)."""
    url = node.ws_url if isinstance(node, Node) else node
    c = await stack.enter_async_context(connect(url))
    await c.join(room, "viewer", name)
    producers = await c.get_producers(room)
    assert len(producers) == 1, producers
    peer = await open_peer(c, room, "recv")
    stack.callback(peer.close)
    caps = device_caps(await c.router_rtp_capabilities(room))
    consumer = await c.consume(room, peer.transport["id"], producers[0]["id"], caps)
    await c.resume_consumer(room, consumer["id"])
    return Viewer(c, peer, consumer)


async def send_frames(peer: WebRtcPeer, first_seq: int, count: int,
                      interval: float = 0.002, *, all_key_frames: bool = False) -> list[bytes]:
    """``count`` one-packet VP8 frames (the first a key frame; ``all_key_frames``: every one,
    for viewers that join meanwhile), each payload ending with its sequence number; the
    payloads sent."""
    payloads = []
    for i in range(count):
        seq = first_seq + i
        payload = vp8_payload(keyframe=i == 0 or all_key_frames) + seq.to_bytes(4, "big")
        await peer.send_rtp(build_rtp(CHROME_VP8_PT, seq & 0xFFFF, (90 * seq) & 0xFFFFFFFF,
                                      HOST_SSRC, payload, marker=True,
                                      extensions={CHROME_MID_EXT: b"0"}))
        payloads.append(payload)
        await trio.sleep(interval)
    return payloads


async def receive(peer: WebRtcPeer, count: int, timeout: float = 10.0) -> list[Rtp]:
    """Up to ``count`` decrypted RTP packets, within ``timeout`` seconds."""
    got: list[Rtp] = []
    with trio.move_on_after(timeout):
        while len(got) < count:
            packet = await peer.recv_rtp(timeout=timeout)
            if packet is not None:
                got.append(packet)
    return got


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str,
                   timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")
