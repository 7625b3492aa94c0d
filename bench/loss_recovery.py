"""Loss recovery through the server at 1 %, 5 % and 10 % random loss on every leg.

An in-process server; a host and a viewer (libsrtp test peers from tests/) each behind a
lossy UDP relay that drops the given share of SRTP/SRTCP datagrams in both directions (so
media, RTX, NACKs and reports are all lost at that rate). The host sends ``--packets`` VP8
packets; the viewer NACKs what it misses (10 ms after seeing a gap, again every 120 ms, at
most 10 times), the server repairs upstream loss with its own NACKs and answers the
viewer's from its buffer. Time to recovery is measured at the viewer, from the moment a gap
shows (a later packet arrived) to the moment the packet arrives.

Prints one JSON object. Usage: python bench/loss_recovery.py [--packets 1000] [--interval 0.003]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from pysfu.config import load_config
from pysfu.server import serve
from pysfu.testing.lossy_relay import Impairment
from pysfu.testing.media_endpoints import lossy_room


async def run_one(url: str, loss: float, packets: int, interval: float, seed: int
                  ) -> dict[str, Any]:
    def imp() -> Impairment:
        return Impairment(loss=loss)

    room_id = f"loss{int(loss * 1000)}"
    async with lossy_room(url, room_id, host_up=imp(), host_down=imp(), viewer_up=imp(),
                          viewer_down=imp(), seed=seed) as room:
        await room.host.send(5, key_frame_first=True)
        with trio.move_on_after(5):
            while len(room.viewer.received) < 5:
                await trio.sleep(0.01)
        room.impair(True)
        await room.host.send(packets, interval=interval)
        room.impair(False)
        await room.host.send(5, interval=interval)
        total = len(room.host.payloads)
        with trio.move_on_after(5):
            while len(room.viewer.received) < total or room.viewer.missing:
                await trio.sleep(0.02)
        stream = room.viewer.stream()
        intact = sum(1 for a, b in zip(stream, room.host.payloads, strict=False) if a == b)
        (producer,) = await room.host_client.get_stats(room_id, producerId=room.producer_id)
        consumer = (await room.viewer_client.get_stats(room_id,
                                                       consumerId=room.consumer["id"]))[0]
        gaps = len(room.viewer.recovery_times) + len(room.viewer.missing)
        return {
            "loss": loss,
            "packets_sent": total,
            "packets_received_intact": intact,
            "complete": intact == total,
            "relay_dropped": {
                "host_to_server": room.host_relay.up_stats.dropped,
                "server_to_host": room.host_relay.down_stats.dropped,
                "server_to_viewer": room.viewer_relay.down_stats.dropped,
                "viewer_to_server": room.viewer_relay.up_stats.dropped,
            },
            "viewer_gaps": gaps,
            "viewer_recovered": len(room.viewer.recovery_times),
            "recovered_share": round(len(room.viewer.recovery_times) / gaps, 4) if gaps else 1.0,
            "time_to_recovery_ms": room.viewer.recovery_summary(),
            "viewer_nacks_sent": room.viewer.nacks_sent,
            "server_upstream": {k: producer.get(k) for k in (
                "nackCount", "nackPacketCount", "packetsRepaired", "packetsGivenUp",
                "packetsLost", "roundTripTime")},
            "server_to_viewer": {k: consumer.get(k) for k in (
                "nackCount", "nackPacketCount", "packetsRetransmitted", "roundTripTime")},
        }


async def main(args: argparse.Namespace) -> None:
    config = load_config(overrides={"port": 0, "rtc_port": 0, "log_level": "warning",
                                    "metrics_port": 0})
    results = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, config)
        url = f"ws://127.0.0.1:{server.port}/ws"
        for i, loss in enumerate(args.loss):
            results.append(await run_one(url, loss, args.packets, args.interval, args.seed + i))
        nursery.cancel_scope.cancel()
    print(json.dumps({"bench": "loss_recovery", "packets": args.packets,
                      "packet_interval_s": args.interval, "results": results}, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.003)
    ap.add_argument("--loss", type=float, nargs="+", default=[0.01, 0.05, 0.10])
    ap.add_argument("--seed", type=int, default=1)
    trio.run(main, ap.parse_args())
