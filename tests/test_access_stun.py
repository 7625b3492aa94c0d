"""STUN binding requests with unknown usernames, flooded from one address.

The engine looks the request's local ufrag up and, finding no transport, drops it there:
no answer (nothing to reflect), nothing queued for Python (no work to starve anyone's
handshake), one counter (``stun_unknown``). That is the per-address limit for them, at zero:
this test shows it holds under a flood while another peer connects and a live stream runs.
"""

from __future__ import annotations

import statistics
import textwrap
from typing import Any

from pysfu.server import Server
from pysfu.testing.fixtures import vp8_producer
from pysfu.testing.live_stream import live_stream
from pysfu.testing.media_room import connect_time, connect_times_under_load

ROOM = "stun-unknown"
FLOOD_SECONDS = 3
FLOOD_RATE = 20_000  # requests/s

FLOOD = textwrap.dedent("""
    import os, socket, sys, time
    from pysfu.testing.webrtc_peer import stun_binding_request
    port, seconds, rate = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    requests = [stun_binding_request(f"{os.urandom(4).hex()}:x", "any-password-at-all")
                for _ in range(512)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    sent, answers, end, burst = 0, 0, time.monotonic() + seconds, max(1, rate // 100)
    def drain():
        global answers
        while True:
            try:
                s.recv(2048)
                answers += 1
            except BlockingIOError:
                return
    while time.monotonic() < end:
        for _ in range(burst):
            s.sendto(requests[sent % 512], ("127.0.0.1", port))
            sent += 1
        drain()
        time.sleep(0.01)
    time.sleep(0.5)
    drain()
    print(sent, answers)
""")


async def test_unknown_username_flood_is_dropped_unanswered(server: Server, client: Any) -> None:
    async with client() as host:
        await host.join(ROOM, "host", "h")
        send = await host.create_transport(ROOM, "send")
        await host.produce(ROOM, send["id"], "video", vp8_producer(mid="0"))
        baseline = [await connect_time(client, ROOM, f"b{i}") for i in range(3)]
        drops0 = server.media.drops()
        async with live_stream(server, local_host="127.0.0.2") as live:
            flooded, printed = await connect_times_under_load(
                client, ROOM, FLOOD, str(server.media.port), str(FLOOD_SECONDS),
                str(FLOOD_RATE))
            out = printed.split()
        summary = live.assert_intact()
    sent, answers = int(out[0]), int(out[1])
    dropped = server.media.drops().get("stun_unknown", 0) - drops0.get("stun_unknown", 0)
    b, f = statistics.median(baseline), statistics.median(flooded)
    print(f"\nunknown-username STUN flood: {sent} requests, {answers} answered, {dropped} "
          f"dropped as stun_unknown; newcomer ICE+DTLS median {1000 * b:.1f} ms without, "
          f"{1000 * f:.1f} ms with the flood; live stream {summary}")
    assert sent > 10_000
    assert answers == 0
    assert dropped >= 0.99 * sent, (dropped, sent)
    assert f <= 2 * b + 0.05, (baseline, flooded)
