from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from pysfu.client import SignalingClient, connect
from pysfu.config import Config, load_config
from pysfu.server import Server, serve


def test_config(**overrides: Any) -> Config:
    """Loopback, ephemeral ports, short grace period."""
    base = {"port": 0, "rtc_port": 0, "host_grace_period": 0.5, "metrics_port": 0}
    base.update(overrides)
    return load_config(overrides=base)


test_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def media_workers() -> int | None:
    """The server fixture's media workers; None = the setting's default (one per core).
    The media test modules override it with pysfu.testing.media_room.media_workers, which
    runs each of their server tests with 1 and with 2 workers."""
    return None


@pytest.fixture
async def server(nursery: trio.Nursery, config_overrides: dict[str, Any],
                 media_workers: int | None) -> Server:
    overrides = dict(config_overrides)
    if media_workers is not None:
        overrides.setdefault("workers", media_workers)
    return await nursery.start(serve, test_config(**overrides))


@pytest.fixture
def client(server: Server) -> Callable[[], AbstractAsyncContextManager[SignalingClient]]:
    """Factory: ``async with client() as c:`` opens a signaling connection to the server."""

    def open_client() -> AbstractAsyncContextManager[SignalingClient]:
        return connect(f"ws://127.0.0.1:{server.port}/ws")

    return open_client


@pytest.fixture
async def host(client: Callable[[], Any]) -> AsyncIterator[SignalingClient]:
    async with client() as c:
        yield c
