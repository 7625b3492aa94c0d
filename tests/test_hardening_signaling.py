"""Issue 10's signaling and room findings, each replayed against a real server while a live
host -> viewer stream runs in another room (pysfu/testing/live_stream.py): the server stays up, the
stream loses nothing, and the attack gets a clear error or a close.

Finding numbers refer to the hardening issue: 4 (deep JSON), 7 (one producer consumed many
times by one peer), 8 (room churn by hosts that hang up), 11 (rate limit after parsing),
12 (ids with a trailing newline, 500 encodings), plus the join deadline and the room's crash
boundary.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from pysfu import errors
from pysfu import room as room_module
from pysfu.client import RequestFailed, connect
from pysfu.server import Server
from pysfu.signaling import schema, session
from pysfu.testing.fixtures import device_caps, opus_producer, vp8_producer
from pysfu.testing.live_stream import live_stream

ROOM = "hardening"


async def produce_video(client: Any, room: str = ROOM, **encoding: Any) -> str:
    await client.join(room, "host", "h")
    send = await client.create_transport(room, "send")
    params = vp8_producer(mid="0")
    params["encodings"][0].update(encoding)
    return await client.produce(room, send["id"], "video", params)


async def test_deep_json_gets_bad_request_and_the_server_stays_up(server: Server,
                                                                  client: Any) -> None:
    """Finding 4: 30,000 '[' then 30,000 ']' (60 KB, under the frame limit)."""
    async with live_stream(server) as live, raw_ws(server) as ws:
        await ws.send_message("[" * 30_000 + "]" * 30_000)
        msg = await next_message(ws)
        assert msg["event"] == "error" and msg["data"]["code"] == errors.BAD_REQUEST
        # The same depth inside a request with an id is answered with that id.
        deep = '{"id": 7, "event": "join", "data": {"x": ' + "[" * 40 + "]" * 40 + "}}"
        await ws.send_message(deep)
        msg = await next_message(ws)
        assert (msg["id"], msg["data"]["code"]) == (7, errors.BAD_REQUEST)
        assert "deeper" in msg["data"]["message"]
        # The connection still works.
        await ws.send_message(json.dumps({"id": 8, "event": "getRouterRtpCapabilities",
                                          "data": {"roomId": ROOM}}))
        msg = await next_message(ws)
        assert (msg["id"], msg["event"]) == (8, "routerRtpCapabilities")
    live.assert_intact()


def raw_ws(server: Server) -> Any:
    """A WebSocket without the client library (answers without a known id are seen too)."""
    return trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}/ws",
                                             max_message_size=1 << 20)


async def next_message(ws: Any) -> dict[str, Any]:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


def test_json_depth_check() -> None:
    assert not schema.json_depth_exceeds('{"a": [[[1]]], "b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    assert not schema.json_depth_exceeds("[" * 32 + "]" * 32)
    assert schema.json_depth_exceeds("[" * 33 + "]" * 33)
    # Brackets inside strings (escaped quotes too) do not count.
    text = json.dumps({"s": '"' + "[" * 100})
    assert not schema.json_depth_exceeds(text)
    assert schema.peek_request_id('{"id": 12, "event": "x"}') == 12
    assert schema.peek_request_id('{"event": "x", "id": "a-b"}') == "a-b"
    assert schema.peek_request_id('{"event": "x"}') is None


async def test_rate_limit_comes_before_parsing(server: Server, client: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 11: frames over the rate limit are answered rate_limited (with their id) and
    never parsed, so a flood costs a token check per frame."""
    parsed = 0
    real_parse = session.parse_request

    def counting_parse(text: str | bytes) -> Any:
        nonlocal parsed
        parsed += '"id": "f' in str(text)  # this test's frames, not the live stream's
        return real_parse(text)

    monkeypatch.setattr(session, "parse_request", counting_parse)
    cfg = server.ctx.config
    frames = cfg.request_burst + 400
    async with live_stream(server) as live, raw_ws(server) as ws:
        codes: dict[str, int] = {}
        ids = set()

        async def read() -> None:
            while sum(codes.values()) < frames:
                msg = json.loads(await ws.get_message())
                code = msg["data"]["code"] if msg["event"] == "error" else "ok"
                codes[code] = codes.get(code, 0) + 1
                ids.add(msg["id"])

        t0 = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for i in range(frames):
                    await ws.send_message(json.dumps(
                        {"id": f"f{i}", "event": "getRouterRtpCapabilities",
                         "data": {"roomId": ROOM}}))
        elapsed = trio.current_time() - t0
    live.assert_intact()
    allowed = cfg.request_burst + cfg.requests_per_second * elapsed + 1
    assert codes["rate_limited"] >= frames - allowed
    assert parsed == codes["ok"] <= allowed
    assert ids == {f"f{i}" for i in range(frames)}  # every answer names its request


async def test_room_and_peer_ids_are_matched_whole(server: Server, client: Any) -> None:
    """Finding 12: a room id with a trailing newline (``$`` matched before it). A connection
    per id: one connection gets 5 failed joins, then it is closed (access control)."""
    for bad in ("room\n", "room\r\n", "a" * 65, "", "r m", "röom"):
        async with client() as c:
            with pytest.raises(RequestFailed) as err:
                await c.join(bad, "host", "h")
            assert err.value.code == errors.INVALID_FIELD, bad
            with pytest.raises(RequestFailed) as err:
                await c.join(ROOM, "host", bad)
            assert err.value.code == errors.INVALID_FIELD, bad
        assert server.rooms.rooms == {}


async def test_lists_from_peers_are_capped(server: Server, client: Any) -> None:
    """Finding 12: a producer with 500 encodings; capabilities with 200 codecs."""
    async with live_stream(server) as live, client() as c:
        await c.join(ROOM, "host", "h")
        send = await c.create_transport(ROOM, "send")
        params = vp8_producer(mid="0")
        params["encodings"] = [{"rid": f"r{i}", "dtx": False} for i in range(500)]
        with pytest.raises(RequestFailed) as err:
            await c.produce(ROOM, send["id"], "video", params)
        assert err.value.code == "invalid_rtp_parameters"
        assert "more than 4" in err.value.message
        params["encodings"] = params["encodings"][:5]
        with pytest.raises(RequestFailed):
            await c.produce(ROOM, send["id"], "video", params)
        producer = await c.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        async with client() as v:
            await v.join(ROOM, "viewer", "v")
            recv = await v.create_transport(ROOM, "recv")
            await v.router_rtp_capabilities(ROOM)
            vp8 = {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}
            huge = {"codecs": [vp8] * 200, "headerExtensions": []}
            with pytest.raises(RequestFailed) as err:
                await v.consume(ROOM, recv["id"], producer, huge)
            assert err.value.code == "invalid_rtp_capabilities"
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{"max_consumed_bitrate_per_peer": 5_000_000}])
async def test_one_consumer_per_producer_per_transport(server: Server, client: Any) -> None:
    """Finding 7: one peer consumed the same producer 64 times (64x the stream out). Now one
    consumer per producer per transport, and the peer's other transports count against its
    consumed-bitrate cap."""
    async with live_stream(server) as live, client() as host, client() as v:
        producer = await produce_video(host, maxBitrate=2_000_000)
        await v.join(ROOM, "viewer", "v")
        recv = [await v.create_transport(ROOM, "recv") for _ in range(3)]
        caps = device_caps(await v.router_rtp_capabilities(ROOM))
        first = await v.consume(ROOM, recv[0]["id"], producer, caps)
        with pytest.raises(RequestFailed) as err:
            await v.consume(ROOM, recv[0]["id"], producer, caps)
        assert err.value.code == errors.ALREADY_CONSUMING
        second = await v.consume(ROOM, recv[1]["id"], producer, caps)  # 4 of 5 Mbit/s
        with pytest.raises(RequestFailed) as err:
            await v.consume(ROOM, recv[2]["id"], producer, caps)  # would be 6
        assert err.value.code == errors.LIMIT_EXCEEDED
        room = server.rooms.get(ROOM)
        assert set(room.consumers) == {first["id"], second["id"]}
        # Once a consumer is gone (its transport closed), the peer may consume again.
        room._close_transport(room.transports[recv[0]["id"]])
        await v.consume(ROOM, recv[2]["id"], producer, caps)
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{"max_consumed_bitrate_per_peer": 3_000_000}])
async def test_consumed_bitrate_per_peer_is_capped(server: Server, client: Any) -> None:
    async with client() as host, client() as v:
        video = await produce_video(host, maxBitrate=2_500_000)
        send = next(iter(server.rooms.get(ROOM).transports))
        audio = await host.produce(ROOM, send, "audio", opus_producer(mid="1"))
        await v.join(ROOM, "viewer", "v")
        recv = await v.create_transport(ROOM, "recv")
        caps = device_caps(await v.router_rtp_capabilities(ROOM))
        await v.consume(ROOM, recv["id"], video, caps)  # 2.5 of 3 Mbit/s
        await v.consume(ROOM, recv["id"], audio, caps)  # audio declares nothing, sends nothing
        # A second video of 2.5 Mbit/s would pass the cap.
        video2 = await host.produce(ROOM, send, "video", {
            **vp8_producer(mid="2"),
            "encodings": [{"ssrc": 4242, "maxBitrate": 2_500_000, "dtx": False}]})
        with pytest.raises(RequestFailed) as err:
            await v.consume(ROOM, recv["id"], video2, caps)
        assert err.value.code == errors.LIMIT_EXCEEDED
        assert "bitrate" in err.value.message


@pytest.mark.parametrize("config_overrides", [{"host_grace_period": 30.0}])
async def test_hosts_that_hang_up_before_producing_do_not_hold_rooms(server: Server,
                                                                      client: Any) -> None:
    """Finding 8: join a new room as host and hang up, many times: each room used to live for
    the whole grace period and max_rooms filled. A lone host that never produced takes its
    room with it at once; one that produced keeps the grace period."""
    async with live_stream(server) as live:
        with trio.fail_after(60):
            for i in range(25):
                async with client() as c:
                    await c.join(f"churn-{i}", "host", "h")
                while f"churn-{i}" in server.rooms.rooms:
                    await trio.sleep(0.005)
        assert set(server.rooms.rooms) == {live.room}
        # A host that produced gets its grace period as before.
        async with client() as c:
            await produce_video(c, "kept")
        await trio.sleep(0.3)
        assert "kept" in server.rooms.rooms
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{"max_rooms_per_address_per_minute": 5}])
async def test_rooms_created_per_address_are_limited(server: Server, client: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_module, "_CREATION_WINDOW", 1.0)  # a "minute" of one second
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with client() as keep:
        await keep.join("r0", "viewer", "v")  # held open: joins existing rooms never count
        for i in range(1, 5):
            async with client() as c:
                await c.join(f"r{i}", "viewer", "v")
        async with client() as c:
            await c.join("r0", "viewer", "v2")  # an existing room: no creation
        async with client() as c:
            with pytest.raises(RequestFailed) as err:
                await c.join("r5", "viewer", "v")
            assert err.value.code == errors.RATE_LIMITED
        # Another address is not affected.
        async with connect(url, local_host="127.0.0.2") as other:
            await other.join("r5", "viewer", "v")
        # A window later the address may create rooms again.
        await trio.sleep(1.1)
        async with client() as c:
            await c.join("r6", "viewer", "v")


@pytest.mark.parametrize("config_overrides", [{"join_timeout": 0.5}])
async def test_a_connection_that_does_not_join_is_closed(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with trio_websocket.open_websocket_url(url) as ws:
        with trio.fail_after(3):
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
        assert closed.value.reason.code == 1008
        assert closed.value.reason.reason == "join timeout"
    # One that joins in time stays.
    async with connect(url) as c:
        await c.join(ROOM, "viewer", "v")
        await trio.sleep(0.8)
        await c.router_rtp_capabilities(ROOM)


async def test_a_crashing_room_task_closes_that_room_only(server: Server, client: Any) -> None:
    """The room's nursery is its crash boundary: a bug in one of its tasks closes the room
    (peers told why) and nothing else."""
    async with live_stream(server) as live, client() as c:
        await produce_video(c)
        room = server.rooms.get(ROOM)

        async def bug() -> None:
            raise RuntimeError("a bug in a room task")

        room.nursery.start_soon(bug)
        _, note = await c.next_notification("roomClosed", timeout=3)
        assert note["reason"] == "internal_error"
        await room.finished.wait()
        assert ROOM not in server.rooms.rooms
        assert room.snapshot() == {"peers": 0, "transports": 0, "producers": 0,
                                   "consumers": 0}
        # The engine objects of the crashed room are gone; the live room's are there.
        counts = server.media.counts()
        assert (counts["transports"], counts["producers"], counts["consumers"]) == (2, 1, 1)
        assert live.room in server.rooms.rooms
    live.assert_intact()
