"""End-to-end across two nodes: a real redis-server, two `pysfu serve` nodes of one cluster
(pysfu/cluster/), a Chromium host on node A and a Chromium viewer on node B (each page
served by its own node, unmodified mediasoup-client) that decodes the host's video and
receives its audio through the node-to-node pipes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pysfu.testing.cluster_nodes import CLUSTER_SECRET, _redis_ping
from pysfu.testing.ports import free_port
from tests.e2e.conftest import Pages, SfuProcess, _missing
from tests.e2e.test_browser import assert_playing, new_room, open_host, open_viewer, wait_decoding


@pytest.fixture
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        _missing("redis-server not found: run scripts/install-redis.sh")
    directory = tempfile.mkdtemp(prefix="pysfu-redis-")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not _redis_ping(port):
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server failed"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def start_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, node_id: str,
               plain_ports: str) -> SfuProcess:
    monkeypatch.setenv("PYSFU_CLUSTER_REDIS_URL", redis_url)
    monkeypatch.setenv("PYSFU_CLUSTER_SECRET", CLUSTER_SECRET)
    monkeypatch.setenv("PYSFU_NODE_ID", node_id)
    monkeypatch.setenv("PYSFU_PLAIN_PORT_RANGE", plain_ports)
    node = SfuProcess(tmp_path / f"{node_id}.log")
    deadline = time.monotonic() + 15
    while "event=cluster.joined" not in node.log():
        if time.monotonic() > deadline:
            node.stop()
            raise AssertionError(f"{node_id} did not join the cluster:\n{node.log()[-2000:]}")
        time.sleep(0.05)
    return node


def test_chromium_viewer_on_another_node_plays_the_host(
        browser_context: Any, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = start_node(monkeypatch, tmp_path, redis_url, "node-a", "42400-42499")
    b = start_node(monkeypatch, tmp_path, redis_url, "node-b", "42500-42599")
    pages_a, pages_b = Pages(browser_context, a.base), Pages(browser_context, b.base)
    try:
        room = new_room()
        open_host(pages_a, room)
        viewer = open_viewer(pages_b, room, "viewer-on-b")
        assert_playing(wait_decoding(viewer, timeout=20))
        assert "event=cluster.piped" in b.log() and "event=cluster.node_attached" in a.log()
        assert b.health()["engine"]["producers"] == 2  # the piped video and audio
    finally:
        pages_a.close()
        pages_b.close()
        a.stop()
        b.stop()
