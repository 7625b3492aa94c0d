"""``pysfu serve``: run the SFU. Settings: defaults < --config FILE < PYSFU_* env < options."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from pysfu import log
from pysfu.config import Config, ConfigError, load_config
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
    logger = logging.getLogger("pysfu")
    from pysfu.server import StartupError

    try:
        stopped_by = trio.run(_serve_until_signal, config)
    except KeyboardInterrupt:  # SIGINT before the signal receiver was in place
        stopped_by = "SIGINT"
    except (StartupError, BaseExceptionGroup) as exc:
        failure = _startup_error(exc, StartupError)
        if failure is None:
            raise  # a bug: the traceback is the report
        log_event(logger, "server.failed", level=logging.ERROR, error=str(failure))
        return 1
    log_event(logger, "server.stopped", reason=stopped_by)
    # SIGTERM is how a service manager stops us: a clean, successful stop. SIGINT is an
    # interrupt (shell convention 128 + 2).
    return 0 if stopped_by == "SIGTERM" else 130


async def _serve_until_signal(config: Config) -> str:
    """Run the server until SIGTERM or SIGINT; the signal's name."""
    from pysfu.server import serve

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, config)
            async for signum in signals:
                nursery.cancel_scope.cancel()
                return signal.Signals(signum).name
    raise AssertionError("unreachable: the signal stream never ends")


def _startup_error(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` if it is a ``kind``, or the one ``kind`` inside exception groups holding
    nothing else (trio wraps errors of tasks in groups); else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None
