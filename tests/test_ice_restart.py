"""ICE restart over real UDP on loopback: ``restartIce`` gives a transport fresh credentials
(the engine refuses the old ones from then on) while the DTLS session, SRTP keys, producers
and consumers stay, and media keeps going to the proven tuple."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu.client import RequestFailed
from pysfu.server import Server
from pysfu.testing.media_room import (  # noqa: F401  (host: fixture)
    ROOM,
    add_viewer,
    host,
    send_frames,
)


def _integrity_drops(server: Server) -> int:
    return int(server.media.drops().get("stun_integrity", 0))


async def test_old_credentials_refused_new_ones_answered(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    host_client, host_peer, _producer_id = host
    old = dict(host_peer.ice)
    # The answer: iceRestarted {transportId, iceParameters} (mediasoup's IceParameters).
    event, answer = await host_client.request_answer(
        "restartIce", {"roomId": ROOM, "transportId": host_peer.transport["id"]})
    assert event == "iceRestarted" and answer["transportId"] == host_peer.transport["id"]
    params = answer["iceParameters"]
    assert set(params) == {"usernameFragment", "password", "iceLite"}
    assert params["iceLite"] is True
    assert params["usernameFragment"] != old["usernameFragment"]
    assert params["password"] != old["password"]
    before = _integrity_drops(server)
    # The old credentials: dropped in the engine (this tuple's failed check), no answer.
    assert await host_peer.ice_check(timeout=0.5) is None
    assert _integrity_drops(server) == before + 1
    # The new ufrag with the old password: refused as well.
    host_peer.ice = params
    assert await host_peer.ice_check(password=old["password"], timeout=0.5) is None
    assert _integrity_drops(server) == before + 2
    # The new credentials: a success response.
    response = await host_peer.ice_check()
    assert response is not None and response[:2] == b"\x01\x01"
    # A second restart: the credentials of the first are refused in turn.
    again = await host_client.restart_ice(ROOM, host_peer.transport["id"])
    assert again["usernameFragment"] != params["usernameFragment"]
    assert await host_peer.ice_check(timeout=0.5) is None
    host_peer.ice = again
    response = await host_peer.ice_check()
    assert response is not None and response[:2] == b"\x01\x01"


async def test_viewer_keeps_every_packet_through_a_restart(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        await trio.sleep(0.1)
        dtls = _server_dtls(server, viewer.peer.transport["id"])
        sent = 150
        got: list[int] = []
        params: dict[str, Any] = {}

        async def receive() -> None:
            while len(got) < sent:
                packet = await viewer.peer.recv_rtp(timeout=3)
                assert packet is not None, f"{len(got)} of {sent} packets arrived"
                got.append(packet.seq)

        async def restart() -> None:
            await trio.sleep(0.1)  # mid-stream
            params.update(await viewer.client.restart_ice(ROOM, viewer.peer.transport["id"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            nursery.start_soon(restart)
            await send_frames(host_peer, 1, sent)
        assert params, "restartIce answered"
        assert got == [(got[0] + i) & 0xFFFF for i in range(sent)]
        # The peer moves to the new credentials (same address, nominated again): media and
        # its SRTP session (no new DTLS handshake) carry on.
        viewer.peer.ice = params
        response = await viewer.peer.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
        await send_frames(host_peer, 1 + sent, 20, keyframe_first=False)
        more = [await viewer.peer.recv_rtp(timeout=3) for _ in range(20)]
        assert all(more), more
        assert [p.seq for p in more if p is not None] == [
            (got[-1] + 1 + i) & 0xFFFF for i in range(20)]
        assert _server_dtls(server, viewer.peer.transport["id"]) is dtls
        # The producer is the same one.
        assert [p["id"] for p in await viewer.client.get_producers(ROOM)] == [producer_id]


def _server_dtls(server: Server, transport_id: str) -> object:
    """The server's DTLS session of a transport (the same object: no new handshake)."""
    assert server.rooms is not None
    room = server.rooms.get(ROOM)
    assert room is not None
    dtls = room.transports[transport_id].dtls
    assert dtls is not None
    return dtls


async def test_restart_of_another_peers_transport_is_forbidden(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    _host_client, host_peer, producer_id = host
    async with AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        with pytest.raises(RequestFailed) as info:
            await viewer.client.restart_ice(ROOM, host_peer.transport["id"])
        assert info.value.code == "forbidden"
        with pytest.raises(RequestFailed) as info:
            await viewer.client.restart_ice(ROOM, "no-such-transport")
        assert info.value.code not in ("forbidden", "internal_error")
        # The host's credentials are unchanged: its consent checks are still answered.
        response = await host_peer.ice_check()
        assert response is not None and response[:2] == b"\x01\x01"
