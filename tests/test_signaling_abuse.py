"""Signaling abuse: a flooding peer is rate-limited while another peer's requests stay quick;
per-room limits hold. (Per-peer, room-count and oversized-frame limits are tested in
test_signaling_bad_input.py.)"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from contextlib import suppress
from typing import Any

import pytest
import trio
import trio_websocket

from pysfu.client import RequestFailed
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps, opus_producer, vp8_producer

ROOM = "abuse"
FLOOD_MAX = 200_000
CALM = 100


# The flooder reconnects from the same address as the calm peer: the per-address budgets
# (shared by all connections of 127.0.0.1) are raised so that this measures the
# per-connection limit; tests/test_access_limits.py has the flood across addresses.
@pytest.mark.parametrize("config_overrides", [{
    "requests_per_second_per_address": 1e6, "request_burst_per_address": 1_000_000,
    "connections_per_second_per_address": 1e6, "connection_burst_per_address": 1_000_000}])
async def test_flood_is_rate_limited_and_others_keep_low_latency(server: Server,
                                                                 client: Any) -> None:
    answers: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    latencies: list[float] = []
    sent = 0
    calm_done = trio.Event()
    url = f"ws://127.0.0.1:{server.port}/ws"
    frame = json.dumps({"id": 0, "event": "getRouterRtpCapabilities", "data": {"roomId": ROOM}})

    async def flood_once() -> None:
        """One connection sending as fast as the socket takes it (reading answers as they
        come) until the calm peer is done or the server closes it."""
        nonlocal sent
        async with trio_websocket.open_websocket_url(url) as ws:
            async def reader() -> None:
                with suppress(trio_websocket.ConnectionClosed):
                    while True:
                        msg = json.loads(await ws.get_message())
                        code = msg["data"].get("code", "ok") if msg["event"] == "error" else "ok"
                        answers[code] += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                with suppress(trio_websocket.ConnectionClosed):
                    while not calm_done.is_set() and sent < FLOOD_MAX:
                        await ws.send_message(frame)
                        sent += 1
                    await ws.aclose()
                nursery.cancel_scope.cancel()
            if ws.closed is not None:
                closes[f"{ws.closed.code} {ws.closed.reason}"] += 1

    async def flooder() -> None:
        # A flooder the server disconnects (it sends faster than it reads) comes back.
        while not calm_done.is_set() and sent < FLOOD_MAX:
            with suppress(trio_websocket.HandshakeError, OSError):
                await flood_once()

    async with client() as calm:
        await calm.join(ROOM, "viewer", "calm")
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flooder)
                await trio.sleep(0.05)  # the flood is under way
                for _ in range(CALM):
                    t0 = time.perf_counter()
                    await calm.router_rtp_capabilities(ROOM)
                    latencies.append(time.perf_counter() - t0)
                    await trio.sleep(0.025)  # 40 requests/s: within the default limit (50/s)
                calm_done.set()
    latencies.sort()
    median = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nflood: {sent} requests over {sum(closes.values())} connections, answers read "
          f"{dict(answers)}, closes {dict(closes)}; the other peer's {CALM} requests: "
          f"median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert answers["rate_limited"] >= 1000
    assert set(answers) <= {"ok", "rate_limited"}
    # Each connection gets at most its burst plus the refill (2.5 s x 50/s) answered "ok".
    cfg = server.ctx.config
    per_connection = cfg.request_burst + cfg.requests_per_second * 10
    assert answers["ok"] <= sum(closes.values()) * per_connection
    # The calm peer was never limited (RequestFailed would have been raised) and stayed quick:
    # a sanity bound only, not a speed test.
    assert p99 < 1.0


@pytest.mark.parametrize("config_overrides", [{"max_peers_per_room": 3,
                                                "max_consumers_per_peer": 1}])
async def test_peers_per_room_and_consumers_per_peer(server: Server, client: Any) -> None:
    async with client() as host, client() as v1, client() as v2, client() as v3, \
            client() as other:
        await host.join(ROOM, "host", "h")
        send = await host.create_transport(ROOM, "send")
        producer = await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        audio = await host.produce(ROOM, send["id"], "audio", opus_producer(mid="1"))
        await v1.join(ROOM, "viewer", "v1")
        await v2.join(ROOM, "viewer", "v2")
        with pytest.raises(RequestFailed) as err:
            await v3.join(ROOM, "viewer", "v3")
        assert err.value.code == "limit_exceeded"
        # Another room is not affected by this one being full.
        await other.join("elsewhere", "host", "o")
        recv = await v1.create_transport(ROOM, "recv")
        caps = device_caps(await v1.router_rtp_capabilities(ROOM))
        await v1.consume(ROOM, recv["id"], producer, caps)
        with pytest.raises(RequestFailed) as err:
            await v1.consume(ROOM, recv["id"], audio, caps)
        assert err.value.code == "limit_exceeded"
        assert server.media.counts()["consumers"] == 1
        # A peer leaving frees its place.
        await v2.leave(ROOM)
        await v3.join(ROOM, "viewer", "v3")
