"""``pysfu serve``: run the SFU. Settings: defaults < --config FILE < PYSFU_* env < options.

``pysfu token --room R --identity I --role host|viewer [--ttl 1h] [--name N] [--kid K]``:
print a join token signed with the configured secret (``auth_secret``, or the ``auth_keys``
entry named by ``--kid``; from ``--config FILE`` or ``PYSFU_AUTH_SECRET`` /
``PYSFU_AUTH_KEYS``).

``pysfu rooms list | show ID | close ID [--reason R]``: the admin API of a running server
(``--url`` or ``PYSFU_ADMIN_URL``, ``--admin-token`` or ``PYSFU_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time

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
    serve.add_argument("--rtc-ip", dest="rtc_ip", help="media (UDP and TCP) listen address")
    serve.add_argument("--rtc-port", dest="rtc_port",
                       help="media port, UDP and ICE-TCP (default 40000)")
    serve.add_argument("--enable-udp", dest="enable_udp", action=argparse.BooleanOptionalAction,
                       default=None, help="offer the UDP ICE candidate (default on)")
    serve.add_argument("--enable-tcp", dest="enable_tcp", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="offer a passive ICE-TCP candidate on the media port (default on)")
    serve.add_argument("--prefer-udp", dest="prefer_udp", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="give the UDP candidate the higher priority (default on)")
    serve.add_argument("--gso", dest="gso", action=argparse.BooleanOptionalAction, default=None,
                       help="send bursts to one destination with UDP GSO (default on)")
    serve.add_argument("--gro", dest="gro", action=argparse.BooleanOptionalAction, default=None,
                       help="receive with UDP GRO (default off)")
    serve.add_argument("--workers", dest="workers",
                       help="media I/O threads on the rtc port (default: one per core)")
    serve.add_argument("--pin-workers", dest="pin_workers",
                       action=argparse.BooleanOptionalAction, default=None,
                       help="pin each media worker to its own CPU when they cover every "
                            "CPU the process may run on (default on)")
    serve.add_argument("--announced-ip", dest="announced_ip",
                       help="address put in ICE candidates (public IP behind NAT)")
    serve.add_argument("--config", help="TOML file with settings")
    serve.add_argument("--log-level", dest="log_level", help="debug, info, warning, error")
    serve.add_argument("--log-format", dest="log_format", choices=("logfmt", "json"),
                       help="log line format (default logfmt)")
    serve.add_argument("--metrics-host", dest="metrics_host",
                       help="Prometheus /metrics listen address (default 127.0.0.1)")
    serve.add_argument("--metrics-port", dest="metrics_port",
                       help="Prometheus /metrics port (default 9464; 0 turns it off)")
    serve.add_argument("--shutdown-grace", dest="shutdown_grace",
                       help="seconds between serverShuttingDown and closing the rooms on "
                            "SIGTERM/SIGINT (default 5)")
    serve.add_argument("--host-grace-period", dest="host_grace_period",
                       help="seconds a host whose WebSocket dropped may take to resume "
                            "before its room closes (default 10; 0: closes at once)")
    serve.add_argument("--allowed-origins", dest="allowed_origins",
                       help="comma-separated origins whose pages may open the WebSocket "
                            "(default: this server's own; '*' for any)")
    serve.add_argument("--allow-open-rooms", dest="allow_open_rooms", action="store_true",
                       default=None,
                       help="run without auth_secret on a non-loopback address: anyone who "
                            "reaches it may create and join rooms")
    serve.add_argument("--cluster-redis-url", dest="cluster_redis_url",
                       help="Redis URL shared by the nodes of a cluster (default: one node, "
                            "no Redis); needs cluster_secret (config or PYSFU_CLUSTER_SECRET)")
    serve.add_argument("--node-id", dest="node_id", help="this node's id (default random)")
    serve.add_argument("--node-url", dest="node_url",
                       help="signaling URL other nodes and clients use for this node")
    serve.add_argument("--node-pipe-ip", dest="node_pipe_ip",
                       help="address other nodes send pipe media to (default announced_ip "
                            "or rtc_ip)")
    token = sub.add_parser("token", help="print a join token signed with the configured secret")
    token.add_argument("--room", required=True, help="room id, or * for any room")
    token.add_argument("--identity", required=True, help="the peer's identity (its peer id)")
    token.add_argument("--role", required=True, choices=("host", "viewer"))
    token.add_argument("--ttl", default="1h", help="lifetime: seconds, or 30m, 1h, 7d "
                                                   "(default 1h)")
    token.add_argument("--name", help="display name")
    token.add_argument("--kid", help="key id: sign with this entry of auth_keys")
    token.add_argument("--config", help="TOML file with settings (auth_secret / auth_keys)")
    rooms = sub.add_parser("rooms", help="list, show or close rooms of a running server "
                                          "(admin API)")
    rooms.add_argument("action", choices=("list", "show", "close"))
    rooms.add_argument("room", nargs="?", help="room id (show, close)")
    rooms.add_argument("--reason", default="admin", help="close: the reason peers are told")
    rooms.add_argument("--url", default=None,
                       help="the server's signaling URL (default $PYSFU_ADMIN_URL or "
                            "http://127.0.0.1:8080)")
    rooms.add_argument("--admin-token", dest="admin_token", default=None,
                       help="bearer token (default $PYSFU_ADMIN_TOKEN); none: loopback only")
    return parser


def _rooms(args: argparse.Namespace) -> int:
    """``pysfu rooms list|show ID|close ID``: the admin API, JSON on stdout."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    base = (args.url or os.environ.get("PYSFU_ADMIN_URL") or "http://127.0.0.1:8080")
    token = args.admin_token or os.environ.get("PYSFU_ADMIN_TOKEN")
    if args.action != "list" and not args.room:
        sys.stderr.write(f"pysfu: rooms {args.action} needs a room id\n")
        return 2
    path, method = "/admin/rooms", "GET"
    if args.action == "show":
        path += "/" + quote(args.room, safe="")
    elif args.action == "close":
        path += f"/{quote(args.room, safe='')}/close?reason={quote(args.reason, safe='')}"
        method = "POST"
    request = urllib.request.Request(base.rstrip("/") + path, method=method,
                                     data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            sys.stderr.write(f"pysfu: {error['code']}: {error['message']}\n")
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(f"pysfu: HTTP {exc.code}\n")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"pysfu: cannot reach {base}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    return 0


_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d`` -> seconds; ValueError otherwise."""
    m = _TTL.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"--ttl {text!r}: give seconds or a number with s, m, h or d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _token(args: argparse.Namespace) -> int:
    from pysfu.auth import create_token

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"pysfu: {exc}\n")
        return 2
    if args.kid is not None:
        secret = (config.auth_keys or {}).get(args.kid)
        if secret is None:
            known = ", ".join(sorted(config.auth_keys or {})) or "none configured"
            sys.stderr.write(f"pysfu: --kid {args.kid!r} is not in auth_keys ({known})\n")
            return 2
    elif config.auth_secret is not None:
        secret = config.auth_secret
    else:
        why = ("auth_keys is set: name the key with --kid" if config.auth_keys
               else "no secret configured: set auth_secret in --config FILE or "
                    "PYSFU_AUTH_SECRET")
        sys.stderr.write(f"pysfu: {why}\n")
        return 2
    try:
        ttl = parse_ttl(args.ttl)
        token = create_token(secret, room=args.room, identity=args.identity, role=args.role,
                             now=time.time(), ttl=ttl, name=args.name, kid=args.kid)
    except ValueError as exc:
        sys.stderr.write(f"pysfu: {exc}\n")
        return 2
    sys.stdout.write(token + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command == "rooms":
        return _rooms(args)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        sys.stderr.write(f"pysfu: {exc}\n")  # logging is not configured yet
        return 2
    log.configure(config.log_level, config.log_format, config.log_aggregate_interval)
    logger = logging.getLogger("pysfu")
    from pysfu.server import StartupError

    forced = False
    try:
        stopped_by, forced = trio.run(_serve_until_signal, config)
    except KeyboardInterrupt:  # SIGINT before the signal receiver was in place
        log_event(logger, "server.stopped", reason="SIGINT", graceful=False)
        return 130
    except (StartupError, BaseExceptionGroup) as exc:
        failure = _startup_error(exc, StartupError)
        if failure is None:
            raise  # a bug: the traceback is the report
        log_event(logger, "server.failed", level=logging.ERROR, error=str(failure))
        return 1
    log_event(logger, "server.stopped", reason=stopped_by, graceful=not forced)
    # A graceful stop (SIGTERM or SIGINT, peers told, rooms closed) is a successful one; a
    # second signal cut it short: 128 + that signal, the shell's convention.
    if forced:
        return 128 + int(signal.Signals[stopped_by])
    return 0


async def _serve_until_signal(config: Config) -> tuple[str, bool]:
    """Run the server until SIGTERM or SIGINT, then stop gracefully (``Server.shutdown``:
    no new connections, peers told ``serverShuttingDown``, rooms closed after
    shutdown_grace). A second signal stops at once. Returns (the last signal's name, whether
    the stop was forced)."""
    from pysfu.server import Server, serve

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            name = signal.Signals(await signals.__anext__()).name
            forced = False
            log_event(logging.getLogger("pysfu"), "server.signal", signal=name,
                      grace=config.shutdown_grace,
                      hint="send the signal again to stop at once")

            async def second_signal() -> None:
                nonlocal forced, name
                async for signum in signals:
                    forced, name = True, signal.Signals(signum).name
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(second_signal)
            await server.shutdown()
            nursery.cancel_scope.cancel()
    return name, forced


def _startup_error(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` if it is a ``kind``, or the one ``kind`` inside exception groups holding
    nothing else (trio wraps errors of tasks in groups); else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None
