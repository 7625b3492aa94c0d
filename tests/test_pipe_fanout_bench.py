"""bench/pipe_fanout.py works: a short run of each path forwards the host's packets to every
viewer (through a real SRTP pipe between two engines, or directly) and measures CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench() -> Any:
    path = ROOT / "bench" / "pipe_fanout.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


pipe_fanout = _load_bench()


@pytest.mark.parametrize("hop", ["direct", "pipe", "pipe-plain"])
def test_pipe_fanout_run_forwards_to_every_viewer(hop: str) -> None:
    r = pipe_fanout.run(hop, 3, 1.0, 500.0, 1200)
    assert r["hop"] == hop and r["consumers"] == 3
    # The share counted in the window (a starved machine may still hold some in flight).
    assert r["forwarded"] > 0 and r["forwarded_share"] >= 0.5, r
    assert r["engine_us_per_forwarded_packet"] > 0, r
    assert not {k for k in r["drops"] if "srtp" in k or "plain" in k}, r["drops"]
