"""pysfu: a WebRTC Selective Forwarding Unit with a Trio control plane and a Rust data plane.

The package namespace offers what an embedder needs: run a server (``serve``, ``Server``,
``Config``, ``load_config``) and talk to one (``connect``, ``SignalingClient``). They are
imported on first use, so ``import pysfu.auth`` (minting join tokens) loads nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "pysfu.config",
    "ConfigError": "pysfu.config",
    "load_config": "pysfu.config",
    "Server": "pysfu.server",
    "serve": "pysfu.server",
    "SignalingClient": "pysfu.client",
    "RequestFailed": "pysfu.client",
    "connect": "pysfu.client",
    "SignalingError": "pysfu.errors",
}

if TYPE_CHECKING:
    from pysfu.client import RequestFailed, SignalingClient, connect
    from pysfu.config import Config, ConfigError, load_config
    from pysfu.errors import SignalingError
    from pysfu.server import Server, serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pysfu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Config", "ConfigError", "RequestFailed", "Server", "SignalingClient", "SignalingError",
    "__version__", "connect", "load_config", "serve",
]
