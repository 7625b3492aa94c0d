"""Media worker threads on one port (``workers`` setting, native/src/workers.rs): a producer's
datagrams handled by one worker, viewers sent to by another, over real UDP and SRTP."""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu._native import Engine
from pysfu.server import Server
from pysfu.testing.media_room import (
    ROOM,
    add_viewer,
    host,  # noqa: F401  (fixture)
    send_frames,
)

FRAMES = 100


def _delta(after: list[dict[str, int]], before: list[dict[str, int]], key: str) -> list[int]:
    return [a[key] - b[key] for a, b in zip(after, before, strict=True)]


async def _ingress_worker(server: Server, host_peer: Any) -> int:
    """The worker whose socket the host's datagrams reach (the kernel's hash): the one whose
    ``received`` grows by the frames sent while nothing else is sent."""
    before = server.media.worker_stats()
    await send_frames(host_peer, 1, 20)
    await trio.sleep(0.2)
    received = _delta(server.media.worker_stats(), before, "received")
    assert sorted(received)[-1] >= 20, received
    return received.index(max(received))


@pytest.mark.parametrize("config_overrides", [{"workers": 2}])
async def test_producer_on_one_worker_consumers_on_another(
        server: Server, client: Any, host: Any) -> None:  # noqa: F811
    host_client, host_peer, producer_id = host
    media = server.media
    assert media.native.workers == 2
    async with AsyncExitStack() as stack:
        viewers = [await add_viewer(client, stack, f"v{i}", producer_id) for i in range(3)]
        room = server.rooms.get(ROOM)
        assert room is not None
        # Each transport given keys goes to the worker that owns the fewest: with the host,
        # four transports over two workers own two each, whatever their addresses hash to.
        owners = [media.stats(room.transports[v.peer.transport["id"]].handle)["sendingWorker"]
                  for v in viewers]
        host_owner = media.stats(room.transports[host_peer.transport["id"]].handle)[
            "sendingWorker"]
        assert sorted([*owners, host_owner]) == [0, 0, 1, 1], (owners, host_owner)
        ingress = await _ingress_worker(server, host_peer)
        for viewer in viewers:  # the ingress probe's frames
            while await viewer.peer.recv_rtp(timeout=0.3) is not None:
                pass
        before, totals_before = media.worker_stats(), media.totals()
        await send_frames(host_peer, 1000, FRAMES)
        for i, viewer in enumerate(viewers):
            seqs, stamps = [], []
            while len(seqs) < FRAMES:
                packet = await viewer.peer.recv_rtp(timeout=3)
                assert packet is not None, f"viewer {i}: {len(seqs)} of {FRAMES} arrived"
                seqs.append(packet.seq)
                stamps.append(packet.ts)
            assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(FRAMES)], f"viewer {i} order"
            assert stamps == [90 * (1000 + k) for k in range(FRAMES)]
        after, totals_after = media.worker_stats(), media.totals()
        # Decrypted once: the engine counted each of the host's packets once, and forwarded
        # it once per viewer.
        assert totals_after["videoPacketsReceived"] - totals_before["videoPacketsReceived"] \
            == FRAMES
        assert totals_after["videoPacketsForwarded"] - totals_before["videoPacketsForwarded"] \
            == FRAMES * len(viewers)
        sent = _delta(after, before, "sent")
        other = 1 - ingress
        for w in (0, 1):
            owned = owners.count(w)
            assert sent[w] >= FRAMES * owned, (w, sent, owners)
            assert owned > 0 and sent[w] > 0, f"worker {w} sent nothing: {sent}"
        # Protected by their owner, not by the ingress worker: each worker sealed at least
        # its viewers' packets, and none was dropped for want of keys.
        sealed = _delta(after, before, "sealed")
        for w in (0, 1):
            assert sealed[w] >= FRAMES * owners.count(w), (w, sealed, owners)
        assert all(w["sealNoKey"] == 0 and w["sealFailed"] == 0 for w in after)
        assert sum(w["contexts"] for w in after) >= len(viewers) + 1, after
        # The ingress worker left each packet, decrypted, to each owner worker, itself
        # included (one share per packet per worker, over its share queue), and each made its
        # own viewers' copies.
        shares = _delta(after, before, "shares")
        assert shares[other] == FRAMES and shares[ingress] == FRAMES, shares
        assert all(w["sharesFull"] == 0 and w["inboxFull"] == 0 for w in after)
        assert media.drops()["workerInboxFull"] == 0 and media.drops()["workerSharesFull"] == 0
        # Where each worker's time went: both forwarded under the router's lock, protected
        # and sent; the kernel messages are at most the datagrams (GSO puts several in one).
        messages = _delta(after, before, "messages")
        for w in (0, 1):
            assert 0 < messages[w] <= sent[w], (w, messages, sent)
            for key in ("routerNs", "sealNs", "sendNs"):
                assert _delta(after, before, key)[w] > 0, (w, key, after)
            assert _delta(after, before, "lockWaitNs")[w] >= 0
        await host_client.leave(ROOM)
        for viewer in viewers:
            await viewer.client.next_notification("roomClosed")
        await room.finished.wait()
    # Every transport's outbound context left its owner with the transport.
    with trio.fail_after(3):
        while any(w["contexts"] for w in media.worker_stats()):
            await trio.sleep(0.05)
    assert media.counts() == {"transports": 0, "producers": 0, "consumers": 0, "streams": 0,
                              "tuples": 0, "tcp_connections": 0}


async def test_workers_setting_reaches_the_engine(server: Server) -> None:
    """The fixture's default: one worker per core, one socket each on one port."""
    assert server.media.native.workers == server.config.workers
    stats = server.media.worker_stats()
    assert len(stats) == server.config.workers
    assert set(stats[0]) == {"received", "sent", "handedOff", "taken", "inboxFull",
                             "inboxPeak", "sealed", "sealNoKey", "sealFailed",
                             "contexts", "shares", "sharesFull", "sharePeak", "lockWaitNs",
                             "routerNs", "sealNs", "sendNs", "messages", "cpu"}


def _io_threads() -> dict[tuple[int, int], set[int]]:
    """This process's engine worker threads (named pysfu-io), each as (tid, start time: tids
    are reused) -> the CPUs it may run on."""
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pysfu-io":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                started = int(f.read().rsplit(")", 1)[1].split()[19])
            threads[(int(tid), started)] = os.sched_getaffinity(int(tid))
        except OSError:  # a thread that ended meanwhile
            continue
    return threads


@pytest.mark.parametrize(("workers", "pin"), [(2, True), (3, True), (2, False), (1, True)])
def test_pinned_workers_each_run_on_their_own_cpu(workers: int, pin: bool) -> None:
    """``pin_workers``: worker i runs only on the i-th CPU of the process's affinity (round
    robin), as the kernel reports for its thread, when the workers cover every CPU; unpinned,
    alone or fewer than the CPUs, a worker may run on all."""
    allowed = sorted(os.sched_getaffinity(0))
    before = set(_io_threads())
    engine = Engine("127.0.0.1", 0, workers=workers, pin_workers=pin)
    try:
        pinned = pin and workers > 1 and workers >= len(allowed)
        expected = [allowed[i % len(allowed)] if pinned else None for i in range(workers)]
        deadline = time.monotonic() + 5
        while True:  # each worker names and pins itself as its thread starts
            cpus = [w["cpu"] for w in engine.worker_stats()]
            mine = {t: a for t, a in _io_threads().items() if t not in before}
            if (cpus == expected and len(mine) == workers) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert cpus == expected
        assert len(mine) == workers
        if expected[0] is None:
            assert all(a == set(allowed) for a in mine.values())
        else:
            assert sorted(min(a) for a in mine.values()) == sorted(expected)
            assert all(len(a) == 1 for a in mine.values())
    finally:
        engine.close()


async def test_server_pins_its_workers_by_default(server: Server) -> None:
    """The config default pins every worker when there are several (one per core: every CPU
    covered)."""
    assert server.config.pin_workers
    cpus = [w["cpu"] for w in server.media.worker_stats()]
    if 1 < server.config.workers >= len(os.sched_getaffinity(0)):
        assert all(c is not None for c in cpus)
        assert len(set(cpus)) == min(server.config.workers, len(os.sched_getaffinity(0)))
    else:
        assert cpus == [None]


def _voluntary_switches(tids: list[int]) -> list[int]:
    """Each thread's voluntary context switches so far (each one a sleep it woke from)."""
    counts = []
    for tid in tids:
        with open(f"/proc/self/task/{tid}/status") as f:
            line = next(ln for ln in f if ln.startswith("voluntary_ctxt_switches"))
        counts.append(int(line.split()[1]))
    return counts


def test_idle_workers_sleep_until_there_is_work() -> None:
    """With nothing to do, worker 0 wakes once per router tick (its waits rounded up, not cut
    short into a second wake-up) and the other workers about once a second: everything they
    serve wakes them (datagrams, shares, key events, stop), and on a VM every sleep ended by a
    timer costs tens of µs of CPU (bench/README.md, pysfu-wakecost)."""
    before = set(_io_threads())
    engine = Engine("127.0.0.1", 0, workers=2, pin_workers=False)
    try:
        deadline = time.monotonic() + 5
        while True:
            mine = [tid for (tid, start) in _io_threads() if (tid, start) not in before]
            if len(mine) == 2:
                break
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        time.sleep(0.3)
        first = _voluntary_switches(mine)
        time.sleep(2.0)
        woke = sorted(b - a for a, b in zip(first, _voluntary_switches(mine), strict=True))
        # Worker 0: its 50 ms tick, 40 in 2 s (80 when each wait was cut to whole ms);
        # the other worker: its 1 s safety net (40 with the former 50 ms tick).
        assert woke[0] <= 4, woke
        assert woke[1] <= 50, woke
    finally:
        engine.close()
