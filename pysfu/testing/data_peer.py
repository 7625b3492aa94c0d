"""Data channels for test peers and bots: SCTP over the DTLS session of a connected
``WebRtcPeer`` (its pyOpenSSL connection), with the same native association class the server
uses (``pysfu._native.SctpAssociation``), here in the client role (it sends INIT, as browsers
do). Real UDP, real DTLS records, real SCTP.

    peer = await open_data_peer(client, room, "send")
    async with trio.open_nursery() as nursery:
        data = DataPeer(peer)
        nursery.start_soon(data.run)
        await data.wait_connected()
        data.open_stream(0)
        data.send(0, "hello")
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio
from OpenSSL import SSL

from pysfu._native import SctpAssociation
from pysfu.client import SCTP_CAPABILITIES, SignalingClient
from pysfu.dtls import split_records
from pysfu.testing.webrtc_peer import WebRtcPeer

PPID_STRING, PPID_BINARY = 51, 53


async def open_data_peer(client: SignalingClient, room: str, direction: str) -> WebRtcPeer:
    """A transport with data channels, ICE and DTLS connected."""
    transport = await client.create_transport(room, direction,
                                              sctp_capabilities=SCTP_CAPABILITIES)
    assert "sctpParameters" in transport, "no sctpParameters in the answer"
    peer = WebRtcPeer(transport)
    await peer.bind()
    await client.connect_transport(room, transport["id"], peer.dtls_parameters())
    await peer.connect()
    return peer


class DataPeer:
    def __init__(self, peer: WebRtcPeer) -> None:
        self.peer = peer
        self.conn: SSL.Connection = peer.dtls
        self.sctp = SctpAssociation("client", trio.current_time())
        # Every message received: (stream, ppid, data); text is decoded.
        self.messages: list[tuple[int, int, str | bytes]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each message's arrival
        self.events: list[tuple[Any, ...]] = []
        self._changed = trio.Condition()
        self._wake = trio.Event()

    def open_stream(self, stream: int, *, ordered: bool = True,
                    max_retransmits: int | None = None, max_packet_life_time: int | None = None,
                    label: str | None = None, protocol: str = "") -> None:
        self.sctp.open_stream(stream, ordered, max_retransmits, max_packet_life_time, label,
                              protocol)
        self._wake.set()

    def send(self, stream: int, message: str | bytes) -> str:
        if isinstance(message, str):
            result = self.sctp.send(stream, PPID_STRING, message.encode())
        else:
            result = self.sctp.send(stream, PPID_BINARY, message)
        self._wake.set()
        return result

    async def wait_connected(self, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            async with self._changed:
                while not self.sctp.connected:
                    await self._changed.wait()

    async def wait_messages(self, count: int, timeout: float = 10.0) -> list[tuple[int, int,
                                                                                     str | bytes]]:
        with trio.fail_after(timeout):
            async with self._changed:
                while len(self.messages) < count:
                    await self._changed.wait()
        return self.messages[:count]

    async def run(self) -> None:
        """Send, receive and run timers until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive)
            while True:
                # A fresh event before flushing: a send() or a receive while the flush awaits
                # the socket sets it, so it is not lost until the next timer.
                self._wake = trio.Event()
                await self._flush()
                deadline = self.sctp.poll_timeout()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wake.wait()
                now = trio.current_time()
                if deadline is not None and now >= deadline:
                    self.sctp.handle_timeout(now)

    async def _receive(self) -> None:
        while True:
            data = await self.peer.sock.recv(65536)
            if not 20 <= data[0] <= 63:
                continue  # SRTP, STUN: not ours
            self.conn.bio_write(data)
            now = trio.current_time()
            while True:
                try:
                    record = self.conn.recv(65536)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    return
                self.sctp.handle_packet(record, now)
            for event in self.sctp.take_events():
                self.events.append(event)
                if event[0] == "message":
                    _, stream, ppid, payload = event
                    text = ppid in (51, 56)
                    self.messages.append((stream, ppid, payload.decode() if text else payload))
                    self.arrivals.append(time.monotonic())
            async with self._changed:
                self._changed.notify_all()
            self._wake.set()

    async def _flush(self) -> None:
        packets = self.sctp.take_packets(trio.current_time())
        for packet in packets:
            self.conn.send(packet)
            chunks = []
            while True:
                try:
                    chunks.append(self.conn.bio_read(65536))
                except SSL.WantReadError:
                    break
            data = b"".join(chunks)
            for record in split_records(data) or [data]:
                await self.peer.sock.sendto(record, self.peer.server)
        if packets:
            async with self._changed:
                self._changed.notify_all()
