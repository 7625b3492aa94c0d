"""The seed workflow over a real WebSocket on loopback, with ownership and reconnect rules."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import trio

from pysfu.client import RequestFailed, SignalingClient
from pysfu.server import Server
from pysfu.testing.fixtures import device_caps, opus_producer, vp8_producer

ROOM = "room-1"


async def produce_video(host: SignalingClient, room: str = ROOM) -> tuple[str, str]:
    transport = await host.create_transport(room, "send")
    producer_id = await host.produce(room, transport["id"], "video", vp8_producer())
    return transport["id"], producer_id


async def viewer_consume(viewer: SignalingClient, producer_id: str,
                         room: str = ROOM) -> dict[str, Any]:
    caps = device_caps(await viewer.router_rtp_capabilities(room))
    transport = await viewer.create_transport(room, "recv")
    return await viewer.consume(room, transport["id"], producer_id, caps)


async def test_whole_workflow(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer:
        joined = await host.join(ROOM, "host", "host-peer")
        secret = joined.pop("resumeToken")  # a host's single-use resume secret
        assert isinstance(secret, str) and len(secret) >= 40
        assert joined == {"roomId": ROOM, "peerId": "host-peer", "role": "host",
                          "reconnected": False}
        await viewer.join(ROOM, "viewer", "viewer-peer")

        caps = await host.router_rtp_capabilities(ROOM)
        assert {c["mimeType"] for c in caps["codecs"]} >= {"audio/opus", "video/VP8", "video/rtx"}

        send = await host.create_transport(ROOM, "send")
        assert send["direction"] == "send" and send["transportId"] == send["id"]
        uuid.UUID(send["id"])  # random id, not socketId-direction
        ice = send["iceParameters"]
        assert ice["iceLite"] is True and len(ice["usernameFragment"]) >= 4
        assert len(ice["password"]) >= 22
        candidate, tcp_candidate = send["iceCandidates"]
        assert candidate["port"] == server.rtc_port and candidate["protocol"] == "udp"
        assert candidate["address"] == candidate["ip"] == "127.0.0.1"
        assert candidate["type"] == "host"
        assert tcp_candidate["port"] == server.rtc_port and tcp_candidate["protocol"] == "tcp"
        assert tcp_candidate["tcpType"] == "passive" and tcp_candidate["type"] == "host"
        assert tcp_candidate["priority"] < candidate["priority"]
        dtls = send["dtlsParameters"]
        assert dtls["role"] == "auto"
        assert dtls["fingerprints"][-1]["algorithm"] == "sha-256"
        assert dtls["fingerprints"][-1]["value"] == server.ctx.certificate.fingerprint("sha-256")
        assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", dtls["fingerprints"][-1]["value"])

        connected = await host.connect_transport(ROOM, send["id"], {
            "role": "client",
            "fingerprints": [{"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}],
        })
        assert connected == {"transportId": send["id"]}

        video_id = await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        _, note = await viewer.next_notification("newProducer")
        assert note == {"producerId": video_id, "kind": "video"}
        audio_id = await host.produce(ROOM, send["id"], "audio", opus_producer(mid="1"))
        await viewer.next_notification("newProducer")

        producers = await viewer.get_producers(ROOM)
        assert sorted(producers, key=lambda p: p["kind"]) == [
            {"id": audio_id, "kind": "audio"}, {"id": video_id, "kind": "video"}]
        assert await host.get_producers(ROOM) == []  # one's own producers are not listed

        recv = await viewer.create_transport(ROOM, "recv")
        device = device_caps(caps)
        consumed = await viewer.consume(ROOM, recv["id"], video_id, device)
        assert consumed["producerId"] == video_id and consumed["kind"] == "video"
        rtp = consumed["rtpParameters"]
        router_vp8 = next(c for c in caps["codecs"] if c["mimeType"] == "video/VP8")
        assert rtp["codecs"][0]["payloadType"] == router_vp8["preferredPayloadType"]
        assert len(rtp["encodings"]) == 1 and rtp["encodings"][0]["ssrc"] != 1234
        assert rtp["mid"] == "0" and rtp["rtcp"]["cname"]
        audio = await viewer.consume(ROOM, recv["id"], audio_id, device)
        assert audio["rtpParameters"]["mid"] == "1"  # unique per transport

        assert await viewer.resume_consumer(ROOM, consumed["id"]) == {"consumerId": consumed["id"]}

        room = server.rooms.get(ROOM)
        assert room.snapshot() == {"peers": 2, "transports": 2, "producers": 2, "consumers": 2}
        assert server.media.counts()["consumers"] == 2

        assert await host.close_producer(ROOM, video_id) == {"producerId": video_id}
        _, note = await viewer.next_notification("producerClosed")
        assert note == {"producerId": video_id}
        assert room.snapshot()["consumers"] == 1
        assert server.media.counts()["producers"] == 1


async def test_second_connect_and_bad_dtls_parameters(server: Server, host: SignalingClient):
    await host.join(ROOM, "host", "h")
    transport = await host.create_transport(ROOM, "send")
    bad = [
        {"role": "client", "fingerprints": []},
        {"role": "boss", "fingerprints": [{"algorithm": "sha-256", "value": "AB:CD"}]},
        {"role": "client", "fingerprints": [{"algorithm": "md5", "value": ":".join(["AB"] * 16)}]},
        {"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": "zz"}]},
    ]
    for params in bad:
        with pytest.raises(RequestFailed) as err:
            await host.connect_transport(ROOM, transport["id"], params)
        assert err.value.code == "invalid_dtls_parameters"
    good = {"role": "client", "fingerprints": [{"algorithm": "sha-256",
                                                "value": ":".join(["0a"] * 32)}]}
    await host.connect_transport(ROOM, transport["id"], good)
    with pytest.raises(RequestFailed) as err:
        await host.connect_transport(ROOM, transport["id"], good)
    assert err.value.code == "already_connected"


async def test_ownership_is_enforced(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer, client() as other:
        await host.join(ROOM, "host", "h")
        await viewer.join(ROOM, "viewer", "v")
        await other.join(ROOM, "viewer", "o")
        send_id, producer_id = await produce_video(host)
        consumer = await viewer_consume(viewer, producer_id)

        async def fails(code: str, c: SignalingClient, event: str, data: dict) -> None:
            with pytest.raises(RequestFailed) as err:
                await c.request(event, {"roomId": ROOM, **data})
            assert err.value.code == code, (event, err.value)

        await fails("forbidden", viewer, "closeProducer", {"producerId": producer_id})
        await fails("forbidden", viewer, "createTransport", {"direction": "send"})
        await fails("forbidden", viewer, "connectTransport", {
            "transportId": send_id,
            "dtlsParameters": {"fingerprints": [{"algorithm": "sha-256",
                                                 "value": ":".join(["AB"] * 32)}]}})
        await fails("forbidden", viewer, "produce", {
            "transportId": send_id, "kind": "video", "rtpParameters": vp8_producer()})
        await fails("forbidden", other, "resumeConsumer", {"consumerId": consumer["id"]})
        await fails("forbidden", other, "consume", {
            "transportId": send_id, "producerId": producer_id, "rtpCapabilities": {}})
        await fails("transport_not_found", host, "produce", {
            "transportId": "nope", "kind": "video", "rtpParameters": vp8_producer()})
        await fails("consumer_not_found", viewer, "resumeConsumer", {"consumerId": "nope"})
        await fails("producer_not_found", host, "closeProducer", {"producerId": str(uuid.uuid4())})
        # Nothing was harmed: the producer and consumer are still there.
        room = server.rooms.get(ROOM)
        assert producer_id in room.producers and consumer["id"] in room.consumers


async def test_ids_of_other_rooms_are_refused(server: Server, client: Any) -> None:
    async with client() as host_a, client() as host_b:
        await host_a.join("room-a", "host", "ha")
        await host_b.join("room-b", "host", "hb")
        _, producer_b = await produce_video(host_b, "room-b")
        send_a, _ = await produce_video(host_a, "room-a")
        with pytest.raises(RequestFailed) as err:
            await host_a.request("getProducers", {"roomId": "room-b"})
        assert err.value.code == "forbidden"
        with pytest.raises(RequestFailed) as err:
            await host_a.close_producer("room-a", producer_b)
        assert err.value.code == "producer_not_found"
        caps = device_caps(await host_a.router_rtp_capabilities("room-a"))
        recv_a = await host_a.create_transport("room-a", "recv")
        with pytest.raises(RequestFailed) as err:
            await host_a.consume("room-a", recv_a["id"], producer_b, caps)
        assert err.value.code == "producer_not_found"
        assert len(server.rooms.get("room-b").producers) == 1


async def test_requests_before_join_and_second_host(server: Server, client: Any) -> None:
    async with client() as c, client() as intruder:
        with pytest.raises(RequestFailed) as err:
            await c.create_transport(ROOM, "send")
        assert err.value.code == "not_joined"
        # Capabilities need no join and create no room.
        await c.router_rtp_capabilities(ROOM)
        assert server.rooms.get(ROOM) is None
        await c.join(ROOM, "host", "h")
        with pytest.raises(RequestFailed) as err:
            await intruder.join(ROOM, "host", "h2")
        assert err.value.code == "forbidden"
        with pytest.raises(RequestFailed) as err:
            await intruder.join(ROOM, "viewer", "h")  # the host's peerId with another role
        assert err.value.code == "forbidden"
        with pytest.raises(RequestFailed) as err:
            await c.join("other", "viewer", "x")
        assert err.value.code == "already_joined"


async def test_cannot_consume_with_incompatible_device(server: Server, client: Any) -> None:
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "h")
        await viewer.join(ROOM, "viewer", "v")
        _, producer_id = await produce_video(host)
        caps = device_caps(await viewer.router_rtp_capabilities(ROOM), only={"audio/opus"})
        recv = await viewer.create_transport(ROOM, "recv")
        with pytest.raises(RequestFailed) as err:
            await viewer.consume(ROOM, recv["id"], producer_id, caps)
        assert err.value.code == "cannot_consume"


async def test_unsupported_producer_is_refused(server: Server, host: SignalingClient) -> None:
    await host.join(ROOM, "host", "h")
    send = await host.create_transport(ROOM, "send")
    params = vp8_producer()
    params["codecs"][0]["mimeType"] = "video/AV2"
    with pytest.raises(RequestFailed) as err:
        await host.produce(ROOM, send["id"], "video", params)
    assert err.value.code in ("unsupported_codec", "invalid_rtp_parameters")
    del params["codecs"]
    with pytest.raises(RequestFailed) as err:
        await host.produce(ROOM, send["id"], "video", params)
    assert err.value.code == "invalid_rtp_parameters"
    assert server.media.counts()["producers"] == 0


async def test_reconnect_closes_only_the_peers_own_producers(server: Server, client: Any):
    async with client() as host, client() as viewer:
        await host.join(ROOM, "host", "h")
        await viewer.join(ROOM, "viewer", "v")
        _, video = await produce_video(host)
        consumer = await viewer_consume(viewer, video)
        room = server.rooms.get(ROOM)

        # The viewer reconnects: its consumers go, the host's producer stays, nobody is told
        # that a producer closed.
        async with client() as viewer2:
            again = await viewer2.join(ROOM, "viewer", "v")
            assert again["reconnected"] is True
            assert consumer["id"] not in room.consumers and video in room.producers
            with pytest.raises(RequestFailed) as err:  # the old socket lost the peer
                await viewer.get_producers(ROOM)
            assert err.value.code == "not_joined"

            # The host reconnects: its old producers close and viewers hear of it.
            async with client() as host2:
                assert (await host2.join(ROOM, "host", "h"))["reconnected"] is True
                _, note = await viewer2.next_notification("producerClosed")
                assert note == {"producerId": video}
                assert room.snapshot() == {"peers": 2, "transports": 0, "producers": 0,
                                           "consumers": 0}
                _, video2 = await produce_video(host2)
                _, note = await viewer2.next_notification("newProducer")
                assert note["producerId"] == video2
                with pytest.raises(trio.TooSlowError):
                    await host.next_notification("producerClosed", timeout=0.2)


async def test_host_leave_closes_room_and_frees_everything(server: Server, client: Any):
    async with client() as host, client() as viewer, client() as bystander:
        await host.join(ROOM, "host", "h")
        await viewer.join(ROOM, "viewer", "v")
        await bystander.join("elsewhere", "host", "b")
        _, video = await produce_video(host)
        await viewer_consume(viewer, video)
        room = server.rooms.get(ROOM)
        assert server.media.counts()["transports"] == 2 + 0

        await host.leave(ROOM)
        _, note = await viewer.next_notification("roomClosed")
        assert note["roomId"] == ROOM
        with trio.fail_after(2):
            await room.finished.wait()
        assert server.rooms.get(ROOM) is None
        assert room.snapshot() == {"peers": 0, "transports": 0, "producers": 0, "consumers": 0}
        assert room._nursery is not None and not room._nursery.child_tasks
        counts = server.media.counts()
        assert counts["producers"] == counts["consumers"] == 0
        assert counts["transports"] == 0  # the bystander created none
        # The other room and the server go on.
        await produce_video(bystander, "elsewhere")
        with pytest.raises(RequestFailed) as err:
            await viewer.get_producers(ROOM)
        assert err.value.code == "not_joined"


async def test_host_socket_loss_closes_room_after_grace(server: Server, client: Any):
    async with client() as viewer:
        async with client() as host:
            await host.join(ROOM, "host", "h")
            await viewer.join(ROOM, "viewer", "v")
            await produce_video(host)
        room = server.rooms.get(ROOM)
        # Grace period (0.5 s in tests): nothing happens at first.
        with pytest.raises(trio.TooSlowError):
            await viewer.next_notification("roomClosed", timeout=0.2)
        _, note = await viewer.next_notification("roomClosed", timeout=3)
        assert note["reason"] == "host_left"
        await room.finished.wait()
        assert server.rooms.get(ROOM) is None
        assert server.media.counts() == {"transports": 0, "producers": 0, "consumers": 0,
                                         "streams": 0, "tuples": 0,
                                         "tcp_connections": 0}


async def test_host_returning_within_grace_keeps_room(server: Server, client: Any):
    async with client() as viewer:
        async with client() as host:
            await host.join(ROOM, "host", "h")
            await viewer.join(ROOM, "viewer", "v")
        room = server.rooms.get(ROOM)
        async with client() as host2:
            await host2.join(ROOM, "host", "h")
            await trio.sleep(0.8)  # past the grace period
            assert server.rooms.get(ROOM) is room and not room.closed
            await produce_video(host2)
            await viewer.next_notification("newProducer")


async def test_viewer_leaving_releases_only_its_resources(server: Server, client: Any):
    async with client() as host, client() as v1:
        await host.join(ROOM, "host", "h")
        await v1.join(ROOM, "viewer", "v1")
        _, video = await produce_video(host)
        c1 = await viewer_consume(v1, video)
        async with client() as v2:
            await v2.join(ROOM, "viewer", "v2")
            c2 = await viewer_consume(v2, video)
        room = server.rooms.get(ROOM)
        with trio.fail_after(2):
            while "v2" in room.peers:
                await trio.sleep(0.01)
        assert c2["id"] not in room.consumers and c1["id"] in room.consumers
        assert video in room.producers and server.media.counts()["consumers"] == 1
