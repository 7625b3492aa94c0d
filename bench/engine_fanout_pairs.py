"""bench/engine_fanout.py for workers 1 and 2 back to back, N pairs (the machine's load drifts:
pairs keep the two close in time); writes one JSON with every run, the load average at each,
and the medians (forwarded packets/s, I/O CPU per egress packet, busiest worker thread).

Usage: python bench/engine_fanout_pairs.py --out bench/results/engine_fanout-workers-<...>.json
[--pairs 3] [--consumers 100] [--seconds 4] [-- --rate 12000]   (after --: engine_fanout args)
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
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    runs = []
    for _ in range(a.pairs):
        for w in (1, 2):
            cmd = [sys.executable, "bench/engine_fanout.py", "--consumers", str(a.consumers),
                   "--seconds", str(a.seconds), "--workers", str(w), *a.extra]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            r["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
            runs.append(r)
            print(w, r["forwarded_pps"], r["worker_cpu_s_per_s"],
                  r["io_thread_us_per_egress_packet"], r.get("ingress_loss"), r["loadavg"],
                  flush=True)
    summary = {}
    for w in (1, 2):
        rs = [r for r in runs if r["workers"] == w]
        summary[f"workers_{w}"] = {
            "forwarded_pps_median": statistics.median(r["forwarded_pps"] for r in rs),
            "io_us_per_packet_median": statistics.median(
                r["io_thread_us_per_egress_packet"] for r in rs),
            "busiest_thread_median": statistics.median(max(r["worker_cpu_s_per_s"]) for r in rs),
        }
    summary["pps_ratio_2_vs_1"] = round(summary["workers_2"]["forwarded_pps_median"]
                                        / summary["workers_1"]["forwarded_pps_median"], 3)
    out = {"bench": "engine_fanout, workers 1 vs 2, pairs back to back", "label": a.label,
           "args": vars(a), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "summary": summary, "runs": runs}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
