"""bench/engine_fanout.py for workers 1 and 2 (or, ``--vary gro``, GRO off and on; ``--vary
tcp``, viewers over UDP read by the bench (``--drain``) and over ICE-TCP (``--tcp``)) back to
back, N pairs (the machine's load drifts: pairs keep the two close in time); writes one JSON
with every run, the load average at each, and the medians (forwarded packets/s, I/O CPU per
egress packet, busiest worker thread).

Usage: python bench/engine_fanout_pairs.py --out bench/results/engine_fanout-workers-<...>.json
[--pairs 3] [--consumers 100] [--seconds 4] [--vary workers|gro|tcp] [-- --rate 12000]
(after --: engine_fanout args)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--consumers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vary", choices=("workers", "gro", "tcp"), default="workers")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    runs = []
    # The two settings compared: (name in the summary, engine_fanout arguments, run's key).
    sides = {
        "workers": [("workers_1", ["--workers", "1"]), ("workers_2", ["--workers", "2"])],
        "gro": [("gro_off", ["--no-gro"]), ("gro_on", ["--gro"])],
        "tcp": [("udp_drained", ["--drain"]), ("tcp", ["--tcp"])],
    }[a.vary]
    for _ in range(a.pairs):
        for w, (_, side) in enumerate(sides, start=1):
            cmd = [sys.executable, "bench/engine_fanout.py", "--consumers", str(a.consumers),
                   "--seconds", str(a.seconds), *side, *a.extra]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            r["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
            r["side"] = w
            runs.append(r)
            print(w, r["forwarded_pps"], r["worker_cpu_s_per_s"],
                  r["io_thread_us_per_egress_packet"], r.get("ingress_loss"), r["loadavg"],
                  flush=True)
    summary = {}
    for w, (name, _) in enumerate(sides, start=1):
        rs = [r for r in runs if r["side"] == w]
        summary[name] = {
            "forwarded_pps_median": statistics.median(r["forwarded_pps"] for r in rs),
            "io_us_per_packet_median": statistics.median(
                r["io_thread_us_per_egress_packet"] for r in rs),
            "busiest_thread_median": statistics.median(max(r["worker_cpu_s_per_s"]) for r in rs),
            "drops_median": statistics.median(sum(r["drops"].values()) for r in rs),
        }
    (one, _), (two, _) = sides
    summary["pps_ratio_2_vs_1"] = round(summary[two]["forwarded_pps_median"]
                                        / summary[one]["forwarded_pps_median"], 3)
    out = {"bench": f"engine_fanout, {one} vs {two}, pairs back to back", "label": a.label,
           "args": vars(a), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "summary": summary, "runs": runs}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
