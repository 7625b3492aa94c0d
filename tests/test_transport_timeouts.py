"""Transport lifetimes bounded by time: a connected transport must finish ICE+DTLS within
dtls_timeout; a finished one is not affected by it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from pysfu.server import Server
from pysfu.testing.webrtc_peer import WebRtcPeer

ROOM = "timeouts"
EMPTY = {"transports": 0, "producers": 0, "consumers": 0, "streams": 0, "tuples": 0,
         "tcp_connections": 0}


@pytest.mark.parametrize("config_overrides", [{"dtls_timeout": 0.6}])
async def test_connect_without_handshake_times_out(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "h")
        transport = await c.create_transport(ROOM, "send")
        peer = WebRtcPeer(transport)
        await peer.bind()
        await c.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
        # ICE succeeds, but the peer never starts DTLS.
        assert await peer.ice_check() is not None
        _, note = await c.next_notification("transportClosed", timeout=5)
        assert note == {"transportId": transport["id"], "reason": "connect_timeout"}
        assert server.ctx.metrics.dtls_handshakes == {"timeout": 1}  # for /metrics
        assert server.media.counts() == EMPTY
        assert server.rooms.get(ROOM).snapshot()["transports"] == 0
        peer.close()


@pytest.mark.parametrize("config_overrides", [{"dtls_timeout": 0.6}])
async def test_unconnected_transport_is_kept_and_finished_one_survives(server: Server,
                                                                       client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "h")
        # Created but not yet connected (a viewer waiting for a host): no deadline runs.
        idle = await c.create_transport(ROOM, "recv")
        transport = await c.create_transport(ROOM, "send")
        peer = WebRtcPeer(transport)
        await peer.bind()
        await c.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
        await peer.connect()
        # Well past dtls_timeout: neither transport is closed.
        with pytest.raises(trio.TooSlowError):
            await c.next_notification("transportClosed", timeout=1.5)
        assert server.media.counts()["transports"] == 2
        ids = set(server.rooms.get(ROOM).transports)
        assert ids == {idle["id"], transport["id"]}
        peer.close()
