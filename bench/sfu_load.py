"""Load test of a real pysfu server process: one host producing video + audio, N viewers.

For each sweep point (viewers × SRTP profile) this starts ``python -m pysfu serve`` on
loopback with free ports, connects a host and N viewer transports exactly as browsers do
(signaling over WebSocket, ICE binding with USE-CANDIDATE, DTLS handshake as client with
pyOpenSSL, keys from the DTLS exporter; pysfu/testing/webrtc_peer.py), and hands the connected UDP
sockets and SRTP keys to the Rust generator ``pysfu-loadgen`` (bench/loadgen), which sends
and checks every packet, and sends every endpoint's ICE consent checks (one per endpoint
every 2.5 s, as Chromium does). Each viewer consumes the video and the audio producer, so the
server has 2N consumers. ``python_thread_share`` / ``python_us_per_packet``: the server's
main (Python) thread's CPU in the window, steady media with consent checks going on.

The primary figure is the server's CPU time per forwarded packet (utime+stime of the server
process over the measurement window ÷ packets the viewers received in it); "consumers per
core" extrapolates from it at the run's average packet rate per consumer. Generator and
server share the machine's cores, so forwarded packets/s saturate with the machine, not
with the server.

With ``--rounds N`` the whole sweep runs N times, one round after the other (so a noisy
spell of a shared machine touches every point a little rather than one point a lot); every
round's points are kept (``round``) and ``medians`` holds, per profile, workers and viewers,
the median over the rounds of the figures quoted (``summarize``), with each round's value.

Usage: python bench/sfu_load.py [--viewers 10,50,100] [--profiles gcm,cm] [--warmup 3]
       [--duration 5] [--out bench/results] [--no-save] [--nice -10] [--workers 1,2]
       [--rounds 3]
Prints a table; writes bench/results/<UTC time>-<git rev>.json (one file per run).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from pysfu.client import SignalingClient, connect
from pysfu.testing.fixtures import device_caps, opus_producer, vp8_producer
from pysfu.testing.ports import free_media_port, free_port
from pysfu.testing.webrtc_peer import SRTP_KEY_SIZES, WebRtcPeer

ROOT = Path(__file__).resolve().parent.parent

PROFILES = {
    "gcm": ("AEAD_AES_128_GCM", b"SRTP_AEAD_AES_128_GCM"),
    "cm": ("AES_CM_128_HMAC_SHA1_80", b"SRTP_AES128_CM_SHA1_80"),
}
VIDEO_SSRC, AUDIO_SSRC = 0x1111_0000, 0x2222_0000
VIDEO_PT, AUDIO_PT, MID_EXT = 96, 111, 4  # as in pysfu/testing/fixtures.py (Chrome's)
LOADGEN = ROOT / "target" / "release" / "pysfu-loadgen"
CEILING = ROOT / "target" / "release" / "pysfu-ceiling"
SETUP_CONCURRENCY = 16


def srtp_keys(peer: WebRtcPeer) -> tuple[bytes, bytes, bytes, bytes]:
    """(client key, client salt, server key, server salt) from the DTLS exporter."""
    _, klen, slen = SRTP_KEY_SIZES[peer.profile]
    m = peer.dtls.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (klen + slen))
    return (m[:klen], m[2 * klen:2 * klen + slen], m[klen:2 * klen], m[2 * klen + slen:])


def start_server(viewers: int, own_session: bool,
                 workers: int | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
    """The server process, its signaling port and its metrics port."""
    port, rtc_port = free_port(socket.SOCK_STREAM), free_media_port()
    metrics_port = free_port(socket.SOCK_STREAM)
    env = dict(os.environ)
    if workers is not None:
        env["PYSFU_WORKERS"] = str(workers)
    # Bench limits through the config (environment), not code: one viewer peer owns all
    # the receive transports; no consent checks are sent during the run.
    env.update({
        "PYSFU_MAX_TRANSPORTS_PER_PEER": str(viewers + 4),
        "PYSFU_MAX_CONSUMERS_PER_PEER": str(2 * viewers + 8),
        "PYSFU_MAX_CONSUMED_BITRATE_PER_PEER": str(10**12),
        "PYSFU_REQUESTS_PER_SECOND": "1000000",
        "PYSFU_REQUEST_BURST": "1000000",
        "PYSFU_CONSENT_TIMEOUT": "3600",
        "PYSFU_DTLS_TIMEOUT": "600",
        "PYSFU_LOG_LEVEL": "warning",
    })
    proc = subprocess.Popen(
        [sys.executable, "-m", "pysfu", "serve", "--port", str(port), "--rtc-port", str(rtc_port),
         "--metrics-port", str(metrics_port)],
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=own_session)
    return proc, port, metrics_port


def worker_times(metrics_port: int) -> tuple[dict[str, float], float]:
    """The server's media workers' time by phase, seconds summed over the workers, and the
    kernel messages they sent (``pysfu_worker_seconds_total``,
    ``pysfu_worker_messages_sent_total``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    phases: dict[str, float] = {}
    messages = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pysfu_worker_seconds_total":
                phase = sample.labels["phase"]
                phases[phase] = phases.get(phase, 0.0) + sample.value
            elif sample.name == "pysfu_worker_messages_sent_total":
                messages += sample.value
    return phases, messages


def worker_phases(before: tuple[dict[str, float], float],
                  after: tuple[dict[str, float], float], seconds: float) -> dict[str, Any]:
    """Where the workers' time went while the generator ran (warm-up and window): per kernel
    message sent, µs of each phase (all workers), and each phase's share of the run's wall
    time summed over the workers."""
    messages = after[1] - before[1]
    spent = {k: after[0].get(k, 0.0) - before[0].get(k, 0.0) for k in after[0]}
    return {
        "messages": int(messages),
        "us_per_message": {k: round(v / messages * 1e6, 3) if messages else None
                           for k, v in spent.items()},
        "share_of_run": {k: round(v / seconds, 4) if seconds else None
                         for k, v in spent.items()},
    }


def set_priority(pid: int, nice: int) -> None:
    """Give process `pid` (the leader of its own session) the nice value `nice`.

    With autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled, the default on
    most distributions) the CPU is shared between sessions first: a thread's own nice value
    only weighs against threads of its session, so the session's autogroup gets `nice` too.
    On Linux a nice value belongs to a thread, so every thread of `pid` gets it as well.
    """
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroup scheduling: the threads' own nice values are what counts
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    with trio.fail_after(30):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with connect(url):
                    return
            except OSError:
                await trio.sleep(0.1)
            except Exception:  # noqa: BLE001 - handshake refused while starting
                await trio.sleep(0.1)


async def connect_viewer(client: SignalingClient, caps: dict[str, Any], producers: list[str],
                         srtp: bytes) -> tuple[WebRtcPeer, list[int]]:
    transport = await client.create_transport("bench", "recv")
    peer = WebRtcPeer(transport, srtp_profiles=srtp)
    await peer.bind()
    await client.connect_transport("bench", transport["id"], peer.dtls_parameters())
    await peer.connect()
    ssrcs = []
    for pid in producers:
        consumer = await client.consume("bench", transport["id"], pid, caps)
        ssrcs.append(consumer["rtpParameters"]["encodings"][0]["ssrc"])
        await client.resume_consumer("bench", consumer["id"])
    return peer, ssrcs


def ice_credentials(peer: WebRtcPeer) -> str:
    """USERNAME and password of the endpoint's consent checks (the generator sends one per
    endpoint every 2.5 s, as Chromium does on its selected pair)."""
    return f"{peer.ice['usernameFragment']}:{peer.ufrag} {peer.ice['password']}"


async def run_point(viewers: int, profile: str, args: argparse.Namespace,
                    workers: int | None = None) -> dict[str, Any]:
    name, srtp = PROFILES[profile]
    proc, port, metrics_port = start_server(viewers, own_session=bool(args.nice), workers=workers)
    url = f"ws://127.0.0.1:{port}/ws"
    peers: list[WebRtcPeer] = []
    try:
        await wait_ready(url, proc)
        t_setup = time.monotonic()
        async with connect(url) as host, connect(url) as viewer:
            await host.join("bench", "host", "host")
            send = await host.create_transport("bench", "send")
            hpeer = WebRtcPeer(send, srtp_profiles=srtp)
            peers.append(hpeer)
            await hpeer.bind()
            await host.connect_transport("bench", send["id"], hpeer.dtls_parameters())
            await hpeer.connect()
            video = await host.produce("bench", send["id"], "video",
                                       vp8_producer(mid="0", ssrc=VIDEO_SSRC))
            audio = await host.produce("bench", send["id"], "audio",
                                       opus_producer(mid="1", ssrc=AUDIO_SSRC))
            await viewer.join("bench", "viewer", "viewers")
            caps = device_caps(await viewer.router_rtp_capabilities("bench"))
            lines: list[str] = []
            limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)

            async def one() -> None:
                async with limiter:
                    peer, (vs, aus) = await connect_viewer(viewer, caps, [video, audio], srtp)
                peers.append(peer)
                _, _, key, salt = srtp_keys(peer)
                lines.append(f"viewer {peer.sock.fileno()} {key.hex()} {salt.hex()} {vs} {aus} "
                             f"{ice_credentials(peer)}")

            async with trio.open_nursery() as nursery:
                for _ in range(viewers):
                    nursery.start_soon(one)
            setup_s = time.monotonic() - t_setup
            ck, cs, sk, ss = srtp_keys(hpeer)
            config = [
                f"profile {name}", f"server 127.0.0.1 {hpeer.server[1]}",
                f"server_pid {proc.pid}", f"warmup {args.warmup}", f"duration {args.duration}",
                f"viewer_gro {int(args.viewer_gro)}",
                f"producer {hpeer.sock.fileno()} {ck.hex()} {cs.hex()} {sk.hex()} {ss.hex()} "
                f"{VIDEO_SSRC} {AUDIO_SSRC} {VIDEO_PT} {AUDIO_PT} {MID_EXT} "
                f"{ice_credentials(hpeer)}",
                *lines,
            ]
            fds = [p.sock.fileno() for p in peers]
            if args.nice:
                set_priority(proc.pid, args.nice)
            times_before = worker_times(metrics_port)
            t_run = time.monotonic()
            done = await trio.run_process(
                [str(LOADGEN)], stdin="\n".join(config).encode(), capture_stdout=True,
                pass_fds=fds, start_new_session=bool(args.nice),
                preexec_fn=(lambda: set_priority(os.getpid(), args.nice)) if args.nice else None)
            run_s = time.monotonic() - t_run
            result = json.loads(done.stdout)
            result["worker_phases"] = worker_phases(times_before, worker_times(metrics_port),
                                                    run_s)
    finally:
        for p in peers:
            p.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    consumers = 2 * viewers
    # Offered rate per consumer (half the consumers get video, half audio), not the measured
    # one: past saturation that would shrink and inflate the extrapolation.
    sent = result["producer_sent"]
    per_consumer_pps = (sent["video_window"] + sent["audio_window"]) / result["seconds"] / 2
    us = result["server_us_per_packet"]
    result.update({
        "workers": workers,  # None: the server's default (the `workers` setting's)
        "consumers": consumers,
        "setup_s": round(setup_s, 2),
        "pps_per_consumer": round(per_consumer_pps, 1),
        # One core's worth of server CPU at this CPU cost per packet and this packet rate.
        "consumers_per_core": (round(1e6 / (us * per_consumer_pps))
                               if us and per_consumer_pps else None),
        "forwarded_pps_per_core": round(1e6 / us) if us else None,
        # The Python control plane (the server's main thread) in steady media.
        "python_thread_share": round(result["server_main_thread_cpu_s"]
                                     / max(result["seconds"], 1e-9), 4),
        "python_us_per_packet": (round(result["server_main_thread_cpu_s"]
                                       / result["received"] * 1e6, 3)
                                 if result["received"] else None),
        "bound": bound(result),
    })
    if args.ceiling and result["forwarded_pps"] > 0:
        # This host's floor for the same egress: protect + sendmmsg to as many loopback
        # sockets (drained) at the same packet rate, with no routing at all.
        done = await trio.run_process(
            [str(CEILING), "--consumers", str(viewers), "--pps",
             str(int(result["forwarded_pps"])), "--seconds", str(args.duration),
             "--profile", profile], capture_stdout=True)
        ceiling = json.loads(done.stdout)
        result["ceiling"] = ceiling
        result["x_ceiling"] = (round(us / ceiling["cpu_us_per_pkt"], 2)
                               if us and ceiling["cpu_us_per_pkt"] else None)
    return result


def bound(p: dict[str, Any]) -> str:
    """What limited a point, from the scheduler's view of the server's I/O thread over the
    window: its CPU time plus its run-queue wait (runnable, no CPU given) is the share of the
    window it had work. A thread that waited for a CPU was starved by the machine (the other
    processes, the generator included); one on a CPU the whole window was saturated."""
    secs = p["seconds"] or 1e-9
    waited = p["server_io_thread_runqueue_s"] / secs
    busy = p["server_io_thread_cpu_s"] / secs + waited
    if waited >= 0.1:
        return f"machine: the I/O thread waited {waited:.0%} of the window for a CPU"
    if busy >= 0.95:
        return f"server: its I/O thread had work {busy:.0%} of the window"
    return "none" if p["loss"] == 0 else "unexplained"


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "machine": platform.machine()}


def git_rev() -> tuple[str, bool]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=ROOT, capture_output=True, text=True).stdout.strip())
        return rev, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def table(points: list[dict[str, Any]]) -> str:
    head = (f"{'profile':<24} {'wk':>2} {'viewers':>7} {'consumers':>9} {'fwd pps':>9} "
            f"{'srv CPU':>7} "
            f"{'µs/pkt':>7} {'cons/core':>9} {'p50 ms':>7} {'p99 ms':>7} {'loss':>9} "
            f"{'RSS MiB':>7} {'kernel':>6} {'io wait':>7} {'gen CPU':>7} {'ceil µs':>7} "
            f"{'×ceil':>5} {'py core':>7} {'py µs':>6}")
    rows = [head, "-" * len(head)]
    for p in points:
        lat = p["latency_ms"]
        rows.append(
            f"{p['profile']:<24} {p.get('workers') or '-':>2} {p['viewers']:>7} "
            f"{p['consumers']:>9} {p['forwarded_pps']:>9.0f} "
            f"{p['server_cpu_share']:>7.2f} {p['server_us_per_packet']:>7.2f} "
            f"{p['consumers_per_core'] or 0:>9} {lat['p50'] or 0:>7.3f} {lat['p99'] or 0:>7.3f} "
            f"{p['loss']:>9.2e} {p['server_rss_kib'] / 1024:>7.1f} "
            f"{p['server_io_thread_sys_s'] / max(p['server_cpu_s'], 1e-9):>6.0%} "
            f"{p['server_io_thread_runqueue_s'] / max(p['seconds'], 1e-9):>7.0%} "
            f"{p['loadgen_cpu_share']:>7.2f} "
            f"{(p.get('ceiling') or {}).get('cpu_us_per_pkt', 0):>7.2f} "
            f"{p.get('x_ceiling') or 0:>5.2f} {p.get('python_thread_share', 0):>7.3f} "
            f"{p.get('python_us_per_packet') or 0:>6.3f}")
    return "\n".join(rows)


# The figures `summarize` takes the median of: name -> how to read it from a point.
SUMMARY: dict[str, Any] = {
    "server_us_per_packet": lambda p: p["server_us_per_packet"],
    "consumers_per_core": lambda p: p["consumers_per_core"],
    "p50_ms": lambda p: p["latency_ms"]["p50"],
    "p99_ms": lambda p: p["latency_ms"]["p99"],
    "forwarded_pps": lambda p: p["forwarded_pps"],
    "loss": lambda p: p["loss"],
}
PHASES = ("lock_wait", "router", "seal", "send")


def summarize(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (profile, workers, viewers), in the sweep's order: the median over its rounds of
    each ``SUMMARY`` figure and of the workers' µs per kernel message per phase, with the
    rounds' values (``rounds``) and the largest loss of any round (``loss_max``)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["profile"], p.get("workers"), p["viewers"]), []).append(p)
    out = []
    for (profile, workers, viewers), ps in groups.items():
        row: dict[str, Any] = {"profile": profile, "workers": workers, "viewers": viewers,
                               "rounds": len(ps), "values": {}}
        for name, read in SUMMARY.items():
            values = [read(p) for p in ps]
            known = [v for v in values if v is not None]
            row["values"][name] = values
            row[name] = statistics.median(known) if known else None
        row["loss_max"] = max(p["loss"] for p in ps)
        per_message = [p["worker_phases"]["us_per_message"] for p in ps
                       if p.get("worker_phases", {}).get("us_per_message")]
        if per_message:
            row["us_per_message"] = {ph: statistics.median(m.get(ph, 0.0) for m in per_message)
                                     for ph in PHASES}
        out.append(row)
    return out


def median_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'median of rounds':<24} {'wk':>2} {'viewers':>7} {'rounds':>6} {'µs/pkt':>7} "
            f"{'cons/core':>9} {'p50 ms':>7} {'p99 ms':>7} {'loss max':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['profile']:<24} {r['workers'] or '-':>2} {r['viewers']:>7} "
                     f"{r['rounds']:>6} {r['server_us_per_packet']:>7.2f} "
                     f"{r['consumers_per_core'] or 0:>9.0f} {r['p50_ms'] or 0:>7.3f} "
                     f"{r['p99_ms'] or 0:>7.3f} {r['loss_max']:>9.2e}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", default="10,50,100,250,500,1000,2000")
    ap.add_argument("--profiles", default="gcm,cm")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the server and the generator each in its own session with this "
                         "nice value during the traffic (e.g. -10 on a machine shared with "
                         "other work; negative values need root)")
    ap.add_argument("--json", action="store_true", help="print the JSON record, not a table")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                    help="skip the per-point ceiling run (pysfu-ceiling)")
    ap.add_argument("--gso", action=argparse.BooleanOptionalAction, default=None,
                    help="the server's UDP GSO setting (PYSFU_GSO; default: the server's)")
    ap.add_argument("--gro", action=argparse.BooleanOptionalAction, default=None,
                    help="the server's UDP GRO setting (PYSFU_GRO; default: the server's)")
    ap.add_argument("--viewer-gro", action=argparse.BooleanOptionalAction, default=False,
                    help="UDP_GRO on the generator's viewer sockets: a GSO message the server "
                         "sends stays one buffer on loopback, as a NIC would carry it away, "
                         "instead of being split into datagrams inside the server's send call "
                         "(default: off)")
    ap.add_argument("--pin-workers", action=argparse.BooleanOptionalAction, default=None,
                    help="the server's pin_workers setting (PYSFU_PIN_WORKERS; default: the "
                         "server's, on)")
    ap.add_argument("--workers", default="",
                    help="the server's media workers, a list swept like --viewers (e.g. 1,2; "
                         "default: the server's, one per core)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole sweep this many times and record the medians")
    args = ap.parse_args()
    if args.gso is not None:
        os.environ["PYSFU_GSO"] = "true" if args.gso else "false"  # servers inherit it
    if args.gro is not None:
        os.environ["PYSFU_GRO"] = "true" if args.gro else "false"
    if args.pin_workers is not None:
        os.environ["PYSFU_PIN_WORKERS"] = "true" if args.pin_workers else "false"
    if not LOADGEN.exists():
        sys.exit(f"{LOADGEN} missing: cargo build --release -p pysfu-loadgen")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    viewers = [int(v) for v in args.viewers.split(",") if v]
    profiles = [p for p in args.profiles.split(",") if p]
    rev, dirty = git_rev()
    started = datetime.datetime.now(datetime.UTC)
    points = []
    worker_counts: list[int | None] = [int(w) for w in args.workers.split(",") if w] or [None]
    sweep = itertools.product(range(max(1, args.rounds)), profiles, worker_counts, viewers)
    for round_, profile, workers, n in sweep:
        if 2 * n + 64 > hard:
            print(f"skipping {n} viewers: file descriptor limit {hard}", file=sys.stderr)
            continue
        point = trio.run(run_point, n, profile, args, workers)
        point["round"] = round_
        points.append(point)
        print(table([point]).splitlines()[-1] if len(points) > 1 else table([point]),
              file=sys.stderr, flush=True)
        if point["loss"] > 0:
            print(f"  loss {point['loss']:.2e} at {n} viewers; backlog up to "
                  f"{point['lag_all_ms']['max']:.0f} ms; bound by {point['bound']}",
                  file=sys.stderr, flush=True)
    record = {
        "bench": "sfu_load",
        "git_rev": rev,
        "git_dirty": dirty,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_gso": os.environ.get("PYSFU_GSO", "default (on)"),
        "server_gro": os.environ.get("PYSFU_GRO", "default (off)"),
        "server_pin_workers": os.environ.get("PYSFU_PIN_WORKERS", "default (on)"),
        "viewer_gro": args.viewer_gro,
        "server_workers": worker_counts,
        "workload": {"video": "VP8-like 1.5 Mbit/s, 1200-byte packets, 30 fps, key frame "
                              "(30 packets) every 2 s, one burst per frame",
                     "audio": "50 packets/s, 160-byte payload",
                     "consumers_per_viewer": 2, "warmup_s": args.warmup,
                     "duration_s": args.duration, "nice": args.nice},
        "rounds": max(1, args.rounds),
        "points": points,
        "medians": summarize(points),
    }
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{rev}{'-dirty' if dirty else ''}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(record))
    else:
        print(table(points))
        if args.rounds > 1:
            print(median_table(record["medians"]))


if __name__ == "__main__":
    main()
