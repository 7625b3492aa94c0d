"""Kept only for tests/test_engine.py (``from tests import webrtc_peer``), a file of the
native-refactor work in progress: delete once it imports ``pysfu.testing.webrtc_peer``."""

from pysfu.testing.webrtc_peer import stun_binding_request

__all__ = ["stun_binding_request"]
