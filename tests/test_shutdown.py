"""Graceful shutdown of a real ``python -m pysfu serve`` process during a stream: SIGTERM (or
SIGINT) tells every peer ``serverShuttingDown``, closes the rooms after shutdown_grace
(``roomClosed`` reason ``server_shutdown``) and exits 0 with no traceback; a second signal
stops at once."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pysfu.client import SignalingClient, connect
from pysfu.testing.fixtures import vp8_producer
from pysfu.testing.media_room import HOST_SSRC, ROOM, add_viewer, open_peer, send_frames
from pysfu.testing.ports import free_media_port, free_port

GRACE = 1.5


@contextlib.asynccontextmanager
async def _serve(log: Path, grace: float) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pysfu", "serve", "--port", str(port), "--rtc-port",
             str(free_media_port()), "--metrics-port", "0", "--shutdown-grace",
             str(grace)], stderr=out)
    try:
        deadline = trio.current_time() + 30
        while b"event=server.listening" not in log.read_bytes():
            assert proc.poll() is None and trio.current_time() < deadline, log.read_text()
            await trio.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def _room(stack: contextlib.AsyncExitStack, port: int) -> tuple[Any, Any, list[Any]]:
    """A host streaming VP8 and two viewers receiving it."""

    def client() -> contextlib.AbstractAsyncContextManager[SignalingClient]:
        return connect(f"ws://127.0.0.1:{port}/ws")

    host = await stack.enter_async_context(client())
    await host.join(ROOM, "host", "host")
    host_peer = await open_peer(host, "send")
    stack.callback(host_peer.close)
    producer_id = await host.produce(ROOM, host_peer.transport["id"], "video",
                                     vp8_producer(mid="0", ssrc=HOST_SSRC))
    viewers = [await add_viewer(client, stack, f"v{i}", producer_id) for i in range(2)]
    for v in viewers:
        stack.callback(v.peer.close)
    return host, host_peer, viewers


async def _wait(proc: subprocess.Popen[bytes], limit: float) -> tuple[int, float]:
    start = time.monotonic()
    while proc.poll() is None:
        assert time.monotonic() - start < limit, "the server did not exit in time"
        await trio.sleep(0.02)
    return proc.returncode, time.monotonic() - start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_during_a_stream_drains_then_closes_rooms(tmp_path: Path,
                                                                sig: signal.Signals) -> None:
    log = tmp_path / "server.log"
    async with _serve(log, GRACE) as (proc, port), contextlib.AsyncExitStack() as stack:
        host, host_peer, viewers = await _room(stack, port)
        await trio.sleep(0.1)
        await send_frames(host_peer, 1, 5)
        for v in viewers:
            assert await v.peer.recv_rtp() is not None  # the stream flows
        sent_at = time.monotonic()
        proc.send_signal(sig)
        for c in [host] + [v.client for v in viewers]:
            with trio.fail_after(3):
                _, notice = await c.next_notification("serverShuttingDown")
            assert notice["reconnectInMs"] >= 0 and notice["graceMs"] == int(GRACE * 1000)
        # Still serving during the grace period: media flows, a new room is refused.
        await send_frames(host_peer, 6, 3, keyframe_first=False)
        assert await viewers[0].peer.recv_rtp() is not None
        for c in [host] + [v.client for v in viewers]:
            with trio.fail_after(GRACE + 2):
                _, closed = await c.next_notification("roomClosed")
            assert closed == {"roomId": ROOM, "reason": "server_shutdown"}
        assert time.monotonic() - sent_at >= GRACE - 0.1
        code, _ = await _wait(proc, GRACE + 2)
        assert code == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert "event=server.shutting_down" in text
    assert text.strip().splitlines()[-1].endswith(
        f"event=server.stopped reason={sig.name} graceful=True")


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    async with _serve(log, 30.0) as (proc, port), contextlib.AsyncExitStack() as stack:
        host, _, _ = await _room(stack, port)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(3):
            await host.next_notification("serverShuttingDown")
        proc.send_signal(signal.SIGINT)
        code, took = await _wait(proc, 5)
        assert code == 130 and took < 5
    text = log.read_text()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1].endswith(
        "event=server.stopped reason=SIGINT graceful=False")


async def test_a_new_connection_during_shutdown_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    async with _serve(log, 2.0) as (proc, port), contextlib.AsyncExitStack() as stack:
        host, _, _ = await _room(stack, port)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(3):
            await host.next_notification("serverShuttingDown")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:  # closed unanswered
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(3), contextlib.suppress(trio.BrokenResourceError):
                assert await stream.receive_some(1024) == b""
        code, _ = await _wait(proc, 5)
        assert code == 0


async def test_the_grace_ends_once_no_signaling_session_is_left(tmp_path: Path) -> None:
    """A room whose peers have all hung up (its host within host_grace_period, so the room
    stays) has nobody to wait for: the server stops long before a 30 s grace."""
    log = tmp_path / "server.log"
    async with _serve(log, 30.0) as (proc, port):
        async with contextlib.AsyncExitStack() as peers:
            await _room(peers, port)
        assert b"event=room.closed" not in log.read_bytes()  # the host's grace keeps it
        proc.send_signal(signal.SIGTERM)
        code, took = await _wait(proc, 10)
        assert code == 0 and took < 10
    text = log.read_text()
    assert "Traceback" not in text
    assert "event=server.drained rooms=1" in text
    assert text.strip().splitlines()[-1].endswith(
        "event=server.stopped reason=SIGTERM graceful=True")
