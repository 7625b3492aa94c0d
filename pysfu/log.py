"""Structured logs: one line per event, ``key=value`` pairs (logfmt) or one JSON object
(``log_format = json``), ids always as fields.

Usage: ``log_event(logger, "transport.created", room=room_id, peer=peer_id, transport=tid)``.

Repeated warnings are aggregated (``WarningAggregator``, a logging filter on the handler): the
first WARNING of an event (per ``reason`` field) in an interval is logged, the others of that
interval are only counted; the next line of that kind after the interval carries the count
(``suppressed_before=N``). A flood is one line per reason per interval: it cannot fill a
disk.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """Renders ``ts level logger event k=v ...``; fields come from ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and value is not None:
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        if record.stack_info:
            parts.append(f"stack={_quote(record.stack_info)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
            "logger": record.name, "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and value is not None:
                out[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out)


class WarningAggregator(logging.Filter):
    """Lets through the first WARNING of each (event, reason) per ``interval`` seconds; the
    rest are counted, and the next line of that kind let through carries the count
    (``suppressed_before``) and the window (``suppressed_seconds``). Errors always go
    through."""

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}  # -> (start, suppressed)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (str(record.msg), str(getattr(record, "reason", "")))
        now = self.clock()
        start, suppressed = self._windows.get(key, (None, 0))
        if start is not None and now - start < self.interval:
            self._windows[key] = (start, suppressed + 1)
            return False
        self._windows[key] = (now, 0)
        if len(self._windows) > 4096:  # bounded: forget windows long over
            self._windows = {k: v for k, v in self._windows.items()
                             if now - v[0] < self.interval}
        if suppressed:
            record.suppressed_before = suppressed
            record.suppressed_seconds = round(now - start, 3) if start is not None else None
        return True


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one event with its fields (room, peer, transport, ... ids).

    ``exc_info`` (True, an exception or an exc_info tuple) and ``stack_info`` are passed to
    ``logging`` as such, so the record carries the traceback (``exc=`` in the line). A field
    named like a ``LogRecord`` attribute (``name``, ``args``, ...) is logged with a trailing
    ``_`` instead of making ``logging`` raise: logging an event must never fail.
    """
    if not logger.isEnabledFor(level):
        return
    exc_info = fields.pop("exc_info", None)
    stack_info = bool(fields.pop("stack_info", False))
    extra = {(f"{key}_" if key in _RESERVED or key == "asctime" else key): value
             for key, value in fields.items()}
    logger.log(level, event, exc_info=exc_info, stack_info=stack_info, extra=extra,
               stacklevel=2)


def configure(level: str = "info", fmt: str = "logfmt",
              aggregate_interval: float | None = None) -> None:
    """Send pysfu's logs to stderr in logfmt or JSON; with ``aggregate_interval``, repeated
    warnings are aggregated (``WarningAggregator``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    if aggregate_interval:
        handler.addFilter(WarningAggregator(aggregate_interval))
    root = logging.getLogger("pysfu")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
