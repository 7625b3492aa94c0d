"""End-to-end across two nodes: a real redis-server, two `pysfu serve` nodes of one cluster
(pysfu/cluster/), a Chromium host on node A and a Chromium viewer on node B (each page
served by its own node, unmodified mediasoup-client) that decodes the host's video and
receives its audio through the node-to-node pipes; and a host page on a loaded node that
follows the placement redirect to the idle node (the page moves to that node's page), with a viewer
page on the loaded node playing it through the pipes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import tests.e2e.conftest
from pysfu.client import connect
from pysfu.testing.cluster_nodes import CLUSTER_SECRET, _redis_ping
from pysfu.testing.ports import free_port
from tests.e2e.conftest import Pages, SfuProcess, _missing
from tests.e2e.test_browser import (
    STATE,
    _wait,
    assert_playing,
    new_room,
    open_host,
    open_viewer,
    start_sharing,
    wait_decoding,
)

BUSY_PEERS = 24  # signaling-only peers that make a node the loaded one


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
               plain_ports: str, port: int | None = None) -> SfuProcess:
    """A node; with ``port``: on that signaling port, publishing its node_url (a placement
    redirect target)."""
    monkeypatch.setenv("PYSFU_CLUSTER_REDIS_URL", redis_url)
    monkeypatch.setenv("PYSFU_CLUSTER_SECRET", CLUSTER_SECRET)
    monkeypatch.setenv("PYSFU_NODE_ID", node_id)
    monkeypatch.setenv("PYSFU_PLAIN_PORT_RANGE", plain_ports)
    if port is not None:
        monkeypatch.setenv("PYSFU_NODE_URL", f"ws://127.0.0.1:{port}/ws")
        monkeypatch.setattr(tests.e2e.conftest, "free_port", lambda *_: port)
    else:
        monkeypatch.delenv("PYSFU_NODE_URL", raising=False)
    node = SfuProcess(tmp_path / f"{node_id}.log")
    monkeypatch.setattr(tests.e2e.conftest, "free_port", free_port)
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


class BusyPeers:
    """``count`` signaling-only peers in a room of one node (a thread running Trio), until
    ``close``; ``ready`` once they have joined."""

    def __init__(self, url: str, count: int) -> None:
        self.ready, self._stop = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, count), daemon=True)
        self._thread.start()

    def _run(self, url: str, count: int) -> None:
        async def hold() -> None:
            async with connect(url) as host:
                await host.join("busy", "host", "busy-host", redirected=True)
                clients = []
                try:
                    for i in range(count - 1):
                        cm = connect(url)
                        clients.append(cm)
                        await (await cm.__aenter__()).join("busy", "viewer", f"busy-{i}")
                    self.ready.set()
                    await trio.to_thread.run_sync(self._stop.wait)
                finally:
                    for cm in reversed(clients):
                        await cm.__aexit__(None, None, None)

        try:
            trio.run(hold)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_demo_page_host_follows_the_placement_redirect(
        browser_context: Any, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    port_a, port_b = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    monkeypatch.setenv("PYSFU_MAX_ROOMS_PER_ADDRESS_PER_MINUTE", "1000")
    a = start_node(monkeypatch, tmp_path, redis_url, "node-a", "42600-42699", port=port_a)
    b = start_node(monkeypatch, tmp_path, redis_url, "node-b", "42700-42799", port=port_b)
    busy = BusyPeers(f"ws://127.0.0.1:{port_a}/ws", BUSY_PEERS)
    pages = Pages(browser_context, a.base)
    try:
        assert busy.ready.wait(30) and busy.error is None, busy.error
        time.sleep(5)  # two registry refreshes: A's load is published
        room = new_room()
        host = pages.open("host", f"/?room={room}&role=host")  # a page of node A
        host.wait_for_url(f"{b.base}/?**", timeout=15_000)  # it moved to node B's page
        _wait(host, "!document.getElementById('start').disabled", what="host ready on B")
        state = host.evaluate(STATE)
        assert state["joined"] and state["hops"] == 1, state
        start_sharing(host)
        assert "event=cluster.redirect" in a.log()
        assert f"event=peer.joined room={room} peer=" in b.log()
        viewer = open_viewer(pages, room, "viewer-on-a")  # on the loaded node: not redirected
        assert_playing(wait_decoding(viewer, timeout=20))
        assert viewer.evaluate(STATE)["hops"] == 0
        assert "event=cluster.piped" in a.log() and "event=cluster.node_attached" in b.log()
    finally:
        busy.close()
        pages.close()
        a.stop()
        b.stop()
