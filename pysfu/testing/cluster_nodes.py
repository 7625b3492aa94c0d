"""A real ``redis-server`` and real ``pysfu serve`` node processes on loopback, for the
cluster tests and benches (Debian's redis-server: scripts/install-redis.sh).

``redis_server()`` starts redis-server on a free loopback port with no persistence (no RDB,
no AOF) in a temporary directory, waits until it answers PING, and stops it (and removes
the directory) on exit. ``serve_node(...)`` starts ``python -m pysfu serve`` joined to that
Redis, waits until it has joined the cluster, and kills it on exit; ``node.kill()`` is
``kill -9`` mid-test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pysfu.testing.ports import free_media_port, free_port

START_TIMEOUT = 15.0  # seconds for redis-server or a node to come up
CLUSTER_SECRET = "test-cluster-secret-0123456789abcdef"  # >= 32 bytes


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A redis-server process; ``stop`` and ``start`` (same port, empty again: no
    persistence) make a Redis outage or restart mid-test."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
             "--loglevel", "warning", "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with trio.fail_after(START_TIMEOUT):
            while not await trio.to_thread.run_sync(_redis_ping, self.port):
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited ({self.process.returncode})")
                await trio.sleep(0.05)

    def stop(self) -> None:
        """kill -9: every key and subscription is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: run scripts/install-redis.sh")
    redis = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="pysfu-redis-")))
    try:
        await redis.start()
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(redis.directory, ignore_errors=True)


@dataclass
class Node:
    """A ``pysfu serve`` process of the cluster."""

    node_id: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def kill(self) -> None:
        """kill -9: no clean leave, its registry entry has to expire."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def health(self) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
                return answer

        return await trio.to_thread.run_sync(get)

    async def engine(self) -> dict[str, int]:
        counts: dict[str, int] = (await self.health())["engine"]
        return counts


@asynccontextmanager
async def serve_node(redis: RedisServer, node_id: str, directory: Path, *,
                     plain_ports: str, secret: str = CLUSTER_SECRET,
                     extra_env: dict[str, str] | None = None, node_url: bool = False,
                     port: int | None = None) -> AsyncIterator[Node]:
    """``python -m pysfu serve`` on loopback, in the cluster of ``redis``; its log in
    ``directory``. ``plain_ports`` (first-last) keeps the pipes of nodes on one machine
    apart. ``node_url``: the node publishes its URL (``ws://127.0.0.1:port/ws``), which
    makes it a placement redirect target; ``port``: its signaling port (default free)."""
    port = port or free_port()
    log = directory / f"{node_id}.log"
    env = dict(os.environ)
    env.update({"PYSFU_CLUSTER_REDIS_URL": redis.url, "PYSFU_CLUSTER_SECRET": secret,
                "PYSFU_NODE_ID": node_id, "PYSFU_PLAIN_PORT_RANGE": plain_ports,
                "PYSFU_HOST_GRACE_PERIOD": "0.5", "PYSFU_LOG_LEVEL": "info",
                # Every test client is 127.0.0.1: the per-address rate of new connections
                # (20/s, burst 40) would refuse a test's quick succession of them (the
                # 50-round race opens 100 in about two seconds).
                "PYSFU_CONNECTIONS_PER_SECOND_PER_ADDRESS": "1000",
                "PYSFU_CONNECTION_BURST_PER_ADDRESS": "1000"})
    if node_url:
        env["PYSFU_NODE_URL"] = f"ws://127.0.0.1:{port}/ws"
    env.update(extra_env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pysfu", "serve", "--port", str(port), "--rtc-port",
             str(free_media_port()), "--metrics-port", "0"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    node = Node(node_id, port, process, log)
    try:
        with trio.fail_after(START_TIMEOUT):
            while b"event=cluster.joined" not in log.read_bytes():
                if process.poll() is not None:
                    raise RuntimeError(f"node {node_id} exited: {log.read_text()[-2000:]}")
                await trio.sleep(0.05)
        yield node
    finally:
        node.kill()
