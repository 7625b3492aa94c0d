"""pysfu: a WebRTC Selective Forwarding Unit with a Trio control plane and a Rust data plane."""

__version__ = "0.1.0"
