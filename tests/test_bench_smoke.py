"""The load benchmark works end to end: a real server process, a host and 2 viewers over
loopback (ICE, DTLS, SRTP), the Rust generator checking every packet for a second."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import sfu_load  # noqa: E402


async def test_two_viewers_receive_every_packet_intact() -> None:
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "pysfu-loadgen"], cwd=ROOT,
                   check=True, timeout=900)
    args = argparse.Namespace(warmup=0.6, duration=1.0, ceiling=True)
    r = await sfu_load.run_point(2, "gcm", args)
    sent = r["producer_sent"]
    assert sent["video_window"] > 0 and sent["audio_window"] > 0
    assert r["expected"] == 2 * (sent["video_window"] + sent["audio_window"])
    assert r["received"] == r["expected"], r
    checks = r["checks"]
    assert checks["decrypt_errors"] == 0 and checks["unknown_ssrc"] == 0
    assert checks["seq_errors"] == 0 and checks["malformed"] == 0
    assert r["latency_ms"]["p50"] is not None and r["latency_ms"]["p50"] < 1000
    assert r["server_cpu_s"] >= 0 and r["server_rss_kib"] > 0
    assert r["consumers"] == 4
    # The ceiling run at the same point sent and drained its packets and measured a cost.
    ceiling = r["ceiling"]
    assert ceiling["consumers"] == 2 and ceiling["sent"] > 0
    assert ceiling["received"] == ceiling["sent"] and ceiling["cpu_us_per_pkt"] > 0
