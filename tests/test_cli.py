"""Operator paths of ``python -m pysfu serve`` (a real subprocess on free loopback ports): a
port in use (HTTP, media, two servers on one media port) and SIGTERM/SIGINT end with one
clear line and an exit code, never a Python traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pysfu.testing.ports import free_media_port, free_port

TIMEOUT = 30


def _cmd(port: int, rtc_port: int) -> list[str]:
    return [sys.executable, "-m", "pysfu", "serve", "--port", str(port),
            "--rtc-port", str(rtc_port), "--metrics-port", "0"]


def _run(port: int, rtc_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cmd(port, rtc_port), *extra], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ})


@contextmanager
def _running(port: int, rtc_port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A server that has logged server.listening."""
    proc = subprocess.Popen([*_cmd(port, rtc_port), *extra], stderr=subprocess.PIPE, text=True,
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
        proc = _run(port, free_media_port())
    _assert_one_clear_error(proc, f"127.0.0.1:{port}", "Address already in use", "port")


def test_media_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        rtc_port = busy.getsockname()[1]
        proc = _run(free_port(), rtc_port)
    _assert_one_clear_error(proc, f"127.0.0.1:{rtc_port}", "Address already in use",
                            "rtc_port")


def test_media_tcp_port_in_use() -> None:
    """ICE-TCP listens on the media port number too: a TCP listener there is a clear error;
    with --no-enable-tcp the server starts anyway."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rtc_port = busy.getsockname()[1]
        proc = _run(free_port(), rtc_port)
        _assert_one_clear_error(proc, f"127.0.0.1:{rtc_port}", "TCP", "rtc_port")
        with _running(free_port(), rtc_port, "--no-enable-tcp") as server:
            assert server.poll() is None


def test_udp_and_tcp_both_off_is_a_config_error() -> None:
    proc = _run(free_port(), free_media_port(), "--no-enable-udp", "--no-enable-tcp")
    assert proc.returncode != 0
    assert "enable_udp" in proc.stderr and "enable_tcp" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_servers_on_one_media_port() -> None:
    rtc_port = free_media_port()
    with _running(free_port(), rtc_port) as first:
        second = _run(free_port(), rtc_port)
        _assert_one_clear_error(second, f"127.0.0.1:{rtc_port}", "rtc_port")
        assert first.poll() is None  # the first one is not disturbed


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 0)])
def test_signal_stops_cleanly(sig: signal.Signals, code: int) -> None:
    """Either signal is a graceful stop (exit 0; before issue 14 SIGINT cut everything at
    once and exited 130). With no rooms there is nothing to wait for."""
    with _running(free_port(), free_media_port()) as proc:
        proc.send_signal(sig)
        assert proc.wait(timeout=TIMEOUT) == code
        assert proc.stderr is not None
        rest = proc.stderr.read()
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].endswith(
        f"event=server.stopped reason={sig.name} graceful=True")


# ---- access control (issue 13) ---------------------------------------------------------------

SECRET = "an-auth-secret-of-more-than-32-bytes-0123"


def _serve(*args: str) -> list[str]:
    return [sys.executable, "-m", "pysfu", "serve", "--port", str(free_port()),
            "--rtc-port", str(free_media_port()), "--metrics-port", "0", *args]


def test_non_loopback_bind_without_secret_refuses_to_start() -> None:
    """0.0.0.0 is not loopback (the check runs on the config, before anything is bound)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSFU_")}
    proc = subprocess.run(_serve("--host", "0.0.0.0", "--announced-ip", "203.0.113.7"),
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pysfu: invalid setting host='0.0.0.0'"), proc.stderr
    assert "auth_secret" in proc.stderr and "allow_open_rooms" in proc.stderr


@pytest.mark.parametrize("mode", ["allow_open_rooms", "auth_secret"])
def test_non_loopback_bind_starts_with_open_rooms_allowed_or_a_secret(mode: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSFU_")}
    if mode == "auth_secret":
        env["PYSFU_AUTH_SECRET"] = SECRET
    args = ["--host", "0.0.0.0", "--announced-ip", "203.0.113.7"]
    if mode == "allow_open_rooms":
        args.append("--allow-open-rooms")
    cmd = _serve(*args)
    port = int(cmd[cmd.index("--port") + 1])
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + TIMEOUT
        while not lines or "event=server.listening" not in lines[-1]:
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stderr.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            health = json.loads(resp.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        lines += proc.stderr.read().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "\n".join(lines)
    assert SECRET not in text
    warnings = [line for line in lines if "event=server.open_rooms" in line]
    if mode == "allow_open_rooms":
        assert health["open_rooms"] is True
        assert len(warnings) == 1 and "level=warning" in warnings[0], text
        assert "auth=open_rooms" in text
    else:
        assert health["open_rooms"] is False and not warnings
        assert "auth=token" in text


def _token_cmd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysfu", "token", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


def test_token_command(tmp_path: Any) -> None:
    from pysfu.auth import Verifier

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSFU_")}
    proc = _token_cmd("--room", "r1", "--identity", "alice", "--role", "host", "--ttl", "2h",
                      "--name", "Alice", env={**env, "PYSFU_AUTH_SECRET": SECRET})
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert SECRET not in proc.stdout + proc.stderr
    grant = Verifier(SECRET).verify(token, now=time.time())
    assert (grant.identity, grant.room, grant.role, grant.name) == ("alice", "r1", "host",
                                                                    "Alice")
    assert 7190 < grant.expires - time.time() <= 7200
    # With key rotation, from a config file: --kid picks the key.
    config = tmp_path / "c.toml"
    config.write_text(f'[auth_keys]\nk1 = "{SECRET}1"\nk2 = "{SECRET}2"\n')
    proc = _token_cmd("--room", "*", "--identity", "bot", "--role", "viewer", "--kid", "k2",
                      "--config", str(config), env=env)
    assert proc.returncode == 0, proc.stderr
    grant = Verifier(keys={"k2": SECRET + "2"}).verify(proc.stdout.strip(), now=time.time())
    assert (grant.room, grant.role) == ("*", "viewer")
    # Mistakes: one line, exit 2, no traceback, no secret.
    for args, extra, needle in (
        (["--role", "host"], {}, "no secret configured"),
        (["--role", "host", "--config", str(config)], {}, "--kid"),
        (["--role", "host", "--kid", "k9", "--config", str(config)], {}, "k9"),
        (["--role", "host", "--ttl", "soon"], {"PYSFU_AUTH_SECRET": SECRET}, "--ttl"),
        (["--role", "host", "--identity", "a b"], {"PYSFU_AUTH_SECRET": SECRET}, "identity"),
    ):
        base = ["--room", "r1", "--identity", "alice"] if "--identity" not in args \
            else ["--room", "r1"]
        proc = _token_cmd(*base, *args, env={**env, **extra})
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert SECRET not in proc.stderr and proc.stdout == ""


def test_parse_ttl() -> None:
    from pysfu.cli import parse_ttl

    assert [parse_ttl(t) for t in ("90", "90s", "30m", "1h", "1.5h", "7d")] == [
        90, 90, 1800, 3600, 5400, 7 * 86400]
    for bad in ("", "0", "1w", "-5", "h"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_gso_flag() -> None:
    from pysfu.cli import _parser

    assert _parser().parse_args(["serve", "--no-gso"]).gso is False
    assert _parser().parse_args(["serve", "--gso"]).gso is True
    assert _parser().parse_args(["serve"]).gso is None  # the config's (default on)


def test_gro_flag() -> None:
    from pysfu.cli import _parser

    assert _parser().parse_args(["serve", "--gro"]).gro is True
    assert _parser().parse_args(["serve", "--no-gro"]).gro is False
    assert _parser().parse_args(["serve"]).gro is None  # the config's (default off)
