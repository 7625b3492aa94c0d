"""Two nodes on this machine around a real redis-server (pysfu.testing.cluster_nodes): the
join latency of a viewer on the origin node against one on another node, and the CPU of
each node process while a host on A is forwarded to N viewers all on A, or all on B.

Join latency: from the ``join`` request to the first RTP packet decrypted by the viewer
(join, getProducers, createTransport, ICE + DTLS, consume, resume), with the host sending
a VP8 frame every 5 ms (key frames asked for by the consumer are answered by the next
frame, which the test host always marks as one). On B the first viewer also waits for the
room's pipe (a request to A over Redis, a pipe transport on each side); later ones join the
edge room that exists.

CPU: user + system seconds of each ``pysfu serve`` process (/proc/PID/stat) over
``--seconds`` of streaming, per packet delivered to a viewer.

Prints one JSON object and writes it to bench/results/cluster_join-<UTC time>.json.
Usage: python bench/cluster_join.py [--viewers 10] [--joins 5] [--seconds 4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from pysfu.client import connect
from pysfu.testing.cluster_nodes import Node, redis_server, serve_node
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.media_room import CHROME_MID_EXT, CHROME_VP8_PT, HOST_SSRC
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, connected_peer, vp8_payload

ROOM = "bench"
FRAME_INTERVAL = 0.005
ENV = {"PYSFU_MAX_ROOMS_PER_ADDRESS_PER_MINUTE": "1000"}


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




JOIN_ANSWER: list[tuple[str, float]] = []  # (node, seconds from join request to answer)


async def viewer(stack: AsyncExitStack, node: Node, name: str) -> tuple[float, WebRtcPeer]:
    """A viewer on ``node``: seconds from join to its first RTP packet."""
    c = await stack.enter_async_context(connect(node.ws_url))
    start = trio.current_time()
    await c.join(ROOM, "viewer", name)
    JOIN_ANSWER.append((node.node_id, trio.current_time() - start))
    producers = await c.get_producers(ROOM)
    peer = await connected_peer(c, ROOM, "recv")
    stack.callback(peer.close)
    caps = device_caps(await c.router_rtp_capabilities(ROOM))
    consumer = await c.consume(ROOM, peer.transport["id"], producers[0]["id"], caps)
    await c.resume_consumer(ROOM, consumer["id"])
    packet = await peer.recv_rtp(timeout=10)
    assert packet is not None, f"{name}: no media"
    return trio.current_time() - start, peer


class Host:
    def __init__(self, peer: WebRtcPeer) -> None:
        self.peer = peer
        self.sent = 0

    async def run(self) -> None:
        seq = 1
        while True:
            await self.peer.send_rtp(build_rtp(
                CHROME_VP8_PT, seq & 0xFFFF, 90 * seq, HOST_SSRC, vp8_payload(keyframe=True),
                marker=True, extensions={CHROME_MID_EXT: b"0"}))
            self.sent += 1
            seq += 1
            await trio.sleep(FRAME_INTERVAL)


async def drain(peer: WebRtcPeer, counter: list[int]) -> None:
    while True:
        if await peer.recv_rtp(timeout=60) is not None:
            counter[0] += 1


async def fan_out(a: Node, b: Node, where: Node, n: int, seconds: float) -> dict[str, Any]:
    """N viewers on ``where`` of a host on A: CPU of each node per delivered packet."""
    async with trio.open_nursery() as tasks, AsyncExitStack() as stack:
        host = await stack.enter_async_context(connect(a.ws_url))
        await host.join(ROOM, "host", "host")
        host_peer = await connected_peer(host, ROOM, "send")
        stack.callback(host_peer.close)
        await host.produce(ROOM, host_peer.transport["id"], "video",
                           vp8_producer(mid="0", ssrc=HOST_SSRC))
        sender = Host(host_peer)
        tasks.start_soon(sender.run)
        received = [0]
        for i in range(n):
            _, peer = await viewer(stack, where, f"v{i}")
            tasks.start_soon(drain, peer, received)
        await trio.sleep(1.0)  # warm-up
        cpu0 = {node.node_id: process_cpu(node.process.pid) for node in (a, b)}
        got0 = received[0]
        await trio.sleep(seconds)
        cpu = {node.node_id: process_cpu(node.process.pid) - cpu0[node.node_id]
               for node in (a, b)}
        delivered = received[0] - got0
        tasks.cancel_scope.cancel()
    return {"viewers_on": where.node_id, "viewers": n, "delivered_packets": delivered,
            "packets_per_s": round(delivered / seconds),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_us_per_delivered_packet": {k: round(1e6 * v / max(delivered, 1), 1)
                                            for k, v in cpu.items()}}


async def join_latency(a: Node, b: Node, joins: int) -> dict[str, Any]:
    async with trio.open_nursery() as tasks, AsyncExitStack() as stack:
        host = await stack.enter_async_context(connect(a.ws_url))
        await host.join(ROOM, "host", "host")
        host_peer = await connected_peer(host, ROOM, "send")
        stack.callback(host_peer.close)
        await host.produce(ROOM, host_peer.transport["id"], "video",
                           vp8_producer(mid="0", ssrc=HOST_SSRC))
        tasks.start_soon(Host(host_peer).run)
        await trio.sleep(0.5)
        local = [(await viewer(stack, a, f"a{i}"))[0] for i in range(joins)]
        first_remote = (await viewer(stack, b, "b-first"))[0]
        remote = [(await viewer(stack, b, f"b{i}"))[0] for i in range(joins)]
        tasks.cancel_scope.cancel()

    def ms(values: list[float]) -> dict[str, float]:
        return {"median_ms": round(1000 * statistics.median(values), 1),
                "max_ms": round(1000 * max(values), 1)}

    answers = JOIN_ANSWER[:]
    return {"join_to_first_packet": {
                "origin_node": ms(local),
                "edge_node_first_viewer_ms": round(1000 * first_remote, 1),
                "edge_node_later_viewers": ms(remote)},
            "join_request_to_answer": {
                "origin_node": ms([t for n, t in answers if n == a.node_id]),
                "edge_node_first_viewer_ms (pipe set-up)":
                    round(1000 * answers[len(local)][1], 1),
                "edge_node_later_viewers": ms([t for n, t in answers[len(local) + 1:]])}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with redis_server() as redis, \
                serve_node(redis, "a", Path(tmp), plain_ports="43100-43199",
                           extra_env=ENV) as a, \
                serve_node(redis, "b", Path(tmp), plain_ports="43200-43299",
                           extra_env=ENV) as b:
            result: dict[str, Any] = {
                "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "cpus": os.cpu_count(), "viewers": args.viewers, "joins": args.joins,
                "seconds": args.seconds,
                "note": "one 2-core machine shared by the 2 nodes, redis-server, the Python "
                        "test peers and other builds: noisy figures"}
            result["join"] = await join_latency(a, b, args.joins)
            await trio.sleep(1.0)
            result["all_on_origin"] = await fan_out(a, b, a, args.viewers, args.seconds)
            await trio.sleep(1.0)
            result["all_on_edge"] = await fan_out(a, b, b, args.viewers, args.seconds)
            return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    outcome = trio.run(main, parser.parse_args())
    text = json.dumps(outcome, indent=2)
    print(text)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).parent / "results" / f"cluster_join-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
