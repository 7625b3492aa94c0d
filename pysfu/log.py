"""Structured logs: one line per event, ``key=value`` pairs (logfmt), ids always as fields.

Usage: ``log_event(logger, "transport.created", room=room_id, peer=peer_id, transport=tid)``.
"""

from __future__ import annotations

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


def configure(level: str = "info") -> None:
    """Send pysfu's logs to stderr in logfmt."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("pysfu")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
