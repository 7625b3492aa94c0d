"""MediaEngine (the engine's Python face): calls for a transport already removed are no-ops."""

from __future__ import annotations

from pysfu.media import MediaEngine


def test_send_and_bind_after_the_transport_is_gone_do_not_raise() -> None:
    engine = MediaEngine("127.0.0.1", 0)
    try:
        engine.native.add_transport(41, "ufrag41", "pw")
        engine.native.remove_transport(41)
        # A room closing while its transport task answers a queued STUN request.
        engine.send(41, "127.0.0.1", 9, b"\x01\x01\x00\x00")
        engine.bind_tuple(41, "127.0.0.1", 9, True)
        assert engine.counts()["transports"] == 0
    finally:
        engine.close()
