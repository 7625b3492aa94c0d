"""Prometheus /metrics during a real stream: forwarded counters rise by what the viewer
received, drop counters by the bad datagrams sent, gauges go back to zero when the room
closes; the metrics listener answers nothing but /metrics."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pysfu.server import Server
from pysfu.testing.media_room import (  # noqa: F401
    CHROME_MID_EXT,
    CHROME_VP8_PT,
    HOST_SSRC,
    add_viewer,
    host,
    send_frames,
)
from pysfu.testing.ports import free_port
from pysfu.testing.webrtc_peer import WebRtcPeer, build_rtp, vp8_payload


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"metrics_port": free_port()}


async def _get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    assert server.metrics_port is not None
    status, body = await _get(server.metrics_port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _receive_rtp(peer: WebRtcPeer, count: int) -> tuple[int, int]:
    """(packets, bytes) of SRTP datagrams received (still protected: what the engine sent)."""
    packets = size = 0
    with trio.move_on_after(3):
        while packets < count:
            is_rtcp, data = await peer._next_srtp()
            if not is_rtcp:
                packets += 1
                size += len(data)
    return packets, size


async def test_metrics_follow_a_live_stream(server: Server, client: Any,
                                            host: Any) -> None:  # noqa: F811
    c, host_peer, producer_id = host
    async with contextlib.AsyncExitStack() as stack:
        viewer = await add_viewer(client, stack, "v", producer_id)
        await trio.sleep(0.1)
        await send_frames(host_peer, 1, 5)
        assert await _receive_rtp(viewer.peer, 5) == (5, pytest.approx(5 * 300, rel=0.5))
        await trio.sleep(0.1)
        before = await scrape(server)
        assert value(before, "pysfu_rooms") == 1
        assert value(before, "pysfu_peers", role="host") == 1
        assert value(before, "pysfu_peers", role="viewer") == 1
        assert value(before, "pysfu_producers", kind="video") == 1
        assert value(before, "pysfu_consumers", kind="video") == 1
        assert value(before, "pysfu_transports", ice_state="completed",
                     dtls_state="connected") == 2
        assert value(before, "pysfu_engine_objects", kind="transports") == 2
        assert value(before, "pysfu_dtls_handshakes_total", outcome="connected") == 2
        assert value(before, "pysfu_dtls_handshake_seconds_count") == 2
        # The viewer (not the host: nothing is forwarded to it) got its first packet once.
        assert value(before, "pysfu_join_to_first_packet_seconds_count") == 1
        assert 0 < value(before, "pysfu_join_to_first_packet_seconds_sum") < 5
        assert value(before, "pysfu_signaling_requests_total", event="join", code="ok") == 2
        assert value(before, "pysfu_process_resident_memory_bytes") > 10e6
        assert value(before, "pysfu_process_open_fds") > 5
        assert "pysfu_engine_io_cpu_seconds_total" in {k[0] for k in before}

        # 40 more frames: the counters rise by exactly what the viewer got.
        sent = await send_frames(host_peer, 6, 40, keyframe_first=False)
        got, got_bytes = await _receive_rtp(viewer.peer, 40)
        assert got == 40
        # Bad datagrams: SRTP with a broken auth tag from the host's own address.
        for seq in range(100, 107):
            bad = bytearray(host_peer.protect(build_rtp(
                CHROME_VP8_PT, seq, 90 * seq, HOST_SSRC, vp8_payload(keyframe=False),
                extensions={CHROME_MID_EXT: b"0"})))
            bad[-1] ^= 0xFF
            await host_peer.send_raw(bytes(bad))
        await trio.sleep(0.2)
        after = await scrape(server)
        d = {name: value(after, name, kind="video") - value(before, name, kind="video")
             for name in ("pysfu_forwarded_packets_total", "pysfu_forwarded_bytes_total",
                          "pysfu_received_packets_total", "pysfu_received_bytes_total")}
        assert d["pysfu_forwarded_packets_total"] == got
        assert d["pysfu_forwarded_bytes_total"] == got_bytes
        assert d["pysfu_received_packets_total"] == 40
        assert d["pysfu_received_bytes_total"] == sum(len(s) for s in sent)
        assert (value(after, "pysfu_dropped_datagrams_total", reason="srtp_auth")
                - value(before, "pysfu_dropped_datagrams_total", reason="srtp_auth")) == 7
        forwarded = value(after, "pysfu_forwarded_packets_total", kind="video")
        # Where the workers' time went: the viewer's 40 packets (and the server's RTCP) sent
        # in at most as many kernel messages, with time spent in each phase but the wait.
        workers = server.media.native.workers

        def across(snapshot: Any, name: str, **labels: str) -> float:
            return sum(value(snapshot, name, worker=str(w), **labels) for w in range(workers))

        messages = (across(after, "pysfu_worker_messages_sent_total")
                    - across(before, "pysfu_worker_messages_sent_total"))
        assert 1 <= messages <= got + 20, messages
        for phase in ("router", "seal", "send"):
            assert (across(after, "pysfu_worker_seconds_total", phase=phase)
                    > across(before, "pysfu_worker_seconds_total", phase=phase)), phase
        assert across(after, "pysfu_worker_seconds_total", phase="lock_wait") >= 0
        assert value(after, "pysfu_join_to_first_packet_seconds_count") == 1  # once per join

        # The room closes (the host leaves): gauges to zero, counters stay.
        await viewer.client.leave("media")
        await c.leave("media")
        await trio.sleep(0.3)
        closed = await scrape(server)
        for name, labels in [("pysfu_rooms", {}), ("pysfu_peers", {"role": "host"}),
                             ("pysfu_peers", {"role": "viewer"}),
                             ("pysfu_producers", {"kind": "video"}),
                             ("pysfu_consumers", {"kind": "video"})]:
            assert value(closed, name, **labels) == 0, name
        assert not [k for k in closed if k[0] == "pysfu_transports"]
        for kind in ("transports", "producers", "consumers", "streams"):
            assert value(closed, "pysfu_engine_objects", kind=kind) == 0, kind
        assert value(closed, "pysfu_forwarded_packets_total", kind="video") == forwarded


async def test_metrics_listener_serves_only_metrics(server: Server) -> None:
    assert server.metrics_port is not None
    assert (await _get(server.metrics_port, "/"))[0] == 404
    assert (await _get(server.metrics_port, "/healthz"))[0] == 404
    status, _ = await _get(server.port, "/metrics")  # not on the signaling port
    assert status == 404


@pytest.mark.parametrize("config_overrides", [{"metrics_port": 0}])
async def test_metrics_port_zero_turns_the_listener_off(server: Server) -> None:
    assert server.metrics_port is None
