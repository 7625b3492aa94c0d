"""A panic inside the native engine becomes a Python exception (``EnginePanic``, through
MediaEngine) or a logged error, never a process abort, and media keeps flowing afterwards
(real UDP, libsrtp peers)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from pysfu.media import EnginePanic
from pysfu.server import Server
from pysfu.testing.media_room import (  # noqa: F401  (host: fixture)
    host,
    send_frames,
    streaming_viewer,
)


async def test_engine_panics_are_contained(server: Server, client: Any, host: Any,  # noqa: F811
                                           caplog: pytest.LogCaptureFixture) -> None:
    _, host_peer, producer_id = host
    native = server.media.native
    async with AsyncExitStack() as stack:
        viewer, _ = await streaming_viewer(client, stack, host_peer, producer_id)

        # A panic in a control call (the engine answers ValueError "...(panic)...") and one in
        # the binding itself (pyo3's PanicException, a BaseException that would cross every
        # crash boundary): both reach the control plane as EnginePanic, an Exception of its
        # own, not the ValueError of bad input. The control call's panic is counted.
        with pytest.raises(EnginePanic, match="panic"):
            server.media._call(native._test_panic, "control")
        with pytest.raises(EnginePanic):
            server.media._call(native._test_panic, "pyo3")

        # A panic on the I/O thread while it handles one datagram (a stranger's): that
        # datagram is lost, counted, and logged as an error by the Python side.
        caplog.set_level(logging.ERROR, logger="pysfu.media")
        native._test_panic("io")
        stranger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await stranger.bind(("127.0.0.1", 0))
        await stranger.sendto(b"\x00" * 20, host_peer.server)
        stranger.close()
        with trio.fail_after(5):
            while not any(r.getMessage() == "engine.panic" for r in caplog.records):
                await trio.sleep(0.02)
        record = next(r for r in caplog.records if r.getMessage() == "engine.panic")
        assert "test panic" in record.panic  # type: ignore[attr-defined]
        assert server.media.drops()["panic"] == 2  # the control call's and the I/O thread's
        assert server.media.panics == 1

        # The engine still forwards every packet, in order, with nothing else lost.
        await send_frames(host_peer, 6, 30, keyframe_first=False)
        got = [await viewer.peer.recv_rtp() for _ in range(30)]
        assert all(got)
        seqs = [p.seq for p in got]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(30)]
        # Control calls still work.
        assert server.media.counts()["consumers"] == 1
        # Another room is served as usual after the panics: a new host joins and gets a
        # transport registered in the engine.
        async with client() as other:
            await other.join("after-panic", "host", "h2")
            transport = await other.create_transport("after-panic", "send")
            assert transport["iceCandidates"][0]["port"] == server.media.port
            assert server.media.counts()["transports"] == 3
