"""Data channels end to end over real UDP, real DTLS and a real SCTP association on both
sides (the test peers use pysfu.testing.data_peer: pyOpenSSL DTLS client + the native
association in the client role): produceData / consumeData, ordering, a 200 KB message,
viewers' data when allowed, limits, ownership, and freeing everything with the room."""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from pysfu import _native, errors
from pysfu.auth import create_token
from pysfu.client import SCTP_CAPABILITIES, RequestFailed, SignalingClient
from pysfu.dtls import split_records
from pysfu.metrics import render
from pysfu.server import Server
from pysfu.testing.data_peer import DataPeer, open_data_peer
from pysfu.testing.webrtc_peer import WebRtcPeer

ROOM = "data"


@asynccontextmanager
async def data_side(client: SignalingClient, direction: str) -> AsyncIterator[DataPeer]:
    peer = await open_data_peer(client, ROOM, direction)
    side = DataPeer(peer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(side.run)
        await side.wait_connected()
        try:
            yield side
        finally:
            nursery.cancel_scope.cancel()
            peer.close()


async def consume(client: SignalingClient, side: DataPeer, producer_id: str) -> int:
    answer = await client.consume_data(ROOM, side.peer.transport["id"], producer_id)
    assert answer["dataProducerId"] == producer_id
    stream: int = answer["sctpStreamParameters"]["streamId"]
    return stream


@dataclass
class OneWay:
    """The host's data producer on stream 0, consumed by one viewer: both associations up."""

    host: SignalingClient
    viewer: SignalingClient
    send: DataPeer  # the host's side
    recv: DataPeer  # the viewer's side
    producer_id: str
    stream: int  # the viewer's stream id for it


@asynccontextmanager
async def host_to_viewer(client: Any) -> AsyncIterator[OneWay]:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "alice")
        await viewer.join(ROOM, "viewer", "bob")
        async with data_side(host, "send") as h, data_side(viewer, "recv") as v:
            producer_id = await host.produce_data(ROOM, h.peer.transport["id"], 0)
            stream = await consume(viewer, v, producer_id)
            yield OneWay(host, viewer, h, v, producer_id, stream)


async def test_create_transport_answers_sctp_parameters(server: Server, client: Any) -> None:
    async with client() as c:
        await c.join(ROOM, "host", "h")
        with_data = await c.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        assert with_data["sctpParameters"] == {
            "port": 5000, "OS": 1024, "MIS": 1024, "maxMessageSize": 262144,
            "maxSendMessageSize": 262144, "maxReceiveMessageSize": 262144}
        without = await c.create_transport(ROOM, "recv")
        assert "sctpParameters" not in without
        with pytest.raises(RequestFailed) as bad:
            await c.create_transport(ROOM, "recv", sctp_capabilities={"numStreams": 5})
        assert bad.value.code == errors.INVALID_FIELD


async def test_host_messages_reach_viewers_in_order_and_intact(server: Server,
                                                               client: Any) -> None:
    async with client() as host, client() as v1, client() as v2:
        await host.join(ROOM, "host", "alice")
        await v1.join(ROOM, "viewer", "bob")
        await v2.join(ROOM, "viewer", "carol")
        async with data_side(host, "send") as h, data_side(v1, "recv") as r1, \
                data_side(v2, "recv") as r2:
            producer_id = await host.produce_data(ROOM, h.peer.transport["id"], 0,
                                                  label="chat", protocol="json")
            _, note = await v1.next_notification("newDataProducer")
            assert note == {"dataProducerId": producer_id, "label": "chat", "protocol": "json",
                            "peerId": "alice", "displayName": "alice"}  # no name: the id
            listed = await v2.get_data_producers(ROOM)
            assert [p["id"] for p in listed] == [producer_id]
            s1 = await consume(v1, r1, producer_id)
            s2 = await consume(v2, r2, producer_id)
            h.open_stream(0)
            big = bytes((i * 7 + (i >> 10)) & 0xFF for i in range(200 * 1024))
            texts = [f"message {i}" for i in range(300)]
            for text in texts[:150]:
                assert h.send(0, text) == "sent"
            assert h.send(0, big) == "sent"
            assert h.send(0, "") == "sent"
            for text in texts[150:]:
                assert h.send(0, text) == "sent"
            want = len(texts) + 2
            for side, stream in ((r1, s1), (r2, s2)):
                got = await side.wait_messages(want, timeout=20)
                assert {m[0] for m in got} == {stream}
                payloads = [m[2] for m in got]
                assert payloads[:150] == texts[:150]
                assert payloads[150] == big  # 200 KB, fragmented and reassembled
                assert payloads[151] == "" and got[151][1] == 56  # empty string PPID
                assert payloads[152:] == texts[150:]
            room = server.rooms.get(ROOM)
            assert room is not None
            assert room.data_producers[producer_id].messages == want
            # The consumers' associations sealed their DTLS records natively (AEAD suite),
            # and the viewers' OpenSSL read every one.
            for side in (r1, r2):
                sctp = room.transports[side.peer.transport["id"]].sctp
                assert sctp is not None and sctp.sealed
                assert sctp.counters()["recordsSealed"] >= want
                assert sctp.counters()["sealFailed"] == 0
            assert room.data_snapshot() == {"dataProducers": 1, "dataConsumers": 2,
                                            "dataRoutes": 1}


@pytest.mark.parametrize("config_overrides", [{"viewer_data_channels": True}])
async def test_viewer_chat_reaches_host_and_other_viewers_when_allowed(server: Server,
                                                                       client: Any) -> None:
    async with client() as host, client() as v1, client() as v2:
        await host.join(ROOM, "host", "alice")
        await v1.join(ROOM, "viewer", "bob")
        await v2.join(ROOM, "viewer", "carol")
        async with data_side(v1, "send") as bob_out, data_side(host, "recv") as host_in, \
                data_side(v2, "recv") as carol_in:
            producer_id = await v1.produce_data(ROOM, bob_out.peer.transport["id"], 1,
                                                label="chat")
            _, note = await host.next_notification("newDataProducer")
            assert note["peerId"] == "bob"
            await consume(host, host_in, producer_id)
            await consume(v2, carol_in, producer_id)
            bob_out.open_stream(1)
            bob_out.send(1, "hi from bob")
            assert (await host_in.wait_messages(1))[0][2] == "hi from bob"
            assert (await carol_in.wait_messages(1))[0][2] == "hi from bob"
            # A viewer still cannot produce media on its data-only send transport.
            with pytest.raises(RequestFailed) as media:
                await v1.produce(ROOM, bob_out.peer.transport["id"], "audio", {})
            assert media.value.code == errors.FORBIDDEN


async def test_viewer_data_refused_when_not_allowed(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "alice")
        await viewer.join(ROOM, "viewer", "bob")
        with pytest.raises(RequestFailed) as refused:
            await viewer.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        assert refused.value.code == errors.FORBIDDEN
        recv = await viewer.create_transport(ROOM, "recv", sctp_capabilities=SCTP_CAPABILITIES)
        with pytest.raises(RequestFailed) as produce:
            await viewer.produce_data(ROOM, recv["id"], 0)
        assert produce.value.code == errors.FORBIDDEN


async def test_ownership_and_bad_parameters(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "alice")
        await viewer.join(ROOM, "viewer", "bob")
        send = await host.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        plain = await host.create_transport(ROOM, "recv")
        producer_id = await host.produce_data(ROOM, send["id"], 0)
        # Not the owner: closing it, or consuming on the host's transport.
        with pytest.raises(RequestFailed) as close:
            await viewer.close_data_producer(ROOM, producer_id)
        assert close.value.code == errors.FORBIDDEN
        with pytest.raises(RequestFailed) as other:
            await viewer.consume_data(ROOM, plain["id"], producer_id)
        assert other.value.code == errors.FORBIDDEN
        # A transport without SCTP; a stream id taken; bad stream parameters; unknown ids.
        recv = await viewer.create_transport(ROOM, "recv")
        with pytest.raises(RequestFailed) as no_sctp:
            await viewer.consume_data(ROOM, recv["id"], producer_id)
        assert no_sctp.value.code == errors.FORBIDDEN
        with pytest.raises(RequestFailed) as taken:
            await host.produce_data(ROOM, send["id"], 0)
        assert taken.value.code == errors.FORBIDDEN
        for params in ({"streamId": 1024}, {"streamId": -1}, {"streamId": "1"},
                       {"streamId": 1, "maxRetransmits": 1, "maxPacketLifeTime": 1},
                       {"streamId": 1, "ordered": True, "maxRetransmits": 1}, "x"):
            with pytest.raises(RequestFailed) as bad:
                await host.request("produceData", {"roomId": ROOM, "transportId": send["id"],
                                                   "sctpStreamParameters": params})
            assert bad.value.code == errors.INVALID_FIELD, params
        with pytest.raises(RequestFailed) as label:
            await host.request("produceData", {
                "roomId": ROOM, "transportId": send["id"], "label": "x" * 300,
                "sctpStreamParameters": {"streamId": 2}})
        assert label.value.code == errors.INVALID_FIELD
        with pytest.raises(RequestFailed) as unknown:
            await viewer.consume_data(ROOM, (await viewer.create_transport(
                ROOM, "recv", sctp_capabilities=SCTP_CAPABILITIES))["id"], "nope")
        assert unknown.value.code == errors.PRODUCER_NOT_FOUND
        # The owner closes it: the others are told.
        await host.close_data_producer(ROOM, producer_id)
        _, note = await viewer.next_notification("dataProducerClosed")
        assert note == {"dataProducerId": producer_id}


@pytest.mark.parametrize("config_overrides", [{"viewer_data_channels": True,
                                               "data_messages_per_second": 5.0,
                                               "data_message_burst": 10}])
async def test_limits_drop_count_and_tell_once_without_delaying_others(server: Server,
                                                                       client: Any) -> None:
    async with client() as host, client() as v1, client() as v2:
        await host.join(ROOM, "host", "alice")
        await v1.join(ROOM, "viewer", "bob")
        await v2.join(ROOM, "viewer", "carol")
        async with data_side(v1, "send") as flood, data_side(host, "send") as calm, \
                data_side(v2, "recv") as sink:
            flood_id = await v1.produce_data(ROOM, flood.peer.transport["id"], 0)
            calm_id = await host.produce_data(ROOM, calm.peer.transport["id"], 0)
            flood_stream = await consume(v2, sink, flood_id)
            calm_stream = await consume(v2, sink, calm_id)
            flood.open_stream(0)
            calm.open_stream(0)
            for i in range(100):
                flood.send(0, f"flood {i}")
            calm.send(0, "calm")
            _, note = await v1.next_notification("dataProducerLimited")
            assert note == {"dataProducerId": flood_id, "reason": "messages_per_second"}
            # The calm producer's message comes through (its own budget).
            with trio.fail_after(5):
                while not any(m[0] == calm_stream for m in sink.messages):
                    await trio.sleep(0.02)
            await trio.sleep(0.5)
            flooded = [m for m in sink.messages if m[0] == flood_stream]
            assert 10 <= len(flooded) < 30  # the burst (and a little refill), not 100
            assert [m[2] for m in flooded] == [f"flood {i}" for i in range(len(flooded))]
            room = server.rooms.get(ROOM)
            assert room is not None
            producer = room.data_producers[flood_id]
            assert producer.dropped["messages_per_second"] == 100 - producer.messages
            # Told once only, though more are dropped.
            dropped = producer.dropped["messages_per_second"]
            for i in range(50):
                flood.send(0, f"more {i}")
            with pytest.raises(trio.TooSlowError):
                await v1.next_notification("dataProducerLimited", timeout=0.5)
            assert producer.dropped["messages_per_second"] > dropped


@pytest.mark.parametrize("config_overrides", [{"max_data_message_size": 2000,
                                               "data_bytes_per_second": 1000.0,
                                               "data_bytes_burst": 6000}])
async def test_message_size_and_bytes_per_second_limits_drop_and_count(server: Server,
                                                                       client: Any) -> None:
    async with host_to_viewer(client) as one:
        host, producer_id = one.host, one.producer_id
        h, v, stream = one.send, one.recv, one.stream
        h.open_stream(0)
        assert h.send(0, b"B" * 2001) == "sent"  # SCTP takes it; the server's limit not
        _, note = await host.next_notification("dataProducerLimited")
        assert note == {"dataProducerId": producer_id, "reason": "message_size"}
        assert h.send(0, b"S" * 2000) == "sent"  # exactly the size limit: relayed
        bodies = [bytes([i]) * 1000 for i in range(10)]
        for body in bodies:
            assert h.send(0, body) == "sent"
        # 6000 bytes of burst: the 2000-byte one and four of the ten (the refill, 1000
        # bytes/s, may let one more through on a slow machine), the rest dropped.
        await v.wait_messages(5, timeout=10)
        await trio.sleep(0.5)
        got = list(v.messages)
        assert got[0] == (stream, 53, b"S" * 2000)
        relayed = [m[2] for m in got[1:]]
        assert 4 <= len(relayed) <= 5
        assert relayed == bodies[:len(relayed)]  # the first ones, in order
        room = server.rooms.get(ROOM)
        assert room is not None
        producer = room.data_producers[producer_id]
        assert producer.dropped["message_size"] == 1
        assert producer.dropped["bytes_per_second"] == 10 - len(relayed)
        # The same counts reach /metrics (pysfu_data_messages_dropped{reason}).
        assert server.ctx.metrics.data_dropped == {"message_size": 1,
                                                   "bytes_per_second": 10 - len(relayed)}
        scraped = render(server.registry).decode()
        assert f'pysfu_data_messages_dropped_total{{reason="bytes_per_second"}} ' \
               f'{float(10 - len(relayed))}' in scraped
        # Told once, for the first reason only.
        with pytest.raises(trio.TooSlowError):
            await host.next_notification("dataProducerLimited", timeout=0.3)


async def test_closing_the_room_frees_every_association(server: Server, client: Any) -> None:
    gc.collect()
    before = _native.sctp_associations()
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "alice")
        await viewer.join(ROOM, "viewer", "bob")
        async with data_side(host, "send") as h, data_side(viewer, "recv") as v:
            producer_id = await host.produce_data(ROOM, h.peer.transport["id"], 0)
            stream = await consume(viewer, v, producer_id)
            h.open_stream(0)
            h.send(0, "before close")
            assert (await v.wait_messages(1))[0] == (stream, 51, "before close")
            assert _native.sctp_associations() >= before + 2  # ours, the server's (+ clients)
            room = server.rooms.get(ROOM)
            assert room is not None
            await host.leave(ROOM)
            with trio.fail_after(2):
                await room.finished.wait()
        assert room.data_snapshot() == {"dataProducers": 0, "dataConsumers": 0, "dataRoutes": 0}
        assert server.media.counts()["transports"] == 0
    del h, v
    gc.collect()
    assert _native.sctp_associations() == before


async def test_sealed_records_stop_once_the_dtls_session_is_closed(server: Server,
                                                                   client: Any) -> None:
    async with host_to_viewer(client) as one:
        h, v, stream = one.send, one.recv, one.stream
        h.open_stream(0)
        h.send(0, "sealed")
        assert (await v.wait_messages(1))[0] == (stream, 51, "sealed")
        room = server.rooms.get(ROOM)
        assert room is not None
        ours = room.transports[v.peer.transport["id"]]
        assert ours.sctp is not None and ours.sctp.sealed and ours.dtls is not None
        assert len(ours.protect_data([b"sctp packet"])) == 1
        ours.dtls.close()
        assert ours.protect_data([b"sctp packet"]) == []


async def test_partial_reliability_parameters_reach_the_consumer(server: Server,
                                                                 client: Any) -> None:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "alice")
        await viewer.join(ROOM, "viewer", "bob")
        send = await host.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        recv = await viewer.create_transport(ROOM, "recv", sctp_capabilities=SCTP_CAPABILITIES)
        lossy = await host.produce_data(ROOM, send["id"], 3, ordered=False, max_retransmits=0,
                                        label="cursor")
        timed = await host.produce_data(ROOM, send["id"], 4, ordered=False,
                                        max_packet_life_time=500)
        a = await viewer.consume_data(ROOM, recv["id"], lossy)
        b = await viewer.consume_data(ROOM, recv["id"], timed)
        assert a["sctpStreamParameters"] == {"streamId": 0, "ordered": False, "maxRetransmits": 0}
        assert b["sctpStreamParameters"] == {"streamId": 1, "ordered": False,
                                             "maxPacketLifeTime": 500}
        assert a["label"] == "cursor"
        with pytest.raises(RequestFailed) as twice:
            await viewer.consume_data(ROOM, recv["id"], lossy)
        assert twice.value.code == errors.ALREADY_CONSUMING


async def test_garbage_sctp_over_dtls_is_counted_and_the_association_goes_on(
        server: Server, client: Any) -> None:
    async with host_to_viewer(client) as one:
        h, v, stream = one.send, one.recv, one.stream
        # Application records that are not SCTP (or not this association's), through
        # the real DTLS session, straight at the server's association.
        for junk in (b"", b"\x00" * 3, b"garbage" * 40, bytes(range(256)) * 4,
                     b"\x13\x88\x13\x88" + b"\xff" * 60):
            if junk:
                h.conn.send(junk)
        flushed = h.conn.bio_read(65536)
        for record in split_records(flushed) or []:
            await h.peer.sock.sendto(record, h.peer.server)
        room = server.rooms.get(ROOM)
        assert room is not None
        sctp = room.transports[h.peer.transport["id"]].sctp
        assert sctp is not None
        with trio.fail_after(5):
            while sctp.counters()["unroutable"] < 4:
                await trio.sleep(0.02)
        h.open_stream(0)
        h.send(0, "still fine")
        assert (await v.wait_messages(1))[0] == (stream, 51, "still fine")


async def test_application_data_on_a_transport_without_sctp_is_not_kept(server: Server,
                                                                       client: Any) -> None:
    async with client() as host:
        await host.join(ROOM, "host", "alice")
        transport = await host.create_transport(ROOM, "send")
        peer = WebRtcPeer(transport)
        await peer.bind()
        await host.connect_transport(ROOM, transport["id"], peer.dtls_parameters())
        await peer.connect()
        try:
            room = server.rooms.get(ROOM)
            assert room is not None
            ours = room.transports[transport["id"]]
            assert ours.sctp is None
            with trio.fail_after(5):
                while ours.dtls is None or ours.dtls.state != "connected":
                    await trio.sleep(0.01)
            before = server.media.stats(ours.handle)["dtlsReceived"]
            for _ in range(100):  # paced: the engine's per-transport upcall queue holds 64
                peer.dtls.send(b"x" * 1000)
                await peer.send_raw(peer.dtls.bio_read(65536))
                await trio.sleep(0.002)
            with trio.fail_after(5):
                while server.media.stats(ours.handle)["dtlsReceived"] < before + 100:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # handed to the transport's task and read
            assert ours.dtls.take_application() == []  # read and dropped, not piled up
        finally:
            peer.close()


async def test_the_senders_display_name_comes_with_its_data_producer(server: Server,
                                                                     client: Any) -> None:
    """Open rooms: the join's displayName; every way a data producer is described names it."""
    async with client() as host, client() as viewer:
        joined = await host.join(ROOM, "host", "alice", display_name="Alice Liddell")
        assert joined["displayName"] == "Alice Liddell"
        plain = await viewer.join(ROOM, "viewer", "bob")
        assert "displayName" not in plain
        send = await host.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        recv = await viewer.create_transport(ROOM, "recv", sctp_capabilities=SCTP_CAPABILITIES)
        producer_id = await host.produce_data(ROOM, send["id"], 0, label="chat")
        _, note = await viewer.next_notification("newDataProducer")
        assert (note["peerId"], note["displayName"]) == ("alice", "Alice Liddell")
        [listed] = await viewer.get_data_producers(ROOM)
        assert (listed["peerId"], listed["displayName"]) == ("alice", "Alice Liddell")
        consumed = await viewer.consume_data(ROOM, recv["id"], producer_id)
        assert (consumed["peerId"], consumed["displayName"]) == ("alice", "Alice Liddell")
    async with client() as other:
        for bad in ("   ", "x" * 129, "new\nline", 5):  # 4: the 5th failed join closes
            with pytest.raises(RequestFailed) as refused:
                await other.request("join", {"roomId": "names", "role": "host",
                                             "peerId": "p", "displayName": bad})
            assert refused.value.code == errors.INVALID_FIELD, bad


SECRET = secrets.token_urlsafe(32)


@pytest.mark.parametrize("config_overrides", [{"auth_secret": SECRET,
                                               "viewer_data_channels": True}])
async def test_with_tokens_the_display_name_is_the_tokens_name(server: Server,
                                                               client: Any) -> None:
    def token(identity: str, role: str, name: str | None) -> str:
        return create_token(SECRET, room=ROOM, identity=identity, role=role, now=time.time(),
                            ttl=600, name=name)

    async with client() as host, client() as viewer:
        # A displayName in the join does not override the token's name.
        joined = await viewer.request("join", {"roomId": ROOM, "role": "viewer",
                                               "token": token("u-7", "viewer", "Ada"),
                                               "displayName": "Someone Else"})
        assert joined["displayName"] == "Ada"
        await host.join(ROOM, "host", token=token("u-1", "host", None))
        send = await viewer.create_transport(ROOM, "send", sctp_capabilities=SCTP_CAPABILITIES)
        await viewer.produce_data(ROOM, send["id"], 0, label="chat")
        _, note = await host.next_notification("newDataProducer")
        assert (note["peerId"], note["displayName"]) == ("u-7", "Ada")
