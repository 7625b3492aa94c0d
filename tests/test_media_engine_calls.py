"""MediaEngine's one rule for objects the engine no longer has: every call naming one is a
no-op with a debug log (None where the call returns something); bad input is still a
ValueError. (EnginePanic: tests/test_panic_safety.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pysfu.dtls import SrtpKeys
from pysfu.media import MediaEngine

GONE = 7  # a transport handle, removed before the calls
PRODUCER, CONSUMER = 8, 9  # never added


class Sink:
    def deliver(self, kind: str, ip: str, port: int, data: bytes) -> None:
        raise AssertionError("nothing is delivered in this test")


@pytest.fixture
def engine() -> Iterator[MediaEngine]:
    engine = MediaEngine("127.0.0.1", 0)
    try:
        yield engine
    finally:
        engine.close()


def test_calls_on_removed_objects_are_no_ops(engine: MediaEngine,
                                             caplog: pytest.LogCaptureFixture) -> None:
    engine.add_transport(GONE, "ufragGONE", "password", Sink())
    engine.remove_transport(GONE)
    caplog.set_level(logging.DEBUG, logger="pysfu.media")
    key = bytes(16)
    salt = bytes(14)
    calls = {
        "remove_transport": lambda: engine.native.remove_transport(GONE),  # the raw engine
        "send": lambda: engine.send(GONE, "127.0.0.1", 9, b"\x00\x01\x00\x00"),
        "bind_tuple": lambda: engine.bind_tuple(GONE, "127.0.0.1", 9, True),
        "set_srtp": lambda: engine.set_srtp(
            GONE, SrtpKeys("AES_CM_128_HMAC_SHA1_80", key, salt, key, salt)),
        "remove_producer": lambda: engine.remove_producer(PRODUCER),
        "pause_producer": lambda: engine.pause_producer(PRODUCER),
        "resume_producer": lambda: engine.resume_producer(PRODUCER),
        "remove_consumer": lambda: engine.remove_consumer(CONSUMER),
        "pause_consumer": lambda: engine.pause_consumer(CONSUMER),
        "resume_consumer": lambda: engine.resume_consumer(CONSUMER),
        "set_preferred_layers": lambda: engine.set_preferred_layers(CONSUMER, 1, None),
        "stats": lambda: engine.stats(CONSUMER),
        "rtp_stats": lambda: engine.rtp_stats(PRODUCER),
    }
    with pytest.raises(KeyError):  # the native engine itself says "unknown"
        calls.pop("remove_transport")()
    for name, call in calls.items():
        assert call() is None, name
    logged = {r.getMessage().split(":")[0] for r in caplog.records
              if r.levelno == logging.DEBUG}
    assert {f"engine.{name}" for name in calls} <= logged
    engine.remove_transport(GONE)  # removing twice: the same no-op
    assert engine.counts() == {"transports": 0, "producers": 0, "consumers": 0, "streams": 0,
                               "tuples": 0, "tcp_connections": 0}


def test_bad_input_is_a_value_error(engine: MediaEngine) -> None:
    engine.add_transport(1, "ufrag1", "password", Sink())
    with pytest.raises(ValueError):
        engine.add_producer(2, 1, {"kind": "smell"})
    with pytest.raises(ValueError):
        engine.send(1, "not an address", 9, b"")
