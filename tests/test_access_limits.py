"""Limits per client address (issue 13), against a real server on loopback: 127.0.0.1 plays
the abusive address, 127.0.0.2 a neighbour who must not notice.

- one address over its connection cap (the default, 32) is refused while 127.0.0.2 connects
  and streams normally;
- new connections per second per address;
- a reconnecting flooder gets no fresh request budget (the address's bucket is shared);
- DTLS handshakes in progress per address and in total;
- unit checks of the bookkeeping (IPv6 /64 keys, state freed, refusals logged at a bounded
  rate).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio_websocket

from pysfu import errors
from pysfu.client import RequestFailed, SignalingClient, connect
from pysfu.config import load_config
from pysfu.limits import AddressLimits, Refusals, address_key
from pysfu.server import Server
from pysfu.testing.live_stream import live_stream

ROOM = "limits"
FINGERPRINT = {"role": "client", "fingerprints": [
    {"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}]}


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


REFUSED = b"HTTP/1.1 503 "
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def http_answer(port: int, local_host: str,
                      request: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    """``request`` from ``local_host``: the answer (a refused connection's is a 503), or b""
    when the connection was closed unanswered. For an upgrade, what arrives within a
    second."""
    sock = trio.socket.socket()
    await sock.bind((local_host, 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    try:
        await stream.send_all(request)
        if request.startswith(b"GET /ws"):
            with trio.move_on_after(1):
                return await stream.receive_some(65536)
            return b""
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
        return data
    except (trio.BrokenResourceError, ConnectionResetError):
        return b""
    finally:
        await stream.aclose()


async def test_connection_cap_refuses_one_address_not_its_neighbour(server: Server) -> None:
    cap = server.config.max_connections_per_address
    assert cap == 32  # the real default
    url = ws_url(server)
    async with trio.open_nursery() as nursery:
        opened: list[SignalingClient] = []
        release = trio.Event()

        async def hold() -> None:
            async with connect(url) as c:
                await c.join(ROOM, "viewer", f"v{len(opened)}-{id(c)}")
                opened.append(c)
                await release.wait()

        for _ in range(cap):
            nursery.start_soon(hold)
        with trio.fail_after(10):
            while len(opened) < cap:
                await trio.sleep(0.01)
        # The 33rd connection of 127.0.0.1 is refused with a 503, whatever it asks ...
        assert (await http_answer(server.port, "127.0.0.1")).startswith(REFUSED)
        assert (await http_answer(server.port, "127.0.0.1", UPGRADE)).startswith(REFUSED)
        # ... and the client library fails at once with that status (no handshake wait).
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with connect(url):
                pass
        assert info.value.status_code == 503
        # ... while 127.0.0.2 connects and streams normally.
        async with live_stream(server, local_host="127.0.0.2") as live:
            assert (await http_answer(server.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
            assert (await http_answer(server.port, "127.0.0.2", UPGRADE)).startswith(
                b"HTTP/1.1 101")
            # The held connections still work.
            await opened[0].router_rtp_capabilities(ROOM)
        summary = live.assert_intact()
        refused = server.health()["refused"]
        assert refused["connections_per_address"] >= 2, refused
        release.set()
    # Closed connections free their places.
    with trio.fail_after(5):
        while (answer := await http_answer(server.port, "127.0.0.1")).startswith(REFUSED):
            await trio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200")
    print(f"\nconnection cap {cap}: refused {refused}; live stream from 127.0.0.2 {summary}")


@pytest.mark.parametrize("config_overrides", [{"connections_per_second_per_address": 5.0,
                                                "connection_burst_per_address": 10}])
async def test_new_connections_per_second(server: Server) -> None:
    answered = refused = 0
    t0 = trio.current_time()
    for _ in range(40):
        answer = await http_answer(server.port, "127.0.0.1")
        if answer.startswith(b"HTTP/1.1 200"):
            answered += 1
        else:
            assert answer.startswith(REFUSED), answer
            refused += 1
    elapsed = trio.current_time() - t0
    # The burst, plus what 5/s refills while we try.
    assert 10 <= answered <= 10 + 5 * elapsed + 1, (answered, elapsed)
    assert refused >= 40 - (10 + 5 * elapsed + 1)
    # The neighbour is not affected.
    for _ in range(10):
        assert (await http_answer(server.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
    assert server.health()["refused"]["new_connections_per_address"] == refused
    print(f"\n40 connections in {elapsed:.2f} s: {answered} answered, {refused} refused")


@pytest.mark.parametrize("config_overrides", [{
    "requests_per_second": 1.0, "request_burst": 15,
    "requests_per_second_per_address": 1.0, "request_burst_per_address": 20}])
async def test_a_reconnecting_flooder_gets_no_fresh_budget(server: Server) -> None:
    """Each new connection has a fresh bucket of its own (15), but its address's (20) is the
    one it drained before: after the first connection, reconnecting buys ~5 requests, not
    15 each time."""
    url = ws_url(server)

    async def flood(local_host: str, n: int = 30) -> int:
        ok = 0
        async with connect(url, local_host=local_host) as c:
            for _ in range(n):
                try:
                    await c.router_rtp_capabilities(ROOM)
                    ok += 1
                except RequestFailed as exc:
                    assert exc.code == errors.RATE_LIMITED
        return ok

    t0 = trio.current_time()
    first = await flood("127.0.0.1")
    second = await flood("127.0.0.1")
    third = await flood("127.0.0.1")
    elapsed = trio.current_time() - t0
    refill = int(elapsed * 1.0) + 1
    assert 15 <= first <= 15 + refill, first  # its own bucket decides
    assert second <= 5 + refill, second  # what the address has left, not a fresh 15
    assert third <= refill, third
    assert first + second + third <= 20 + refill
    # The neighbour has its full budget.
    assert await flood("127.0.0.2", 15) == 15
    print(f"\nflooder over {elapsed:.2f} s: {first}, {second}, {third} answered on three "
          f"connections (a fresh budget would be 15 each); neighbour 15 of 15")


@pytest.mark.parametrize("config_overrides", [{"max_dtls_handshakes_per_address": 2,
                                                "max_dtls_handshakes": 3}])
async def test_dtls_handshakes_in_progress(server: Server) -> None:
    url = ws_url(server)
    limits = server.ctx.limits
    assert limits is not None

    async def transports(c: SignalingClient, room: str, n: int) -> list[str]:
        await c.join(room, "host", "h")
        return [(await c.create_transport(room, "send"))["id"] for _ in range(n)]

    async with connect(url) as a, connect(url, local_host="127.0.0.2") as b:
        ta = await transports(a, "room-a", 3)
        tb = await transports(b, "room-b", 2)
        for t in ta[:2]:
            await a.connect_transport("room-a", t, FINGERPRINT)
        with pytest.raises(RequestFailed) as err:  # the address's two are in progress
            await a.connect_transport("room-a", ta[2], FINGERPRINT)
        assert err.value.code == errors.LIMIT_EXCEEDED
        await b.connect_transport("room-b", tb[0], FINGERPRINT)  # another address: fine
        with pytest.raises(RequestFailed) as err:  # but the server's three are in progress
            await b.connect_transport("room-b", tb[1], FINGERPRINT)
        assert err.value.code == errors.LIMIT_EXCEEDED
        assert limits.handshakes == 3
        await a.leave("room-a")  # its transports close: their slots are free
        assert limits.handshakes == 1
        await b.connect_transport("room-b", tb[1], FINGERPRINT)
        refused = server.health()["refused"]
        assert refused["dtls_handshakes_per_address"] == 1 and refused["dtls_handshakes"] == 1
    with trio.fail_after(5):
        while limits.handshakes:
            await trio.sleep(0.02)
    # A completed handshake frees its slot: the live stream's two are done while it runs.
    async with live_stream(server) as live:
        assert limits.handshakes == 0
    live.assert_intact()


def test_address_keys() -> None:
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("?") == "?"


def test_address_state_is_freed_and_bounded() -> None:
    limits = AddressLimits(load_config(overrides={"connections_per_second_per_address": 10.0,
                                                  "connection_burst_per_address": 10}))
    close = limits.open_connection("a", 0.0)
    assert close is not None and len(limits) == 1
    close(0.0)  # its bucket is not full yet (one token used): kept, so reconnects pay
    assert len(limits) == 1
    limits._sweep(1.0)  # refilled a second later: forgotten
    assert len(limits) == 0
    # Many one-off addresses: the table stays bounded by sweeps.
    for i in range(5000):
        done = limits.open_connection(f"10.0.{i // 256}.{i % 256}", float(i) * 10)
        assert done is not None
        done(float(i) * 10)
    assert len(limits) <= 1024


def test_refusals_are_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pysfu.limits")
    refusals = Refusals()
    for i in range(1000):
        refusals.note("connections_per_address", "10.0.0.1", i * 0.001)  # 1000 in 1 s
    refusals.note("connections_per_address", "10.0.0.1", 1.5)
    assert refusals.counts == {"connections_per_address": 1001}
    lines = [r for r in caplog.records if r.getMessage() == "limit.refused"]
    assert len(lines) == 2
    assert lines[1].__dict__["suppressed"] == 999


def test_config_bounds() -> None:
    cfg = load_config()
    assert (cfg.address_request_rate, cfg.address_request_burst) == (200.0, 400)
    cfg = load_config(overrides={"requests_per_second": 5.0, "request_burst": 10})
    assert (cfg.address_request_rate, cfg.address_request_burst) == (20.0, 40)
    cfg = load_config(overrides={"requests_per_second_per_address": 7.0})
    assert cfg.address_request_rate == 7.0


