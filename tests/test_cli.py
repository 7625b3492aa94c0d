"""Operator paths of ``python -m pysfu serve`` (a real subprocess on free loopback ports): a
port in use (HTTP, media, two servers on one media port) and SIGTERM/SIGINT end with one
clear line and an exit code, never a Python traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

TIMEOUT = 30


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(port: int, rtc_port: int) -> list[str]:
    return [sys.executable, "-m", "pysfu", "serve", "--port", str(port),
            "--rtc-port", str(rtc_port)]


def _run(port: int, rtc_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(port, rtc_port), capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ})


@contextmanager
def _running(port: int, rtc_port: int) -> Iterator[subprocess.Popen[str]]:
    """A server that has logged server.listening."""
    proc = subprocess.Popen(_cmd(port, rtc_port), stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        line = ""
        while "event=server.listening" not in line:
            assert time.monotonic() < deadline, "server did not start"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited before listening"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def _assert_one_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1, proc.stderr
    assert "event=server.failed" in errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_http_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run(port, _free_port(socket.SOCK_DGRAM))
    _assert_one_clear_error(proc, f"127.0.0.1:{port}", "Address already in use", "port")


def test_media_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        rtc_port = busy.getsockname()[1]
        proc = _run(_free_port(), rtc_port)
    _assert_one_clear_error(proc, f"127.0.0.1:{rtc_port}", "Address already in use",
                            "rtc_port")


def test_two_servers_on_one_media_port() -> None:
    rtc_port = _free_port(socket.SOCK_DGRAM)
    with _running(_free_port(), rtc_port) as first:
        second = _run(_free_port(), rtc_port)
        _assert_one_clear_error(second, f"127.0.0.1:{rtc_port}", "rtc_port")
        assert first.poll() is None  # the first one is not disturbed


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_stops_cleanly(sig: signal.Signals, code: int) -> None:
    with _running(_free_port(), _free_port(socket.SOCK_DGRAM)) as proc:
        proc.send_signal(sig)
        assert proc.wait(timeout=TIMEOUT) == code
        assert proc.stderr is not None
        rest = proc.stderr.read()
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].endswith(f"event=server.stopped reason={sig.name}")
