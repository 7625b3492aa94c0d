"""Admin API (/admin/ on the signaling listener): with and without admin_token, from loopback
and (simulated) not; listing, closing a room, removing a peer, pausing a producer, draining,
each with the notifications peers get; and ``pysfu rooms`` against a running server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio

import pysfu.server
from pysfu.client import RequestFailed, SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import vp8_producer
from pysfu.testing.media_room import HOST_SSRC

TOKEN = "an-admin-token-of-more-than-32-bytes-xyz"


async def admin(server: Server, method: str, path: str,
                token: str | None = None) -> tuple[int, dict[str, Any]]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{length}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head
    return int(head.split()[1]), json.loads(body)


def _from_afar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections seem to come from a non-loopback address."""
    monkeypatch.setattr(pysfu.server, "_peer", lambda stream: ("203.0.113.9", "203.0.113.9:5"))


async def _room(client: Callable[[], Any], nursery: trio.Nursery
                ) -> tuple[SignalingClient, SignalingClient, str]:
    """A host with a VP8 producer and a viewer, in room "r1" (connections kept open)."""
    ready = trio.Event()
    clients: list[SignalingClient] = []

    async def hold() -> None:
        async with client() as host, client() as viewer:
            clients.extend([host, viewer])
            ready.set()
            await trio.sleep_forever()

    nursery.start_soon(hold)
    await ready.wait()
    host, viewer = clients
    await host.join("r1", "host", "host")
    await viewer.join("r1", "viewer", "v1")
    transport = await host.create_transport("r1", "send")
    producer = await host.produce("r1", transport["id"], "video",
                                  vp8_producer(mid="0", ssrc=HOST_SSRC))
    return host, viewer, producer


async def test_loopback_without_token_lists_and_shows_rooms(
        server: Server, client: Any, nursery: trio.Nursery) -> None:
    _, _, producer = await _room(client, nursery)
    status, answer = await admin(server, "GET", "/admin/rooms")
    assert status == 200 and answer["draining"] is False
    [room] = answer["rooms"]
    assert room["id"] == "r1" and room["producers"] == 1 and room["consumers"] == 0
    assert {p["id"]: p["role"] for p in room["peers"]} == {"host": "host", "v1": "viewer"}
    assert "bitrateIn" in room and "bitrateOut" in room
    status, shown = await admin(server, "GET", "/admin/rooms/r1")
    assert status == 200 and shown["peers"][0]["producers"][0]["id"] == producer
    status, answer = await admin(server, "GET", "/admin/rooms/nope")
    assert (status, answer["error"]["code"]) == (404, "room_not_found")
    status, answer = await admin(server, "GET", "/admin/whatever")
    assert (status, answer["error"]["code"]) == (404, "unknown_event")


async def test_without_token_a_non_loopback_client_is_refused(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _from_afar(monkeypatch)
    status, answer = await admin(server, "GET", "/admin/rooms")
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, _ = await admin(server, "POST", "/admin/drain")
    assert status == 403 and not server.draining


@pytest.mark.parametrize("config_overrides", [{"admin_token": TOKEN}])
async def test_with_token_the_bearer_is_required_from_anywhere(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for token in (None, "wrong", TOKEN[:-1]):
        status, answer = await admin(server, "GET", "/admin/rooms", token)
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), token
    assert (await admin(server, "GET", "/admin/rooms", TOKEN))[0] == 200
    _from_afar(monkeypatch)
    assert (await admin(server, "GET", "/admin/rooms", TOKEN))[0] == 200
    assert (await admin(server, "GET", "/admin/rooms"))[0] == 401


async def test_close_a_room(server: Server, client: Any, nursery: trio.Nursery) -> None:
    host, viewer, _ = await _room(client, nursery)
    status, answer = await admin(server, "POST", "/admin/rooms/r1/close?reason=abuse")
    assert status == 200 and answer == {"closed": "r1", "reason": "abuse"}
    for c in (host, viewer):
        with trio.fail_after(2):
            _, data = await c.next_notification("roomClosed")
        assert data == {"roomId": "r1", "reason": "abuse"}
    assert server.rooms is not None and not server.rooms.rooms
    assert (await admin(server, "GET", "/admin/rooms"))[1]["rooms"] == []
    assert server.media.counts()["transports"] == 0
    assert (await admin(server, "GET", "/admin/rooms/r1/close"))[0] == 404  # GET: no action


async def test_remove_a_peer_frees_its_resources(server: Server, client: Any,
                                                 nursery: trio.Nursery) -> None:
    host, viewer, _ = await _room(client, nursery)
    await viewer.create_transport("r1", "recv")
    transports = server.media.counts()["transports"]
    status, _ = await admin(server, "POST", "/admin/rooms/r1/peers/v1/remove?reason=kicked")
    assert status == 200
    with trio.fail_after(2):
        _, data = await viewer.next_notification("peerRemoved")
    assert data == {"roomId": "r1", "peerId": "v1", "reason": "kicked"}
    assert server.media.counts()["transports"] == transports - 1
    [room] = (await admin(server, "GET", "/admin/rooms"))[1]["rooms"]
    assert [p["id"] for p in room["peers"]] == ["host"]
    with pytest.raises(RequestFailed) as err:  # its connection is no longer in the room
        await viewer.create_transport("r1", "recv")
    assert err.value.code == "not_joined"
    status, answer = await admin(server, "POST", "/admin/rooms/r1/peers/v1/remove")
    assert (status, answer["error"]["code"]) == (404, "peer_not_found")


async def test_pause_and_resume_a_producer(server: Server, client: Any,
                                           nursery: trio.Nursery) -> None:
    host, viewer, producer = await _room(client, nursery)
    status, answer = await admin(server, "POST", f"/admin/rooms/r1/producers/{producer}/pause")
    assert status == 200 and answer == {"producerId": producer, "paused": True}
    with trio.fail_after(2):
        assert (await viewer.next_notification("producerPaused"))[1]["producerId"] == producer
        assert (await host.next_notification("producerPaused"))[1]["byAdmin"] is True
    status, answer = await admin(server, "POST", f"/admin/rooms/r1/producers/{producer}/resume")
    assert answer["paused"] is False
    with trio.fail_after(2):
        await viewer.next_notification("producerResumed")
    status, answer = await admin(server, "POST", "/admin/rooms/r1/producers/nope/pause")
    assert (status, answer["error"]["code"]) == (404, "producer_not_found")


async def test_drain_refuses_new_rooms_and_serves_existing_ones(
        server: Server, client: Any, nursery: trio.Nursery) -> None:
    await _room(client, nursery)
    assert (await admin(server, "POST", "/admin/drain"))[1] == {"draining": True}
    status, health = await admin(server, "GET", "/admin/status")
    assert health["status"] == "draining" and health["draining"] is True
    async with client() as late:
        with pytest.raises(RequestFailed) as err:
            await late.join("r2", "host", "h2")
        assert err.value.code == "unavailable"
        assert (await late.join("r1", "viewer", "v2"))["roomId"] == "r1"  # existing room
    assert (await admin(server, "POST", "/admin/undrain"))[1] == {"draining": False}
    async with client() as later:
        assert (await later.join("r2", "host", "h2"))["roomId"] == "r2"


@pytest.mark.parametrize("config_overrides", [{"admin_token": TOKEN}])
async def test_rooms_cli_with_an_admin_token(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}"

    async def cli(*args: str, **env: str) -> trio.CompletedProcess[bytes]:
        return await trio.run_process(
            [sys.executable, "-m", "pysfu", "rooms", "list", "--url", url, *args],
            capture_stdout=True, capture_stderr=True, check=False,
            env={k: v for k, v in {**os.environ, **env}.items() if k != "PYSFU_ADMIN_TOKEN"
                 or "PYSFU_ADMIN_TOKEN" in env})

    refused = await cli()
    assert refused.returncode != 0 and b"unauthorized" in refused.stderr
    assert b"Traceback" not in refused.stderr
    flag = await cli("--admin-token", TOKEN)
    assert flag.returncode == 0, flag.stderr
    assert json.loads(flag.stdout)["rooms"] == []
    from_env = await cli(PYSFU_ADMIN_TOKEN=TOKEN)
    assert from_env.returncode == 0, from_env.stderr


async def test_rooms_cli_against_a_running_server(server: Server, client: Any,
                                                  nursery: trio.Nursery) -> None:
    host, _, _ = await _room(client, nursery)
    env = {**os.environ, "PYSFU_ADMIN_URL": f"http://127.0.0.1:{server.port}"}

    async def cli(*args: str) -> trio.CompletedProcess[bytes]:
        return await trio.run_process([sys.executable, "-m", "pysfu", "rooms", *args],
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      env=env)

    listed = await cli("list")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["rooms"]] == ["r1"]
    shown = await cli("show", "r1", "--url", f"http://127.0.0.1:{server.port}")
    assert json.loads(shown.stdout)["id"] == "r1"
    missing = await cli("show", "nope")
    assert missing.returncode == 1 and b"room_not_found" in missing.stderr
    closed = await cli("close", "r1", "--reason", "maintenance")
    assert closed.returncode == 0
    with trio.fail_after(2):
        assert (await host.next_notification("roomClosed"))[1]["reason"] == "maintenance"
