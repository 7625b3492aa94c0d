"""Free loopback port numbers for tests and benches that start a server.

Numbers come from below Linux's default ephemeral range (32768-60999), so an outgoing
connection's local port (a test client, Redis, Chromium) cannot take one between the check
and the server's bind. A media port must be free for UDP and TCP at once: the server listens
for ICE-TCP on the number of its UDP media port.

A number is handed out once per process (until the range is used up): a server's signaling
port and its media port are both drawn before it binds either, so a check alone could give
the same free number twice.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000  # the range numbers are drawn from (first, last + 1)
HOST = "127.0.0.1"
_ATTEMPTS = 1000
_given: set[int] = set()  # numbers handed out by this process


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    held: list[socket.socket] = []
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        for s in held:
            s.close()


def _free(kinds: tuple[int, ...]) -> int:
    if len(_given) > (HIGH - LOW) // 2:
        _given.clear()
    for _ in range(_ATTEMPTS):
        port = random.randrange(LOW, HIGH)
        if port not in _given and _bindable(port, kinds):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH - 1} after {_ATTEMPTS} tries")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port number free on loopback for ``kind`` (TCP by default)."""
    return _free((kind,))


def free_media_port() -> int:
    """A port number free on loopback for both UDP and TCP: a server's ``rtc_port``."""
    return _free((socket.SOCK_DGRAM, socket.SOCK_STREAM))
