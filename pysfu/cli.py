"""``pysfu serve``: run the SFU. Settings: defaults < --config FILE < PYSFU_* env < options."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from pysfu import log
from pysfu.config import ConfigError, load_config
from pysfu.log import log_event


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysfu", description="WebRTC SFU")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="signaling/HTTP listen address (default 127.0.0.1)")
    serve.add_argument("--port", help="signaling/HTTP port; WebSocket at /ws (default 8080)")
    serve.add_argument("--rtc-ip", dest="rtc_ip", help="UDP media listen address")
    serve.add_argument("--rtc-port", dest="rtc_port", help="UDP media port (default 40000)")
    serve.add_argument("--announced-ip", dest="announced_ip",
                       help="address put in ICE candidates (public IP behind NAT)")
    serve.add_argument("--config", help="TOML file with settings")
    serve.add_argument("--log-level", dest="log_level", help="debug, info, warning, error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        sys.stderr.write(f"pysfu: {exc}\n")  # logging is not configured yet
        return 2
    log.configure(config.log_level)
    from pysfu.server import serve

    try:
        trio.run(serve, config)
    except KeyboardInterrupt:
        log_event(logging.getLogger("pysfu"), "server.stopped", reason="interrupt")
    except OSError as exc:
        log_event(logging.getLogger("pysfu"), "server.failed", level=logging.ERROR,
                  error=str(exc))
        return 1
    return 0
