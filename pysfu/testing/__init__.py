"""The test kit: independent peers and fixtures that tests and benchmarks drive pysfu with.

Needs the ``test`` extra (pylibsrtp, pytest). Nothing in pysfu imports it.

- ``webrtc_peer``: a WebRTC peer built from scratch (STUN, pyOpenSSL DTLS client, libsrtp),
  RTP/RTCP builders and parsers.
- ``simulcast_peer``: a host sending three simulcast encodings (RID, RTX).
- ``lossy_relay``: a UDP relay that drops, delays and reorders datagrams.
- ``media_endpoints``: a host and a viewer behind lossy relays, with their statistics.
- ``media_room``: room ``ROOM`` with a streaming host (pytest fixture ``host``) and viewers.
- ``live_stream``: a host -> viewer stream in a room of its own, to show an attack elsewhere
  harmed no one.
- ``fixtures``: producer parameters and device capabilities as browsers send them.
- ``ortc_fixtures``: mediasoup's own ORTC test data.
"""
