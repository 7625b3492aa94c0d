"""Join tokens against a real server (issue 13): every bad token gets its code while a live
host -> viewer stream in another room keeps every packet; the peer id is the token's
identity (no takeover with another identity's peer id); 5 failed joins close the connection
(1008); key rotation; ``?token=`` in the URL; rooms stay open without a secret."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import trio
import trio_websocket

from pysfu import errors
from pysfu.auth import create_token
from pysfu.client import RequestFailed, connect, with_token
from pysfu.server import Server
from pysfu.testing.fixtures import vp8_producer
from pysfu.testing.live_stream import live_stream

SECRET = secrets.token_urlsafe(32)
OTHER = secrets.token_urlsafe(32)
OLD, NEW = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
ROOM, ROOM_B = "stage", "backstage"


def token(room: str, identity: str, role: str, *, secret: str = SECRET, **kw: Any) -> str:
    kw.setdefault("now", time.time())
    return create_token(secret, room=room, identity=identity, role=role, **kw)


def live_token(room: str, identity: str, role: str) -> str:
    return token(room, identity, role)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"auth_secret": SECRET}


async def refused(client: Any, room: str, role: str, *, peer_id: str | None = None,
                  tok: str | None = None) -> RequestFailed:
    with pytest.raises(RequestFailed) as err:
        await client.join(room, role, peer_id, token=tok)
    return err.value


async def test_every_token_case_gets_its_code_and_a_live_stream_loses_nothing(
        server: Server, client: Any) -> None:
    now = time.time()
    bad_tokens = {
        "none": None,
        "garbage": "garbage",
        "three dots of garbage": "a.b.c",
        "wrong signature": token(ROOM, "bob", "viewer", secret=OTHER),
        "wrong kid": token(ROOM, "bob", "viewer", kid="unknown"),
        "expired": token(ROOM, "bob", "viewer", now=now - 7200, ttl=60),
        "nbf in the future": token(ROOM, "bob", "viewer", not_before=now + 3600),
    }
    async with live_stream(server, token_for=live_token) as live, client() as alice:
        # The room's host, with its own token; a producer to take over.
        joined = await alice.join(ROOM, "host", token=token(ROOM, "alice", "host"))
        assert joined["peerId"] == "alice"
        send = await alice.create_transport(ROOM, "send")
        producer = await alice.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))

        messages = set()
        for why, tok in bad_tokens.items():
            async with client() as bob:
                err = await refused(bob, ROOM, "viewer", tok=tok)
                assert err.code == errors.UNAUTHORIZED, (why, err)
                messages.add(err.message)
        assert messages == {"invalid or expired token"}  # nothing about why leaks

        forbidden = {
            "viewer token for another room": (ROOM, "viewer",
                                              token(ROOM_B, "bob", "viewer"), None),
            "host token of room A in room B": (ROOM_B, "host",
                                               token(ROOM, "carol", "host"), None),
            "viewer token joining as host": (ROOM_B, "host",
                                             token(ROOM_B, "bob", "viewer"), None),
            "takeover: another identity's peer id": (ROOM, "host",
                                                     token(ROOM, "mallory", "host"), "alice"),
            "takeover: viewer token with the host's peer id": (
                ROOM, "viewer", token(ROOM, "mallory", "viewer"), "alice"),
        }
        for why, (room, role, tok, peer_id) in forbidden.items():
            async with client() as mallory:
                err = await refused(mallory, room, role, tok=tok, peer_id=peer_id)
                assert err.code == errors.FORBIDDEN, (why, err)
        # Mallory's own valid host token for the room: the room already has a host.
        async with client() as mallory:
            err = await refused(mallory, ROOM, "host", tok=token(ROOM, "mallory", "host"))
            assert err.code == errors.FORBIDDEN

        # A viewer token cannot produce (no send transport, no producing on a recv one).
        async with client() as viewer:
            await viewer.join(ROOM, "viewer", token=token(ROOM, "vic", "viewer"))
            with pytest.raises(RequestFailed) as err:
                await viewer.create_transport(ROOM, "send")
            assert err.value.code == errors.FORBIDDEN
            recv = await viewer.create_transport(ROOM, "recv")
            with pytest.raises(RequestFailed) as err:
                await viewer.produce(ROOM, recv["id"], "video", vp8_producer(mid="0"))
            assert err.value.code == errors.FORBIDDEN

        # Nothing was taken over (alice still acts on her producer from her connection)
        # and no failed join created a room.
        room = server.rooms.get(ROOM)
        assert room is not None and producer in room.producers
        assert await alice.get_stats(ROOM, producerId=producer) is not None
        assert ROOM_B not in server.rooms.rooms
    live.assert_intact()


async def test_reconnect_takes_over_only_with_the_same_identity(server: Server,
                                                                client: Any) -> None:
    async with client() as first, client() as viewer:
        await first.join(ROOM, "host", token=token(ROOM, "alice", "host"))
        send = await first.create_transport(ROOM, "send")
        producer = await first.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        await viewer.join(ROOM, "viewer", token=token(ROOM, "vic", "viewer"))
        async with client() as again:
            # Same identity, a fresh token (from the app server): a reconnect.
            joined = await again.join(ROOM, "host", "alice", token=token(ROOM, "alice", "host"))
            assert joined["reconnected"] is True
            _, data = await viewer.next_notification("producerClosed")
            assert data["producerId"] == producer
            # The old connection no longer acts for alice.
            with pytest.raises(RequestFailed) as err:
                await first.create_transport(ROOM, "send")
            assert err.value.code == errors.NOT_JOINED


async def test_five_failed_joins_close_the_connection(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with trio_websocket.open_websocket_url(url) as ws:
        codes = []
        for i in range(5):
            await ws.send_message(json.dumps({"id": i, "event": "join", "data": {
                "roomId": ROOM, "role": "host", "token": f"bad{i}"}}))
            with trio.fail_after(5):
                msg = json.loads(await ws.get_message())
            codes.append((msg["id"], msg["data"]["code"]))
        assert codes == [(i, errors.UNAUTHORIZED) for i in range(5)]
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1008
        assert closed.value.reason.reason == "too many failed joins"
    assert server.rooms.rooms == {}
    assert server.health()["refused"]["failed_joins"] == 1
    # Four failures and then a good token: the connection stays and joins.
    async with connect(url) as c:
        for _ in range(4):
            await refused(c, ROOM, "host", tok="bad")
        await c.join(ROOM, "host", token=token(ROOM, "alice", "host"))


async def test_token_in_the_url(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    assert with_token(url + "?a=1", "x.y") == url + "?a=1&token=x.y"
    async with connect(url, token=token("*", "alice", "host")) as c:
        joined = await c.join(ROOM, "host")
        assert (joined["peerId"], joined["role"]) == ("alice", "host")
    # A token in join wins over the URL's.
    async with connect(url, token=token(ROOM, "vic", "viewer")) as c:
        joined = await c.join(ROOM_B, "viewer", token=token(ROOM_B, "val", "viewer"))
        assert joined["peerId"] == "val"
    # From another local address too (the client puts the query in the request target).
    async with connect(url, token=token(ROOM_B, "walt", "viewer"), local_host="127.0.0.2") as c:
        assert (await c.join(ROOM_B, "viewer"))["peerId"] == "walt"
    async with connect(url, token="garbage") as c:
        assert (await refused(c, ROOM, "host")).code == errors.UNAUTHORIZED


@pytest.mark.parametrize("config_overrides", [{"auth_keys": {"old": OLD, "new": NEW}}])
async def test_key_rotation(server: Server, client: Any) -> None:
    """While both keys are configured, tokens signed with either work; a token naming one
    key but signed with the other, or naming none, does not."""
    async with live_stream(server, token_for=lambda r, i, role: token(
            r, i, role, secret=NEW, kid="new")) as live:
        for secret, kid, ok in ((OLD, "old", True), (NEW, "new", True), (OLD, "new", False),
                                (NEW, None, False), (SECRET, "gone", False)):
            async with client() as c:
                tok = token(ROOM, "vic", "viewer", secret=secret, kid=kid)
                if ok:
                    assert (await c.join(ROOM, "viewer", token=tok))["peerId"] == "vic"
                else:
                    assert (await refused(c, ROOM, "viewer", tok=tok)).code == \
                        errors.UNAUTHORIZED
    live.assert_intact()


@pytest.mark.parametrize("config_overrides", [{}])
async def test_without_a_secret_rooms_are_open(server: Server, client: Any) -> None:
    assert server.health()["open_rooms"] is True
    async with client() as c:
        joined = await c.join(ROOM, "host", "anyone")
        assert joined["peerId"] == "anyone"
    async with client() as c:  # open rooms: the client names itself
        assert (await refused(c, ROOM, "viewer")).code == errors.INVALID_FIELD


async def test_health_says_rooms_are_not_open(server: Server) -> None:
    assert server.health()["open_rooms"] is False


async def test_a_refused_join_leaves_nothing(server: Server, client: Any) -> None:
    """A refused join leaves no peer, no room and the connection usable."""
    async with client() as c:
        await refused(c, ROOM, "host", tok=token(ROOM, "a", "host", now=time.time() - 7200))
        assert server.rooms.rooms == {}
        with pytest.raises(RequestFailed) as err:
            await c.create_transport(ROOM, "send")
        assert err.value.code == errors.NOT_JOINED
        await c.join(ROOM, "host", token=token(ROOM, "a", "host"))
        with pytest.raises(RequestFailed) as err:
            await c.join(ROOM, "host", token=token(ROOM, "a", "host"))
        assert err.value.code == errors.ALREADY_JOINED
