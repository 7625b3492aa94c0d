"""Three nodes on this machine around a real redis-server (pysfu.testing.cluster_nodes)
against one node: a host on node A sending a one-packet VP8 frame every ``--interval``
seconds, and N viewers (independent WebRTC test peers, pysfu.testing.cluster_peers) either
all on A ("single"), or spread over B and C ("spread": A forwards each packet once per edge
node, through its pipe; B and C forward to their viewers).

Per node, over ``--seconds`` of streaming after a warm-up: CPU (user + system seconds of
the ``pysfu serve`` process, /proc/PID/stat), forwarded packets/s as the node publishes it
in the registry (``load.pps``: the engine's counters over its last 2 s refresh period) and
packets delivered to its viewers; CPU per forwarded packet per node. The pipe hop's cost
per packet: the extra CPU of the spread cluster (A + B + C) over the single node, per packet
delivered to a viewer, and A's CPU per packet it sends into a pipe.

Join latency (from the ``join`` request to the first decrypted RTP packet: join,
getProducers, createTransport, ICE + DTLS, consume, resume) of viewers on A (local to the
host) and on B (remote: the first one also waits for the pipe), and of a host opening a new
room through a placement redirect (A loaded, redirected to the idle node) against one
joining directly.

The machine's 2 cores are shared by the nodes, redis-server and the Python test peers (and,
now, other builds): the figures are noisy; they give orders of magnitude.

Prints one JSON object and writes it to bench/results/cluster_nodes-<UTC time>.json.
Usage: python bench/cluster_nodes.py [--viewers 10] [--seconds 5] [--joins 5]
       [--interval 0.005]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import coredis
import trio

from pysfu.client import connect, connect_and_join
from pysfu.cluster.node import REFRESH, node_key
from pysfu.testing.cluster_nodes import Node, RedisServer, redis_server, serve_node
from pysfu.testing.cluster_peers import open_peer, send_frames, start_host
from pysfu.testing.fixtures import device_caps
from pysfu.testing.webrtc_peer import WebRtcPeer

ENV = {"PYSFU_MAX_ROOMS_PER_ADDRESS_PER_MINUTE": "1000"}
PHASE_TIMEOUT = 120.0  # seconds any one phase may take


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def published_pps(redis: RedisServer, nodes: list[Node]) -> dict[str, float]:
    client: coredis.Redis[str] = coredis.Redis.from_url(redis.url, decode_responses=True)
    out = {}
    async with client:
        for node in nodes:
            text = await client.get(node_key(node.node_id))
            out[node.node_id] = float(json.loads(text)["load"]["pps"]) if text else -1.0
    return out


async def viewer(stack: AsyncExitStack, node: Node, room: str, name: str
                 ) -> tuple[float, WebRtcPeer]:
    """A viewer on ``node``: seconds from its join request to its first RTP packet."""
    c = await stack.enter_async_context(connect(node.ws_url))
    start = trio.current_time()
    await c.join(room, "viewer", name)
    producers = await c.get_producers(room)
    peer = await open_peer(c, room, "recv")
    stack.callback(peer.close)
    caps = device_caps(await c.router_rtp_capabilities(room))
    consumer = await c.consume(room, peer.transport["id"], producers[0]["id"], caps)
    await c.resume_consumer(room, consumer["id"])
    packet = await peer.recv_rtp(timeout=10)
    assert packet is not None, f"{name}: no media"
    return trio.current_time() - start, peer


async def drain(peer: WebRtcPeer, counter: dict[str, int], node: str) -> None:
    while True:
        if await peer.recv_rtp(timeout=60) is not None:
            counter[node] += 1


async def fan_out(redis: RedisServer, nodes: list[Node], where: list[Node], room: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    """A host on nodes[0], ``args.viewers`` viewers round-robin over ``where``."""
    a = nodes[0]
    async with trio.open_nursery() as tasks, AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, a, room, stay=True)
        tasks.start_soon(functools.partial(send_frames, host_peer, 1, 10_000_000, args.interval,
                                           all_key_frames=True))
        received = {node.node_id: 0 for node in nodes}
        for i in range(args.viewers):
            node = where[i % len(where)]
            _, peer = await viewer(stack, node, room, f"v{i}")
            tasks.start_soon(drain, peer, received, node.node_id)
        await trio.sleep(REFRESH + 1.0)  # warm-up; a registry refresh inside the window
        cpu0 = {n.node_id: process_cpu(n.process.pid) for n in nodes}
        got0 = dict(received)
        await trio.sleep(args.seconds)
        cpu = {n.node_id: process_cpu(n.process.pid) - cpu0[n.node_id] for n in nodes}
        pps = await published_pps(redis, nodes)
        delivered = {k: received[k] - got0[k] for k in received}
        tasks.cancel_scope.cancel()
    per_node = {}
    for n in nodes:
        k = n.node_id
        per_node[k] = {
            "cpu_s": round(cpu[k], 3),
            "cpu_percent_of_a_core": round(100 * cpu[k] / args.seconds, 1),
            "forwarded_pps_published": round(pps[k], 1),
            "delivered_to_its_viewers_pps": round(delivered[k] / args.seconds, 1),
            "cpu_us_per_forwarded_packet": (round(1e6 * cpu[k] / (pps[k] * args.seconds), 1)
                                            if pps[k] > 0 else None)}
    total = sum(delivered.values())
    return {"viewers_on": [n.node_id for n in where], "viewers": args.viewers,
            "delivered_pps": round(total / args.seconds, 1),
            "cluster_cpu_s": round(sum(cpu.values()), 3),
            "cluster_cpu_us_per_delivered_packet": round(1e6 * sum(cpu.values())
                                                         / max(total, 1), 1),
            "nodes": per_node}


def ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(1000 * statistics.median(values), 1),
            "max_ms": round(1000 * max(values), 1), "n": len(values)}


async def join_latency(nodes: list[Node], joins: int) -> dict[str, Any]:
    a, b = nodes[0], nodes[1]
    room = "joins"
    async with trio.open_nursery() as tasks, AsyncExitStack() as stack:
        _, host_peer, _ = await start_host(stack, a, room, stay=True)
        tasks.start_soon(functools.partial(send_frames, host_peer, 1, 10_000_000, 0.005,
                                           all_key_frames=True))
        await trio.sleep(0.5)
        local = [(await viewer(stack, a, room, f"a{i}"))[0] for i in range(joins)]
        first_remote = (await viewer(stack, b, room, "b-first"))[0]
        remote = [(await viewer(stack, b, room, f"b{i}"))[0] for i in range(joins)]
        tasks.cancel_scope.cancel()
    return {"local_viewer_on_A": ms(local),
            "remote_viewer_on_B_first_ms (pipe set-up)": round(1000 * first_remote, 1),
            "remote_viewer_on_B_later": ms(remote)}


async def host_join_latency(redis: RedisServer, nodes: list[Node], joins: int
                            ) -> dict[str, Any]:
    """A host's connect + join: directly (``redirected``: never sent on) vs through a
    redirect (A loaded with 30 signaling-only peers, C the idle target)."""
    a = nodes[0]
    direct, redirected, targets = [], [], set()
    async with AsyncExitStack() as stack:
        for i in range(joins):
            start = trio.current_time()
            async with connect(a.ws_url) as client:
                await client.join(f"direct-{i}", "host", "h", redirected=True)
                direct.append(trio.current_time() - start)
        busy = await stack.enter_async_context(connect(a.ws_url))
        await busy.join("busy", "host", "busy-host", redirected=True)
        for i in range(29):
            c = await stack.enter_async_context(connect(a.ws_url))
            await c.join("busy", "viewer", f"busy-{i}")
        await trio.sleep(2 * REFRESH)  # the registry shows A's load
        for i in range(joins):
            start = trio.current_time()
            async with connect_and_join(a.ws_url, f"placed-{i}", "host", "h") as client:
                redirected.append(trio.current_time() - start)
                targets.add(str(client.url))
            await trio.sleep(0.6)  # (the room closes after the host grace period)
    return {"host_join_direct": ms(direct), "host_join_through_redirect": ms(redirected),
            "redirect_targets": sorted(targets)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(), "viewers": args.viewers, "seconds": args.seconds,
        "packets_per_s_sent_by_host": round(1 / args.interval),
        "note": "one 2-core machine shared by the 3 nodes, redis-server, the Python test "
                "peers and other builds: noisy figures"}
    with tempfile.TemporaryDirectory() as tmp:
        async with redis_server() as redis, AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(serve_node(
                redis, name, Path(tmp), plain_ports=f"{first}-{first + 99}", extra_env=ENV,
                node_url=True)) for name, first in (("a", 43700), ("b", 43800), ("c", 43900))]
            with trio.fail_after(PHASE_TIMEOUT):
                result["single_node"] = await fan_out(redis, nodes, nodes[:1], "single", args)
            await trio.sleep(1.0)
            with trio.fail_after(PHASE_TIMEOUT):
                result["spread_over_b_and_c"] = await fan_out(redis, nodes, nodes[1:],
                                                              "spread", args)
            single, spread = result["single_node"], result["spread_over_b_and_c"]
            extra = spread["cluster_cpu_s"] - single["cluster_cpu_s"]
            a_spread = spread["nodes"]["a"]
            result["pipe_hop"] = {
                "extra_cluster_cpu_us_per_delivered_packet": round(
                    1e6 * extra / max(spread["delivered_pps"] * args.seconds, 1), 1),
                "a_cpu_us_per_packet_into_a_pipe": (round(
                    1e6 * a_spread["cpu_s"] / (a_spread["forwarded_pps_published"]
                                               * args.seconds), 1)
                    if a_spread["forwarded_pps_published"] > 0 else None)}
            await trio.sleep(1.0)
            with trio.fail_after(PHASE_TIMEOUT):
                result["viewer_join_to_first_packet"] = await join_latency(nodes, args.joins)
            with trio.fail_after(PHASE_TIMEOUT):
                result["host_join"] = await host_join_latency(redis, nodes, args.joins)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.005)
    outcome = trio.run(main, parser.parse_args())
    text = json.dumps(outcome, indent=2)
    print(text)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).parent / "results" / f"cluster_nodes-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
