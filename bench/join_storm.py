"""Join storm: N viewers join one room at once while its host streams; how long until every
viewer has its first media packet, and what the server's Python thread spends meanwhile.

One ``python -m pysfu serve`` on loopback; a host (pysfu.testing's WebRtcPeer: real ICE, DTLS
and SRTP) sends VP8 at 30 frames/s, 3 packets per frame, a key frame every ``--key-every``
frames and whenever the server asks for one (PLI/FIR), as a browser does. Then N viewers
start together, each the whole way a browser goes: its own WebSocket
(from one of several 127.0.x.y addresses, ``--per-address`` viewers each; their media
from 127.0.0.1), join, create a
receive transport, ICE, the DTLS handshake, consume, resume; done when it has decrypted its
first video packet. Viewers and host run in this process on the same cores as the server, so
the time is the whole system's; the server's CPU is read from /proc (the process, and its
main thread, which is the Python control plane: the engine's threads are others).

The per-peer and per-address limits that a real storm would meet (handshakes in progress,
peers per room, request rates) are lifted through the environment: this measures the work,
not the limits.

Usage: python bench/join_storm.py [--viewers 500] [--per-address 16] [--out bench/results]
Writes bench/results/<UTC time>-<git rev>-join-storm.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from pysfu.client import connect
from pysfu.testing.fixtures import device_caps, vp8_producer
from pysfu.testing.ports import free_media_port, free_port
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, parse_rtcp, vp8_payload

ROOT = Path(__file__).resolve().parent.parent
ROOM = "storm"
VP8_PT, MID_EXT, HOST_SSRC = 96, 4, 0x5354_4F52  # as in pysfu/testing/fixtures.py
FRAME_INTERVAL = 1 / 30
PACKETS_PER_FRAME = 3
# Seconds a viewer may take to get its first packet.
VIEWER_TIMEOUT = float(os.environ.get("STORM_TIMEOUT", "120"))


def thread_cpu(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(viewers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "PYSFU_MAX_PEERS_PER_ROOM": str(viewers + 8),
        "PYSFU_MAX_HANDSHAKES": str(2 * viewers + 64),
        "PYSFU_MAX_DTLS_HANDSHAKES": str(2 * viewers + 64),
        "PYSFU_MAX_DTLS_HANDSHAKES_PER_ADDRESS": str(2 * viewers + 64),  # media from 127.0.0.1
        "PYSFU_REQUESTS_PER_SECOND": "1000000",
        "PYSFU_REQUEST_BURST": "1000000",
        "PYSFU_CONNECTIONS_PER_SECOND_PER_ADDRESS": "100000",
        "PYSFU_CONNECTION_BURST_PER_ADDRESS": "100000",
        "PYSFU_CONSENT_TIMEOUT": "3600",  # the bench's peers send no consent checks
        "PYSFU_LOG_LEVEL": "warning",
    })
    proc = subprocess.Popen(
        [sys.executable, "-m", "pysfu", "serve", "--port", str(port), "--rtc-port",
         str(free_media_port()), "--metrics-port", "0"],
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    return proc, port


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    with trio.fail_after(30):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with connect(url):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                await trio.sleep(0.1)


async def host_stream(stack: AsyncExitStack, url: str, key_every: int,
                      nursery: trio.Nursery) -> str:
    host = await stack.enter_async_context(connect(url))
    await host.join(ROOM, "host", "host")
    transport = await host.create_transport(ROOM, "send")
    peer = WebRtcPeer(transport)
    stack.callback(peer.close)
    await peer.bind()
    await host.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
    await peer.connect()
    producer: str = await host.produce(ROOM, transport["id"], "video",
                                       vp8_producer(mid="0", ssrc=HOST_SSRC))

    key_asked = trio.Event()  # a PLI/FIR from the server: the next frame is a key frame

    async def answer_key_frame_requests() -> None:
        while True:
            compound = await peer.recv_rtcp(timeout=3600)
            if compound and any(p["pt"] == 206 and p["fmt"] in (1, 4)
                                for p in parse_rtcp(compound)):
                key_asked.set()

    async def send() -> None:
        nonlocal key_asked
        seq, frame = 1, 0
        while True:
            key = frame % key_every == 0 or key_asked.is_set()
            if key_asked.is_set():
                key_asked = trio.Event()
            for i in range(PACKETS_PER_FRAME):
                await peer.send_rtp(build_rtp(
                    VP8_PT, seq & 0xFFFF, 3000 * frame, HOST_SSRC,
                    vp8_payload(keyframe=key and i == 0, size=1000),
                    marker=i == PACKETS_PER_FRAME - 1, extensions={MID_EXT: b"0"}))
                seq += 1
            frame += 1
            await trio.sleep(FRAME_INTERVAL)

    nursery.start_soon(answer_key_frame_requests)
    nursery.start_soon(send)
    return producer


class Storm:
    """The viewers' shared record: when each got its first packet, what failed."""

    def __init__(self, url: str, producer: str, viewers: int) -> None:
        self.url, self.producer, self.viewers = url, producer, viewers
        self.start, self.done = trio.Event(), trio.Event()
        self.t0 = 0.0
        self.firsts: list[float] = []
        # Per viewer, seconds from the start to the end of each phase.
        self.phases: dict[str, list[float]] = {"joined": [], "connected": [], "resumed": []}
        self.failures: list[str] = []

    def finished_one(self) -> None:
        if len(self.firsts) + len(self.failures) == self.viewers:
            self.done.set()


async def one_viewer(storm: Storm, local_host: str, index: int) -> None:
    """One viewer, the whole way; it stays (connected, consuming) until every viewer is done."""
    await storm.start.wait()
    peer: WebRtcPeer | None = None
    try:
        with trio.fail_after(VIEWER_TIMEOUT):
            async with connect(storm.url, local_host=local_host) as client:
                await client.join(ROOM, "viewer", f"viewer-{index}")
                storm.phases["joined"].append(trio.current_time() - storm.t0)
                caps = device_caps(await client.router_rtp_capabilities(ROOM))
                transport = await client.create_transport(ROOM, "recv")
                peer = WebRtcPeer(transport)
                await peer.bind()
                await client.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
                await peer.connect(timeout=VIEWER_TIMEOUT)
                storm.phases["connected"].append(trio.current_time() - storm.t0)
                consumer = await client.consume(ROOM, transport["id"], storm.producer, caps)
                await client.resume_consumer(ROOM, consumer["id"])
                storm.phases["resumed"].append(trio.current_time() - storm.t0)
                while await peer.recv_rtp(timeout=VIEWER_TIMEOUT) is None:
                    pass
                storm.firsts.append(trio.current_time() - storm.t0)
                storm.finished_one()
                with trio.CancelScope(deadline=trio.current_time() + 3 * VIEWER_TIMEOUT):
                    await storm.done.wait()  # stays until every viewer is done
    except Exception as exc:  # noqa: BLE001 - counted and reported
        storm.failures.append(f"{type(exc).__name__}: {exc}"[:200])
        storm.finished_one()
    finally:
        if peer is not None:
            peer.close()


def viewer_address(i: int, per_address: int) -> str:
    n = i // per_address  # 127.0.1.1, 127.0.1.2, ... then 127.0.2.1, ...
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_server(args.viewers)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        await wait_ready(url, proc)
        async with trio.open_nursery() as streams, AsyncExitStack() as stack:
            producer = await host_stream(stack, url, args.key_every, streams)
            await trio.sleep(1.0)  # the host's stream is steady
            storm = Storm(url, producer, args.viewers)
            py0, all0 = thread_cpu(proc.pid, proc.pid), process_cpu(proc.pid)
            wall0 = time.monotonic()
            async with trio.open_nursery() as viewers:
                for i in range(args.viewers):
                    viewers.start_soon(one_viewer, storm, viewer_address(i, args.per_address), i)
                await trio.sleep(0.2)  # every viewer task is waiting at the start line
                storm.t0 = trio.current_time()
                storm.start.set()
                await storm.done.wait()
                wall = time.monotonic() - wall0
                py, total = thread_cpu(proc.pid, proc.pid) - py0, process_cpu(proc.pid) - all0
            streams.cancel_scope.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    firsts, failures = sorted(storm.firsts), storm.failures

    def pct(q: float) -> float | None:
        return round(firsts[min(len(firsts) - 1, int(q * len(firsts)))], 3) if firsts else None

    return {
        "viewers": args.viewers, "per_address": args.per_address, "key_every": args.key_every,
        "first_packet_s": {"p50": pct(0.5), "p90": pct(0.9), "max": pct(1.0),
                           "mean": round(statistics.mean(firsts), 3) if firsts else None},
        "phase_p50_s": {name: round(statistics.median(times), 3) if times else None
                        for name, times in storm.phases.items()},
        "all_first_packet_s": round(firsts[-1], 3) if len(firsts) == args.viewers else None,
        "failed": len(failures), "failures": sorted(set(failures))[:10],
        "storm_wall_s": round(wall, 3),
        "server_cpu_s": round(total, 3), "python_thread_cpu_s": round(py, 3),
        "python_thread_share_of_a_core": round(py / wall, 3) if wall else None,
        "python_cpu_ms_per_join": round(1000 * py / max(1, len(firsts)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--viewers", type=int, default=500)
    ap.add_argument("--per-address", type=int, default=16)
    ap.add_argument("--key-every", type=int, default=30, help="a key frame every N frames")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    result = trio.run(storm, args)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT).stdout.strip()
    result.update({"rev": rev, "cpus": os.cpu_count(),
                   "time": datetime.datetime.now(datetime.UTC).isoformat()})
    print(json.dumps(result, indent=2))
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = args.out / f"{stamp}-{rev}-join-storm.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
