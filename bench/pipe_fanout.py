"""CPU per forwarded packet through a pipe hop against the direct path, at the same fan-out.

direct: host -> engine A (producer) -> N viewers.
pipe:   host -> engine A (producer) -> pipe consumer (SRTP, a plain socket of its own) ->
        engine B (pipe producer, a plain socket of its own) -> N viewers.

Both engines live in this process on loopback. The figure is the CPU of every engine
thread (pysfu-io and pysfu-plain of both engines, from /proc) per packet forwarded to a
viewer, measured after a warm-up, with a paced Python sender (pre-encrypted SRTP).

``--hop pipe-plain``: the pipe without SRTP (the ``pipe_plain_rtp`` setting, loopback only).

One run prints one JSON object: python bench/pipe_fanout.py [--hop pipe|pipe-plain|direct]
[--consumers 50] [--seconds 4] [--rate 3000]. With ``--out FILE`` it runs ``--pairs`` pairs
(``--hops``, default direct then pipe, back to back, each run a fresh process) for every N
of ``--consumers-list`` and writes every run, the load average at each, the git revision and
the medians (µs per forwarded packet, pipe / direct) to FILE, e.g.
``python bench/pipe_fanout.py --out bench/results/pipe_fanout-<UTC>-<rev>.json
--consumers-list 10,50 --pairs 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from pylibsrtp import Policy, Session

from pysfu._native import Engine
from pysfu.dtls import SrtpKeys

PROFILE, LIB_PROFILE, KLEN, SLEN = "AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12
PORTS = (45000, 45999)


def engine_cpu() -> float:
    """CPU seconds of every engine thread (pysfu-io, pysfu-plain) of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() not in ("pysfu-io", "pysfu-plain"):
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def keys() -> SrtpKeys:
    return SrtpKeys(PROFILE, os.urandom(KLEN), os.urandom(SLEN), os.urandom(KLEN),
                    os.urandom(SLEN))


def producer_spec(ssrc: int, pt: int) -> dict[str, object]:
    return {"kind": "video", "codecs": [{"payload_type": pt, "mapped_payload_type": 101,
                                         "mime": "video/VP8"}],
            "encodings": [{"ssrc": ssrc, "mapped_ssrc": ssrc + 1}], "header_extensions": [],
            "key_frame_request": "pli", "paused": False}


def add_viewers(eng: Engine, producer: int, n: int) -> list[socket.socket]:
    viewers = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        addr = ("127.0.0.1", s.getsockname()[1])
        h = 100 + i
        eng.add_transport(h, f"v{i}", f"viewer-ice-password-{i:08d}")
        eng.bind_tuple(h, *addr, True)
        eng.set_srtp(h, keys(), addr)
        eng.add_consumer(1000 + i, h, producer, {"ssrc": 50000 + i, "payload_types": {101: 101},
                                                 "paused": False})
        viewers.append(s)
    return viewers


def setup(hop: str, consumers: int) -> tuple[list[Engine], Engine, list[socket.socket],
                                            socket.socket, bytes]:
    """Engine A with the host's producer; the viewers on A (direct) or behind a pipe on B.
    (engines, the viewers' engine, viewer sockets, host socket, host's SRTP key + salt)."""
    a = Engine("127.0.0.1", 0)
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", 0))
    host_addr = ("127.0.0.1", host.getsockname()[1])
    hk, hs = os.urandom(KLEN), os.urandom(SLEN)
    a.add_transport(1, "host", "host-ice-password-0123456789")
    a.bind_tuple(1, *host_addr, True)
    a.set_srtp(1, SrtpKeys(PROFILE, os.urandom(KLEN), os.urandom(SLEN), hk, hs), host_addr)
    a.add_producer(10, 1, producer_spec(1111, 96))
    if hop == "direct":
        return [a], a, add_viewers(a, 10, consumers), host, hk + hs
    b = Engine("127.0.0.1", 0)
    srtp = hop == "pipe"
    port_a, _ = a.add_plain_transport(5, "127.0.0.1", PORTS, False, srtp)
    port_b, _ = b.add_plain_transport(6, "127.0.0.1", PORTS, False, srtp)
    ka, kb = os.urandom(KLEN + SLEN), os.urandom(KLEN + SLEN)
    # A protects with ka, B with kb; each unprotects with the other's.
    a.connect_plain(5, "127.0.0.1", port_b, SrtpKeys(PROFILE, ka[:KLEN], ka[KLEN:],
                                                      kb[:KLEN], kb[KLEN:]) if srtp else None)
    b.connect_plain(6, "127.0.0.1", port_a, SrtpKeys(PROFILE, kb[:KLEN], kb[KLEN:],
                                                      ka[:KLEN], ka[KLEN:]) if srtp else None)
    a.add_consumer(50, 5, 10, {"ssrc": 7777, "payload_types": {101: 101}, "paused": False,
                               "pipe_ssrcs": [(7777, None)]})
    b.add_producer(20, 6, producer_spec(7777, 101))
    return [a, b], b, add_viewers(b, 20, consumers), host, hk + hs


def run(hop: str, consumers: int, seconds: float, rate: float, size: int) -> dict[str, object]:
    """One measurement: the host sends at ``rate`` for 0.5 s of warm-up + ``seconds``."""
    engines, edge, viewers, host, host_key = setup(hop, consumers)
    tx = Session(Policy(key=host_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                        srtp_profile=LIB_PROFILE))
    packets = []
    for seq in range(min(40000, int(rate * (seconds + 1)) + 100)):
        body = bytes([0x10, 0x10 if seq == 0 else 0x11, 0x02, 0x00, 0x9D, 0x01, 0x2A])
        hdr = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, 1111)
        packets.append(tx.protect(hdr + body + b"\xab" * (size - 12 - len(body))))

    def forwarded() -> int:
        return sum(edge.stats(1000 + i)["packetsSent"] for i in range(consumers))

    dest = ("127.0.0.1", engines[0].port)
    t0 = time.perf_counter()
    warm, sent, mark = t0 + 0.5, 0, None
    end = warm + seconds
    while sent < len(packets):
        now = time.perf_counter()
        if now >= end:
            break
        if mark is None and now >= warm:
            mark = (now, forwarded(), engine_cpu(), sent)
        while sent < min(int((now - t0) * rate), len(packets)):
            host.sendto(packets[sent], dest)
            sent += 1
        time.sleep(0.0005)
    time.sleep(0.1)
    t1, fwd1, cpu1 = time.perf_counter(), forwarded(), engine_cpu()
    drops = {k: v for e in engines for k, v in e.drops().items() if v}
    for e in engines:
        e.close()
    for s in [*viewers, host]:
        s.close()
    assert mark is not None, "run too short"
    m_t, m_fwd, m_cpu, m_sent = mark
    elapsed, fwd = t1 - m_t, fwd1 - m_fwd
    expected = (sent - m_sent) * consumers
    return {
        "bench": "pipe_fanout",
        "hop": hop,
        "consumers": consumers,
        "seconds": round(elapsed, 3),
        "ingress_rate_target": rate,
        "forwarded": fwd,
        "forwarded_share": round(fwd / max(1, expected), 4),
        "engine_cpu_s_per_s": round((cpu1 - m_cpu) / elapsed, 3),
        "engine_us_per_forwarded_packet": round((cpu1 - m_cpu) / max(1, fwd) * 1e6, 3),
        "drops": drops,
        "cores": os.cpu_count(),
    }


def pairs(a: argparse.Namespace) -> dict[str, object]:
    """``a.pairs`` rounds of ``a.hops`` per N, each run a fresh process; runs and medians
    (each hop against the first one)."""
    hops = a.hops.split(",")
    runs: list[dict[str, object]] = []
    for n in (int(x) for x in a.consumers_list.split(",")):
        for _ in range(a.pairs):
            for hop in hops:
                cmd = [sys.executable, __file__, "--hop", hop, "--consumers", str(n),
                       "--seconds", str(a.seconds), "--rate", str(a.rate), "--size", str(a.size)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                r = json.loads(out)
                r["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
                runs.append(r)
                print(hop, n, r["engine_us_per_forwarded_packet"], r["forwarded_share"],
                      r["loadavg"], flush=True)
    summary: dict[str, dict[str, float]] = {}
    for n in sorted({int(str(r["consumers"])) for r in runs}):
        med = {hop: statistics.median(float(str(r["engine_us_per_forwarded_packet"]))
                                      for r in runs if r["hop"] == hop and r["consumers"] == n)
               for hop in hops}
        summary[str(n)] = {f"{hop}_us_median": med[hop] for hop in hops}
        for hop in hops[1:]:
            summary[str(n)][f"{hop}_vs_{hops[0]}"] = round(med[hop] / med[hops[0]], 3)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return {"bench": f"pipe_fanout, {' vs '.join(hops)}, back to back", "git": rev,
            "args": vars(a), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "summary": summary, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hop", choices=("pipe", "pipe-plain", "direct"), default="pipe")
    ap.add_argument("--consumers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=3000, help="ingress packets/s")
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--out", help="pairs mode: write every run and the medians here")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--consumers-list", default="10,50")
    ap.add_argument("--hops", default="direct,pipe", help="pairs mode: hops compared, in order")
    args = ap.parse_args()
    if args.out is None:
        print(json.dumps(run(args.hop, args.consumers, args.seconds, args.rate, args.size)))
        return
    result = pairs(args)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
