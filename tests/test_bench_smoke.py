"""The load benchmark works end to end: a real server process, a host and 2 viewers over
loopback (ICE, DTLS, SRTP), the Rust generator checking every packet for a second."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script(path: Path):  # type: ignore[no-untyped-def]
    """A bench script as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sfu_load = _load_script(ROOT / "bench" / "sfu_load.py")


@pytest.mark.parametrize("viewer_gro", [False, True], ids=["plain", "viewer-gro"])
async def test_two_viewers_receive_every_packet_intact(viewer_gro: bool) -> None:
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "pysfu-loadgen"], cwd=ROOT,
                   check=True, timeout=900)
    args = argparse.Namespace(warmup=0.6, duration=1.0, ceiling=not viewer_gro, nice=0,
                              viewer_gro=viewer_gro)
    r = await sfu_load.run_point(2, "gcm", args)
    sent = r["producer_sent"]
    assert sent["video_window"] > 0 and sent["audio_window"] > 0
    assert r["expected"] == 2 * (sent["video_window"] + sent["audio_window"])
    assert r["received"] == r["expected"], r
    checks = r["checks"]
    assert checks["decrypt_errors"] == 0 and checks["unknown_ssrc"] == 0
    assert checks["seq_errors"] == 0 and checks["malformed"] == 0
    # With UDP_GRO on the viewer sockets, the server's GSO messages (a frame's packets to one
    # viewer) arrive whole and are split by the generator; without it, never.
    assert (checks["coalesced"] > 0) == viewer_gro, checks
    assert r["latency_ms"]["p50"] is not None and r["latency_ms"]["p50"] < 1000
    assert r["server_cpu_s"] >= 0 and r["server_rss_kib"] > 0
    assert r["consumers"] == 4
    # The scheduler's view (what limited the point) and the backlog over every packet.
    assert r["server_io_thread_runqueue_s"] >= 0 and r["loadgen_rx_cpu_s"] > 0
    assert r["loadgen_rx_runqueue_s"] >= 0
    assert 0 < r["lag_all_ms"]["mean"] <= r["lag_all_ms"]["max"] < 1000
    assert isinstance(r["bound"], str) and r["bound"] != "unexplained"
    # Where the workers' time went (the server's metrics, around the generator's run): the
    # viewers' datagrams in at most as many kernel messages, each phase costed per message.
    phases = r["worker_phases"]
    assert 0 < phases["messages"] <= r["received"] + 100, phases
    assert set(phases["us_per_message"]) == {"lock_wait", "router", "seal", "send"}
    assert phases["us_per_message"]["send"] > 0 and phases["us_per_message"]["seal"] > 0
    assert 0 < phases["share_of_run"]["send"] < 2  # summed over at most two workers
    if viewer_gro:
        return
    # The ceiling run at the same point sent and drained its packets and measured a cost.
    ceiling = r["ceiling"]
    assert ceiling["consumers"] == 2 and ceiling["sent"] > 0
    assert ceiling["received"] == ceiling["sent"] and ceiling["cpu_us_per_pkt"] > 0


def _point(profile: str, viewers: int, us: float, p50: float, loss: float,
           send: float) -> dict[str, Any]:
    return {"profile": profile, "workers": 2, "viewers": viewers, "server_us_per_packet": us,
            "consumers_per_core": round(1e6 / us / 100), "latency_ms": {"p50": p50, "p99": 9 * p50},
            "forwarded_pps": 100 * viewers, "loss": loss,
            "worker_phases": {"us_per_message": {"lock_wait": 0.2, "router": 2.0, "seal": 1.5,
                                                 "send": send}}}


def test_rounds_are_summarized_by_their_medians_per_point() -> None:
    # Three rounds of a two-point sweep, in the order main() runs them (round-major).
    points = [
        _point("gcm", 100, 4.0, 0.50, 0.0, 6.0), _point("gcm", 200, 3.8, 0.80, 0.0, 5.0),
        _point("gcm", 100, 4.6, 0.70, 1e-4, 7.0), _point("gcm", 200, 3.6, 0.90, 0.0, 6.0),
        _point("gcm", 100, 4.2, 0.40, 0.0, 5.0), _point("gcm", 200, 4.4, 0.70, 2e-5, 5.5),
    ]
    rows = sfu_load.summarize(points)
    assert [(r["viewers"], r["rounds"]) for r in rows] == [(100, 3), (200, 3)]
    first, second = rows
    assert first["server_us_per_packet"] == 4.2 and first["p50_ms"] == 0.50
    assert first["values"]["p50_ms"] == [0.50, 0.70, 0.40]
    assert first["loss_max"] == 1e-4 and first["loss"] == 0.0
    assert first["us_per_message"]["send"] == 6.0 and first["us_per_message"]["router"] == 2.0
    assert second["server_us_per_packet"] == 3.8 and second["p99_ms"] == 9 * 0.80
    assert second["loss_max"] == 2e-5
    # A point without a latency figure (no packet in its window) does not count as 0.
    points[0]["latency_ms"]["p50"] = None
    assert sfu_load.summarize(points)[0]["p50_ms"] == (0.70 + 0.40) / 2
    assert "median of rounds" in sfu_load.median_table(rows)


def test_wakecost_measures_a_sleep_and_wake_up_per_gap() -> None:
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "pysfu-loadgen"], cwd=ROOT,
                   check=True, timeout=900)
    out = subprocess.run([str(ROOT / "target" / "release" / "pysfu-wakecost"), "--gaps",
                          "300,1000", "--cycles", "40"], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    record = json.loads(out)
    assert record["bench"] == "wakecost"
    assert [p["gap_us"] for p in record["points"]] == [300, 1000]
    for p in record["points"]:
        # Every write is seen; two writes before one read are one wake-up.
        assert p["cycles"] == 40 and 0 < p["wakes"] <= 40, p
        assert p["sleeper_cpu_us_per_wake"] > 0 and p["waker_cpu_us_per_cycle"] > 0, p
        assert 0 < p["wake_delay_us_p50"] <= p["wake_delay_us_p90"], p


data_fanout = _load_script(ROOT / "bench" / "data_fanout.py")


def test_data_fanout_steps_measure_each_step() -> None:
    r = data_fanout.run_steps(3, 100, 5, "python")
    assert r["consumers"] == 3 and r["packets_per_message"] == 3 and r["delivered"] == 15
    steps = r["us_per_message"]
    assert steps["native_sctp_fanout"] > 0 and steps["dtls_protect_left_in_python"] > 0
    assert steps["total"] >= steps["native_sctp_fanout"] + steps["dtls_protect_left_in_python"]
    # Sealed natively (inside sctp_fanout): the same packets, every message read by the
    # clients' OpenSSL.
    native = data_fanout.run_steps(3, 100, 5, "native")
    assert native["sealing"] == "native" and native["packets_per_message"] == 3
    assert native["delivered"] == 15


async def test_data_fanout_e2e_delivers_every_message_in_order() -> None:
    r = await data_fanout.run_e2e(3, 100, 20.0, 0.5)
    assert r["consumers"] == 3 and r["sent"] == 10
    assert r["delivered"] == 30 and r["in_order"]
    assert r["latency_ms"]["p50"] is not None and r["server_cpu_s"] >= 0
