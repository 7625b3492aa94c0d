from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pysfu.config import Config, ConfigError, default_workers, load_config
from pysfu.testing.ports import free_media_port, free_port


def test_defaults() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.port, cfg.rtc_port, cfg.candidate_ip) == (8080, 40000, "127.0.0.1")


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('port = 9000\nrtc_port = 41000\nannounced_ip = "203.0.113.7"\n')
    cfg = load_config(file, {"PYSFU_RTC_PORT": "42000", "HOME": "/x"}, {"announced_ip": None})
    assert (cfg.port, cfg.rtc_port, cfg.candidate_ip) == (9000, 42000, "203.0.113.7")
    cfg = load_config(file, {"PYSFU_RTC_PORT": "42000"}, {"rtc_port": "43000"})
    assert cfg.rtc_port == 43000


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PYSFU_PORT": "eighty"}, "port"),
        ({"PYSFU_PORT": "70000"}, "port"),
        ({"PYSFU_HOST": "not-an-ip"}, "host"),
        ({"PYSFU_RTC_IP": "0.0.0.0"}, "announced_ip"),
        ({"PYSFU_HOST_GRACE_PERIOD": "-1"}, "host_grace_period"),
        ({"PYSFU_LOG_LEVEL": "loud"}, "log_level"),
        ({"PYSFU_NO_SUCH": "1"}, "PYSFU_NO_SUCH"),
        ({"PYSFU_MAX_ROOMS": "0"}, "max_rooms"),
        # A data message bigger than the byte burst could never pass the limit.
        ({"PYSFU_DATA_BYTES_BURST": "1000", "PYSFU_MAX_DATA_MESSAGE_SIZE": "1001"},
         "data_bytes_burst"),
    ],
)
def test_invalid_settings_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("announced_ip", "203.0.113.7"),
        ("announced_ip", "2001:db8::1"),
        ("announced_ip", "sfu.example.com"),
        ("announced_ip", "sfu.example.com."),
        ("announced_ip", "localhost"),
        ("announced_ip", "a-1.b2"),
        ("host_grace_period", "3600"),
        ("host_grace_period", "0"),  # no grace period: the room closes with the host's socket
        ("dtls_timeout", "0.25"),
        ("http_timeout", "1"),
        ("write_timeout", "3600"),
        ("max_handshakes", "1"),
    ],
)
def test_valid_bounds_are_accepted(name: str, value: str) -> None:
    cfg = load_config(None, {f"PYSFU_{name.upper()}": value})
    got = getattr(cfg, name)
    assert got == (value if isinstance(got, str) else float(value))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("announced_ip", " "),
        ("announced_ip", "not an ip"),
        ("announced_ip", "1.2.3.4.5"),
        ("announced_ip", "999.1.1.1"),
        ("announced_ip", "-bad.example.com"),
        ("announced_ip", "bad-.example.com"),
        ("announced_ip", "a" * 64 + ".example.com"),
        ("announced_ip", ("a" * 60 + ".") * 5 + "com"),
        ("announced_ip", "host\nname"),
        ("announced_ip", "exa_mple.com"),
        ("announced_ip", "a..b"),
        ("announced_ip", "0.0.0.0"),
        ("announced_ip", "::"),
        ("announced_ip", "224.0.0.1"),
        ("host_grace_period", "inf"),
        ("host_grace_period", "3601"),
        ("consent_timeout", "1e9"),
        ("dtls_timeout", "nan"),
        ("dtls_timeout", "0"),
        ("join_timeout", "7200"),
        ("http_timeout", "0"),
        ("http_timeout", "-1"),
        ("http_timeout", "inf"),
        ("write_timeout", "86400"),
        ("max_handshakes", "0"),
        ("max_handshakes", "1000000"),
        ("requests_per_second", "inf"),
    ],
)
def test_absurd_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(None, {f"PYSFU_{name.upper()}": value})


def test_listener_settings_from_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("http_timeout = 5\nwrite_timeout = 2.5\nmax_handshakes = 64\n")
    cfg = load_config(file)
    assert (cfg.http_timeout, cfg.write_timeout, cfg.max_handshakes) == (5.0, 2.5, 64)
    file.write_text("max_handshakes = 1.5\n")
    with pytest.raises(ConfigError, match="max_handshakes"):
        load_config(file)


def test_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("colour = 'blue'")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config(bad)
    bad.write_text("port = '8080'")
    with pytest.raises(ConfigError, match="port"):
        load_config(bad)
    bad.write_text('media_codecs = [{kind = "audio", mimeType = "audio/chicken", '
                   'clockRate = 8000}]')
    with pytest.raises(ConfigError, match="media_codecs"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_cli_refuses_invalid_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pysfu", "serve", "--port", "nope"],
        capture_output=True, text=True, timeout=30, env={**os.environ},
    )
    assert proc.returncode == 2
    assert "invalid setting port='nope'" in proc.stderr


def test_cli_serves_and_logs_structured_lines() -> None:
    port, rtc_port = free_port(), free_media_port()
    env = {**os.environ, "PYSFU_RTC_PORT": str(rtc_port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pysfu", "serve", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        deadline = time.monotonic() + 20
        while "server.listening" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "event=server.listening" in line
        assert f"port={port}" in line and f"rtc_port={rtc_port}" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
            assert b'"rooms": 0' in resp.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


# ---- access control (issue 13) ---------------------------------------------------------------

SECRET = "correct-horse-battery-staple-0123456789"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "2001:db8::1"])
def test_non_loopback_host_without_secret_is_refused(host: str) -> None:
    env = {"PYSFU_HOST": host, "PYSFU_RTC_IP": "127.0.0.1"}
    with pytest.raises(ConfigError) as err:
        load_config(None, env)
    message = str(err.value)
    assert f"host={host!r}" in message
    assert "auth_secret" in message and "allow_open_rooms" in message
    assert load_config(None, {**env, "PYSFU_AUTH_SECRET": SECRET}).auth_enabled
    cfg = load_config(None, {**env, "PYSFU_ALLOW_OPEN_ROOMS": "true"})
    assert cfg.open_rooms and cfg.exposed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_host_may_run_open_rooms(host: str) -> None:
    cfg = load_config(None, {"PYSFU_HOST": host})
    assert cfg.open_rooms and not cfg.exposed


def test_secrets_are_checked_and_never_shown() -> None:
    short = "tooshort-but-secret"
    with pytest.raises(ConfigError, match="auth_secret") as err:
        load_config(None, {"PYSFU_AUTH_SECRET": short})
    assert short not in str(err.value)
    with pytest.raises(ConfigError, match="auth_keys") as err:
        load_config(None, {"PYSFU_AUTH_KEYS": f"old:{SECRET},new:{short}"})
    assert short not in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="auth_keys") as err:
        load_config(None, {"PYSFU_AUTH_KEYS": SECRET})  # no kid:
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="auth_keys"):
        load_config(None, {"PYSFU_AUTH_KEYS": f"bad kid:{SECRET}"})
    with pytest.raises(ConfigError, match="auth_secret") as err:
        load_config(overrides={"auth_secret": 12345678901234567890123456789012345})
    assert "1234567890" not in str(err.value)
    cfg = load_config(None, {"PYSFU_AUTH_SECRET": SECRET,
                             "PYSFU_AUTH_KEYS": f"old:{SECRET}x,new:{SECRET}:y"})
    assert cfg.auth_keys == {"old": SECRET + "x", "new": SECRET + ":y"}
    for text in (repr(cfg), str(cfg)):
        assert SECRET not in text
        assert "auth_secret='***'" in text and "'old': '***'" in text


def test_auth_keys_from_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(f'host = "0.0.0.0"\nannounced_ip = "203.0.113.7"\n'
                    f'[auth_keys]\n2025-01 = "{SECRET}a"\n2025-02 = "{SECRET}b"\n')
    cfg = load_config(file)
    assert cfg.auth_keys == {"2025-01": SECRET + "a", "2025-02": SECRET + "b"}
    assert cfg.auth_enabled and cfg.exposed
    file.write_text("auth_keys = 5\n")
    with pytest.raises(ConfigError, match="auth_keys"):
        load_config(file)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("no", False),
                                                 ("False", False)])
def test_allow_open_rooms_is_a_boolean(value: str, expected: bool) -> None:
    assert load_config(None, {"PYSFU_ALLOW_OPEN_ROOMS": value}).allow_open_rooms is expected


def test_udp_and_tcp_settings() -> None:
    cfg = load_config()
    assert (cfg.enable_udp, cfg.enable_tcp, cfg.prefer_udp) == (True, True, True)
    cfg = load_config(None, {"PYSFU_ENABLE_UDP": "false", "PYSFU_PREFER_UDP": "off"})
    assert (cfg.enable_udp, cfg.enable_tcp, cfg.prefer_udp) == (False, True, False)
    cfg = load_config(None, {"PYSFU_ENABLE_UDP": "false"}, {"enable_udp": True,
                                                             "enable_tcp": False})
    assert (cfg.enable_udp, cfg.enable_tcp) == (True, False)
    with pytest.raises(ConfigError, match="enable_tcp.*both off"):
        load_config(None, {"PYSFU_ENABLE_UDP": "0", "PYSFU_ENABLE_TCP": "no"})
    with pytest.raises(ConfigError, match="enable_tcp"):
        load_config(None, {"PYSFU_ENABLE_TCP": "sometimes"})


def test_workers_setting() -> None:
    # One per core this process may run on (its affinity), capped at the engine's limit.
    assert load_config().workers == min(len(os.sched_getaffinity(0)), 64) == default_workers()
    assert load_config(None, {"PYSFU_WORKERS": "3"}).workers == 3
    assert load_config(None, {"PYSFU_WORKERS": "3"}, {"workers": "2"}).workers == 2
    for bad in ("0", "65", "two"):
        with pytest.raises(ConfigError, match="workers"):
            load_config(None, {"PYSFU_WORKERS": bad})


def test_gro_setting() -> None:
    assert load_config().gro is False
    assert load_config(None, {"PYSFU_GRO": "on"}).gro is True
    assert load_config(None, {"PYSFU_GRO": "on"}, {"gro": False}).gro is False


def test_gso_setting() -> None:
    assert load_config().gso is True
    assert load_config(None, {"PYSFU_GSO": "false"}).gso is False
    assert load_config(None, {"PYSFU_GSO": "false"}, {"gso": True}).gso is True
    with pytest.raises(ConfigError, match="gso"):
        load_config(None, {"PYSFU_GSO": "maybe"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("allow_open_rooms", "maybe"), ("max_connections_per_address", "0"),
     ("connections_per_second_per_address", "inf"), ("connection_burst_per_address", "0"),
     ("requests_per_second_per_address", "0"), ("request_burst_per_address", "0"),
     ("max_dtls_handshakes_per_address", "0"), ("max_dtls_handshakes", "10000000")],
)
def test_absurd_access_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(None, {f"PYSFU_{name.upper()}": value})
