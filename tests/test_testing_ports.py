"""pysfu.testing.ports: numbers a test can bind, never the same one twice in a process."""

from __future__ import annotations

import socket

from pysfu.testing import ports


def test_numbers_handed_out_are_distinct_even_when_each_is_released_before_the_next() -> None:
    # A node's signaling port and media port are drawn one after the other and bound later;
    # 2,000 draws from 12,000 numbers repeat one about 160 times if only bindability counts.
    drawn = [ports.free_port() if i % 2 else ports.free_media_port() for i in range(2000)]
    assert len(set(drawn)) == len(drawn)
    assert all(ports.LOW <= p < ports.HIGH for p in drawn)


def test_a_media_port_is_bindable_for_udp_and_tcp() -> None:
    port = ports.free_media_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind((ports.HOST, port))
        t.bind((ports.HOST, port))


def test_a_number_in_use_is_not_handed_out() -> None:
    taken = []
    try:
        for port in range(ports.LOW, ports.LOW + 200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((ports.HOST, port))
            except OSError:
                s.close()
                continue
            taken.append(s)
        busy = {s.getsockname()[1] for s in taken}
        assert all(ports.free_port() not in busy for _ in range(300))
    finally:
        for s in taken:
            s.close()
