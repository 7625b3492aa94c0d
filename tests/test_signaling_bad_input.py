"""Bad input of every kind gets a clear error; the server, the room and other peers go on."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from pysfu.client import RequestFailed, SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import vp8_producer

ROOM = "r"


async def answer(c: SignalingClient, raw: str | bytes) -> dict[str, Any]:
    """Send a raw frame and wait for the error answer (which has no id we can correlate)."""
    await c.send_raw(raw)
    with trio.fail_after(5):
        text = await c.ws.get_message()
    return json.loads(text)


@pytest.fixture
async def raw(server: Server) -> Any:
    """A bare WebSocket (no client reader task), for frames the client would never send."""
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}/ws") as ws:
        yield ws


async def send_and_read(ws: Any, frame: str | bytes) -> dict[str, Any]:
    await ws.send_message(frame)
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"text"', "bad_request"),
        ('{"id": 1}', "bad_request"),
        ('{"id": {"x": 1}, "event": "join"}', "bad_request"),
        ('{"id": 1, "event": "fly", "data": {}}', "unknown_event"),
        ('{"id": 1, "event": "join", "data": []}', "invalid_field"),
        ('{"id": 1, "event": "join", "data": {"roomId": "r"}}', "invalid_field"),
        ('{"id": 1, "event": "join", "data": {"roomId": 5, "role": "host", "peerId": "p"}}',
         "invalid_field"),
        ('{"id": 1, "event": "join", "data": {"roomId": "r", "role": "king", "peerId": "p"}}',
         "invalid_field"),
        ('{"id": 1, "event": "join", "data": {"roomId": "../../etc", "role": "host", '
         '"peerId": "p"}}', "invalid_field"),
        ('{"id": 1, "event": "getRouterRtpCapabilities", "data": {"roomId": ""}}',
         "invalid_field"),
        ('{"id": 1, "event": "createTransport", "data": {"roomId": "r", "direction": "up"}}',
         "not_joined"),
        (b"\xff\xfe binary", "bad_request"),
    ],
)
async def test_malformed_requests_get_error_answers(raw: Any, frame: str, code: str) -> None:
    msg = await send_and_read(raw, frame)
    assert msg["event"] == "error"
    assert msg["data"]["code"] == code
    assert msg["data"]["message"]
    # The connection is still usable afterwards.
    ok = await send_and_read(raw, '{"id": 9, "event": "getRouterRtpCapabilities", '
                                  '"data": {"roomId": "r"}}')
    assert ok["id"] == 9 and ok["event"] == "routerRtpCapabilities"


async def test_error_answer_echoes_request_id(raw: Any) -> None:
    msg = await send_and_read(raw, '{"id": "abc", "event": "nope"}')
    assert msg == {"id": "abc", "event": "error",
                   "data": {"code": "unknown_event", "message": "unknown event 'nope'",
                            "request": "nope"}}


async def test_mistyped_rtp_parameters(server: Server, host: SignalingClient) -> None:
    await host.join(ROOM, "host", "h")
    send = await host.create_transport(ROOM, "send")
    variants: list[Any] = ["x", [], {"codecs": "x"}, {"codecs": [{"mimeType": 5}]}]
    p = vp8_producer()
    p["encodings"][0]["ssrc"] = "1234"
    variants.append(p)
    for params in variants:
        with pytest.raises(RequestFailed) as err:
            await host.request("produce", {"roomId": ROOM, "transportId": send["id"],
                                           "kind": "video", "rtpParameters": params})
        assert err.value.code in ("invalid_field", "invalid_rtp_parameters"), params
    # The host's transport still works.
    await host.produce(ROOM, send["id"], "video", vp8_producer())


@pytest.mark.parametrize("config_overrides", [{"max_message_size": 4096}])
async def test_oversized_frame_closes_only_that_socket(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "h")
        await viewer.join(ROOM, "viewer", "v")
        await viewer.send_raw("x" * 10_000)
        with trio.fail_after(5):
            await viewer.closed.wait()
        assert viewer.ws.closed.code == 1009  # message too big
        # The host and the room carry on.
        await host.create_transport(ROOM, "send")
        assert server.rooms.get(ROOM) is not None


@pytest.mark.parametrize("config_overrides", [{"max_transports_per_peer": 2,
                                                "max_producers_per_peer": 1,
                                                "max_consumers_per_peer": 1}])
async def test_per_peer_limits(server: Server, client: Any) -> None:
    async with client() as host:
        await host.join(ROOM, "host", "h")
        send = await host.create_transport(ROOM, "send")
        await host.create_transport(ROOM, "recv")
        with pytest.raises(RequestFailed) as err:
            await host.create_transport(ROOM, "recv")
        assert err.value.code == "limit_exceeded"
        await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        with pytest.raises(RequestFailed) as err:
            await host.produce(ROOM, send["id"], "video", vp8_producer(mid="1"))
        assert err.value.code == "limit_exceeded"


@pytest.mark.parametrize("config_overrides", [{"max_rooms": 2}])
async def test_room_limit(server: Server, client: Any) -> None:
    async with client() as a, client() as b, client() as c:
        await a.join("one", "host", "a")
        await b.join("two", "host", "b")
        with pytest.raises(RequestFailed) as err:
            await c.join("three", "host", "c")
        assert err.value.code == "limit_exceeded"
        await a.leave("one")
        await c.join("three", "host", "c")  # freed by the closed room


@pytest.mark.parametrize("config_overrides", [{"requests_per_second": 5.0, "request_burst": 10}])
async def test_flooding_peer_is_rate_limited_others_are_not(server: Server, client: Any):
    async with client() as flooder, client() as calm:
        codes = []
        for _ in range(30):
            try:
                await flooder.router_rtp_capabilities(ROOM)
                codes.append("ok")
            except RequestFailed as exc:
                codes.append(exc.code)
        assert codes[:10] == ["ok"] * 10
        assert codes.count("rate_limited") >= 15
        with trio.fail_after(1):
            await calm.router_rtp_capabilities(ROOM)
