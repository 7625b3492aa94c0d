"""Data channel fan-out: 1 sender -> N data consumers, messages/s, latency, CPU per message.

Two measurements, both written to one JSON record (bench/results/data-<UTC>-<rev>.json):

``e2e`` — a real ``python -m pysfu serve`` process on loopback; a host produces data on a
send transport and one viewer peer holds N recv transports, each consuming it (ICE, DTLS,
SCTP as browsers do: pysfu.testing.data_peer, pyOpenSSL DTLS client + the native SCTP
association). The host sends at ``--rate`` messages/s for ``--duration`` seconds, each
message stamped with its send time; every receiver checks order and records latency. The
server's CPU (utime+stime from /proc over the window) divided by the messages relayed gives
CPU per message (and per delivered copy). Receivers run in this process (Python), on the
same 2-core machine: past a rate the receivers, not the server, are the limit; the table says
how much of the offered load arrived.

``steps`` — the server's per-message work in-process, step by step, on N connected
association pairs (no sockets): the native fan-out (``sctp_fanout``: N SCTP writes, one
call), DTLS record protection, and the SACKs coming back (DTLS decryption in Python + the
native association). Record protection both ways (``--sealing``): ``native``, as the server
does for AEAD suites (each association seals its records inside the same ``sctp_fanout``
call: nothing left per consumer in Python), and ``python`` (pyOpenSSL, one call per packet
per consumer, as before and for non-AEAD suites).

Usage: python bench/data_fanout.py [--consumers 100] [--sizes 100,10240]
       [--points 100@20,100@100,10240@2,10240@10] [--duration 4] [--step-messages 200]
       [--sealing native,python] [--no-e2e] [--no-save]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from pysfu._native import SctpAssociation, sctp_fanout
from pysfu.client import SignalingClient, connect
from pysfu.dtls import Certificate, DtlsTransport
from pysfu.testing.data_peer import DataPeer, open_data_peer
from pysfu.testing.ports import free_media_port, free_port

ROOT = Path(__file__).resolve().parent.parent
ROOM = "bench"
STAMP = struct.Struct("!dI")  # send time (monotonic), sequence number


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- e2e: a real server ------------------------------------------------------------------------

def start_server(consumers: int) -> tuple[subprocess.Popen[bytes], int]:
    port, rtc_port = free_port(socket.SOCK_STREAM), free_media_port()
    env = dict(os.environ)
    env.update({  # bench limits through the config (environment)
        "PYSFU_MAX_TRANSPORTS_PER_PEER": str(consumers + 4),
        "PYSFU_MAX_DATA_CONSUMERS_PER_PEER": str(consumers + 4),
        "PYSFU_DATA_MESSAGES_PER_SECOND": "1000000",
        "PYSFU_DATA_MESSAGE_BURST": "1000000",
        "PYSFU_DATA_BYTES_PER_SECOND": "1000000000",
        "PYSFU_DATA_BYTES_BURST": "1000000000",
        "PYSFU_REQUESTS_PER_SECOND": "1000000",
        "PYSFU_REQUEST_BURST": "1000000",
        "PYSFU_MAX_DTLS_HANDSHAKES_PER_ADDRESS": "1000",
        "PYSFU_CONSENT_TIMEOUT": "3600",
        "PYSFU_LOG_LEVEL": "warning",
    })
    proc = subprocess.Popen(
        [sys.executable, "-m", "pysfu", "serve", "--port", str(port), "--rtc-port",
         str(rtc_port), "--metrics-port", "0"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
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


async def run_e2e(consumers: int, size: int, rate: float, duration: float) -> dict[str, Any]:
    proc, port = start_server(consumers)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        await wait_ready(url, proc)
        async with connect(url) as host, connect(url) as viewer, \
                trio.open_nursery() as nursery:
            await host.join(ROOM, "host", "host")
            await viewer.join(ROOM, "viewer", "viewer")
            sender = DataPeer(await open_data_peer(host, ROOM, "send"))
            nursery.start_soon(sender.run)
            await sender.wait_connected()
            producer = await host.produce_data(ROOM, sender.peer.transport["id"], 0,
                                               label="bench")
            sender.open_stream(0)
            receivers = await _receivers(viewer, producer, consumers, nursery)
            result = await _measure(proc.pid, sender, receivers, size, rate, duration)
            nursery.cancel_scope.cancel()
        return result
    finally:
        proc.terminate()
        proc.wait(10)


async def _receivers(viewer: SignalingClient, producer: str, n: int,
                     nursery: trio.Nursery) -> list[DataPeer]:
    receivers: list[DataPeer] = []

    async def one() -> None:
        side = DataPeer(await open_data_peer(viewer, ROOM, "recv"))
        nursery.start_soon(side.run)
        await side.wait_connected()
        await viewer.consume_data(ROOM, side.peer.transport["id"], producer)
        receivers.append(side)

    limiter = trio.CapacityLimiter(16)

    async def limited() -> None:
        async with limiter:
            await one()

    async with trio.open_nursery() as setup:
        for _ in range(n):
            setup.start_soon(limited)
    await trio.sleep(0.5)  # the consumers' streams are open on the server
    return receivers


async def _measure(pid: int, sender: DataPeer, receivers: list[DataPeer], size: int,
                   rate: float, duration: float) -> dict[str, Any]:
    for r in receivers:
        r.messages.clear()
        r.arrivals.clear()
    padding = b"x" * max(0, size - STAMP.size)
    count = int(rate * duration)
    cpu0, own0, t0 = cpu_seconds(pid), cpu_seconds(os.getpid()), time.monotonic()
    for seq in range(count):
        due = t0 + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            await trio.sleep(delay)
        sender.send(0, STAMP.pack(time.monotonic(), seq) + padding)
    sender_backlog = sender.sctp.buffered_amount(0)
    with trio.move_on_after(max(5.0, duration)):
        while sum(len(r.messages) for r in receivers) < count * len(receivers):
            await trio.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    own = cpu_seconds(os.getpid()) - own0
    latencies: list[float] = []
    in_order = True
    delivered = 0
    for r in receivers:
        seqs = []
        for (_, _, payload), arrived in zip(r.messages, r.arrivals, strict=True):
            assert isinstance(payload, bytes)
            sent_at, seq = STAMP.unpack_from(payload)
            seqs.append(seq)
            latencies.append(arrived - sent_at)
        delivered += len(seqs)
        in_order = in_order and seqs == sorted(seqs)
    copies = count * len(receivers)
    return {
        "consumers": len(receivers), "message_bytes": size, "offered_rate": rate,
        "sent": count, "delivered": delivered, "delivered_share": delivered / copies,
        "in_order": in_order, "elapsed_s": round(elapsed, 3),
        "sender_backlog_bytes_at_end_of_sending": sender_backlog,
        "delivered_per_s": round(delivered / elapsed, 1),
        "server_cpu_s": round(cpu, 3), "server_cpu_share": round(cpu / elapsed, 3),
        "server_us_per_message": round(1e6 * cpu / max(count, 1), 1),
        "server_us_per_copy": round(1e6 * cpu / max(delivered, 1), 2),
        # The sender and the N receivers (Python) in this process: near 1.0 they are the limit.
        "clients_cpu_share": round(own / elapsed, 3),
        "latency_ms": {"p50": _ms(percentile(latencies, 0.5)),
                       "p99": _ms(percentile(latencies, 0.99))},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 3)


# ---- steps: the server's work in-process -------------------------------------------------------

class Pair:
    """A server-role association and DTLS session, and the client side of both, in memory."""

    def __init__(self, cert: Certificate, client_cert: Certificate, sealing: str) -> None:
        self.s_dtls = DtlsTransport(cert, role="server", remote_fingerprint={
            "algorithm": "sha-256", "value": client_cert.fingerprint()})
        self.c_dtls = DtlsTransport(client_cert, role="client", remote_fingerprint={
            "algorithm": "sha-256", "value": cert.fingerprint()})
        now = time.monotonic()
        self.delivered = 0  # messages the client side received
        self.server = SctpAssociation("server", now)
        self.client = SctpAssociation("client", now)
        self.c_dtls.start(now)
        self.s_dtls.start(now)
        for _ in range(20):
            for d in self.c_dtls.take_outgoing():
                self.s_dtls.receive(d, now)
            for d in self.s_dtls.take_outgoing():
                self.c_dtls.receive(d, now)
        assert self.s_dtls.state == self.c_dtls.state == "connected"
        for _ in range(10):
            self.to_server(self.c_dtls.protect(self.client.take_packets(time.monotonic())))
            self.to_client(self.s_dtls.protect(self.server.take_packets(time.monotonic())))
        assert self.server.connected and self.client.connected
        self.server.open_stream(0)
        if sealing == "native":
            keys = self.s_dtls.record_keys()
            assert keys is not None
            assert self.server.seal_with(keys.cipher, keys.key, keys.iv, keys.epoch)

    def protect(self, out: list[bytes]) -> list[bytes]:
        """The server association's output as datagrams (sealed by it already, or here)."""
        return out if self.server.sealed else self.s_dtls.protect(out)

    def to_server(self, datagrams: list[bytes]) -> None:
        now = time.monotonic()
        for d in datagrams:
            self.s_dtls.receive(d, now)
        for record in self.s_dtls.take_application():
            self.server.handle_packet(record, now)

    def to_client(self, datagrams: list[bytes]) -> None:
        now = time.monotonic()
        for d in datagrams:
            self.c_dtls.receive(d, now)
        for record in self.c_dtls.take_application():
            self.client.handle_packet(record, now)
        self.delivered += sum(1 for e in self.client.take_events() if e[0] == "message")


def run_steps(consumers: int, size: int, messages: int,
              sealing: str = "native") -> dict[str, Any]:
    cert, client_cert = Certificate.generate(), Certificate.generate()
    pairs = [Pair(cert, client_cert, sealing) for _ in range(consumers)]
    payload = b"m" * size
    fanout_s = protect_s = ack_s = 0.0
    packets = 0
    for _ in range(messages):
        t = time.perf_counter()
        results = sctp_fanout([(p.server, 0) for p in pairs], 51, payload, time.monotonic())
        fanout_s += time.perf_counter() - t
        assert all(r == "sent" for r, _ in results), results[:3]
        outgoing = [out for _, out in results]
        # Until every consumer has the whole message: protect what the association lets out
        # (its congestion window), deliver, take the SACKs back in (which lets out more).
        while any(outgoing):
            t = time.perf_counter()
            datagrams = [p.protect(out) for p, out in zip(pairs, outgoing, strict=True)]
            protect_s += time.perf_counter() - t
            packets += sum(len(out) for out in outgoing)
            acks = []
            for p, d in zip(pairs, datagrams, strict=True):
                p.to_client(d)
                acks.append(p.c_dtls.protect(p.client.take_packets(time.monotonic())))
            t = time.perf_counter()
            outgoing = []
            for p, a in zip(pairs, acks, strict=True):
                p.to_server(a)
                outgoing.append(p.server.take_packets(time.monotonic()))
            ack_s += time.perf_counter() - t
    per = 1e6 / messages
    return {
        "consumers": consumers, "message_bytes": size, "messages": messages,
        "sealing": sealing, "delivered": sum(p.delivered for p in pairs),
        "packets_per_message": round(packets / messages, 2),
        "us_per_message": {
            "native_sctp_fanout": round(fanout_s * per, 1),
            "dtls_protect_left_in_python": round(protect_s * per, 1),
            "acks_in_python_dtls_and_native_sctp": round(ack_s * per, 1),
            "total": round((fanout_s + protect_s + ack_s) * per, 1),
        },
        "us_per_consumer": {
            "native_sctp_fanout": round(fanout_s * per / consumers, 2),
            "dtls_protect_left_in_python": round(protect_s * per / consumers, 2),
        },
    }


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--consumers", type=int, default=100)
    ap.add_argument("--sizes", default="100,10240", help="message sizes of the steps run")
    ap.add_argument("--points", default="100@20,100@100,10240@2,10240@10",
                    help="e2e runs: size@messages per second, comma-separated")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--step-messages", type=int, default=200)
    ap.add_argument("--sealing", default="native,python",
                    help="record protection of the steps runs: native and/or python")
    ap.add_argument("--no-e2e", dest="e2e", action="store_false")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    record: dict[str, Any] = {"bench": "data_fanout", "git": git_rev(),
                              "time": datetime.datetime.now(datetime.UTC).isoformat(),
                              "cores": os.cpu_count(), "steps": [], "e2e": []}
    for sealing in args.sealing.split(","):
        for size in sizes:
            step = run_steps(args.consumers, size, args.step_messages, sealing)
            record["steps"].append(step)
            print(json.dumps(step))
    if args.e2e:
        for spec in args.points.split(","):
            size_text, _, rate_text = spec.partition("@")
            point = trio.run(run_e2e, args.consumers, int(size_text), float(rate_text),
                             args.duration)
            record["e2e"].append(point)
            print(json.dumps(point))
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out / f"data-{stamp}-{record['git']}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
