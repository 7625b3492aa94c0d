"""The WebSocket upgrade's Origin check (issue 13): a page from another origin gets HTTP 403
before any WebSocket exists; the server's own origins and clients without Origin (bots,
servers) are let through."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from pysfu.config import Config, load_config
from pysfu.server import Server, own_origins
from pysfu.testing.live_stream import live_stream

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


async def upgrade(port: int, origin: bytes | None) -> int:
    """A raw WebSocket upgrade with this Origin: the status code of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = [b"GET /ws HTTP/1.1", b"Host: 127.0.0.1", b"Upgrade: websocket",
             b"Connection: Upgrade", b"Sec-WebSocket-Key: " + KEY,
             b"Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(b"Origin: " + origin)
    async with stream:
        await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1])


async def test_foreign_origin_gets_403_and_own_origins_pass(server: Server) -> None:
    port = server.port
    async with live_stream(server) as live:
        for foreign in (b"http://evil.example", b"http://127.0.0.1:1", b"null",
                        f"https://127.0.0.1:{port}.evil.example".encode(), b"\xff",
                        b"http://127.0.0.1:%d/path" % port, b"garbage"):
            assert await upgrade(port, foreign) == 403, foreign
        assert server.sessions == 2  # only the live stream's
        for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}",
                    f"HTTP://LOCALHOST:{port}", f"https://127.0.0.1:{port}"):
            assert await upgrade(port, own.encode()) == 101, own
        assert await upgrade(port, None) == 101  # not a browser
    live.assert_intact()
    assert server.health()["refused"]["origin"] == 7


@pytest.mark.parametrize("config_overrides", [{
    "allowed_origins": ["https://app.example.com", "http://127.0.0.1:8443"]}])
async def test_configured_origins(server: Server) -> None:
    assert await upgrade(server.port, b"https://app.example.com") == 101
    assert await upgrade(server.port, b"https://app.example.com:443") == 101
    assert await upgrade(server.port, b"http://127.0.0.1:8443") == 101
    assert await upgrade(server.port, b"http://app.example.com") == 403
    assert await upgrade(server.port, f"http://127.0.0.1:{server.port}".encode()) == 403


@pytest.mark.parametrize("config_overrides", [{"allowed_origins": ["*"]}])
async def test_any_origin(server: Server) -> None:
    assert await upgrade(server.port, b"http://evil.example") == 101


def cfg(**kw: Any) -> Config:
    return load_config(overrides={"auth_secret": "s" * 32, **kw})


def test_own_origins() -> None:
    assert own_origins(cfg(), 8080) == [
        "http://127.0.0.1:8080", "https://127.0.0.1:8080",
        "http://localhost:8080", "https://localhost:8080"]
    assert own_origins(cfg(host="0.0.0.0", announced_ip="Sfu.Example.com."), 443) == [
        "http://sfu.example.com:443", "https://sfu.example.com", "http://sfu.example.com"]
    assert own_origins(cfg(host="10.0.0.5", announced_ip="203.0.113.7"), 8080) == [
        "http://10.0.0.5:8080", "https://10.0.0.5:8080", "http://203.0.113.7:8080",
        "https://203.0.113.7:8080", "https://203.0.113.7", "http://203.0.113.7"]
    assert own_origins(cfg(host="::1"), 80) == [
        "http://[::1]", "https://[::1]:80", "http://localhost", "https://localhost:80"]


@pytest.mark.parametrize("bad", ["example.com", "ftp://x", "http://x/path", "http://x?q",
                                 "http://user@x", "http://x:99999"])
def test_allowed_origins_are_validated(bad: str) -> None:
    from pysfu.config import ConfigError

    with pytest.raises(ConfigError, match="allowed_origins"):
        load_config(overrides={"allowed_origins": [bad]})
    with pytest.raises(ConfigError, match="allowed_origins"):
        load_config(env={"PYSFU_ALLOWED_ORIGINS": f"https://ok.example,{bad}"})


def test_allowed_origins_from_env_and_file(tmp_path: Any) -> None:
    cfg = load_config(env={"PYSFU_ALLOWED_ORIGINS": "https://A.example, http://b.example:8080"})
    assert cfg.allowed_origins == ["https://a.example", "http://b.example:8080"]
    file = tmp_path / "c.toml"
    file.write_text('allowed_origins = ["https://a.example:443"]\n')
    assert load_config(file).allowed_origins == ["https://a.example"]
