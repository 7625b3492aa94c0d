"""log_format = json, and repeated warnings aggregated per event and reason per interval."""

from __future__ import annotations

import io
import json
import logging

from pysfu.log import JsonFormatter, WarningAggregator, log_event


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("pysfu.test.format")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def test_json_lines_carry_the_event_and_its_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log_event(_logger(handler), "room.closed", room="r 1", reason="empty", count=3)
    line = json.loads(out.getvalue())
    assert line["event"] == "room.closed" and line["level"] == "info"
    assert (line["room"], line["reason"], line["count"]) == ("r 1", "empty", 3)
    assert line["ts"].endswith("Z")


def test_a_flood_of_one_warning_is_one_line_per_reason_per_interval() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    now = [0.0]
    handler.addFilter(WarningAggregator(10.0, clock=lambda: now[0]))
    logger = _logger(handler)
    for i in range(10_000):
        now[0] = i * 0.001  # 10 s of flood
        log_event(logger, "limit.refused", level=logging.WARNING, reason="a")
        log_event(logger, "limit.refused", level=logging.WARNING, reason="b")
    log_event(logger, "engine.panic", level=logging.ERROR, panic="x")  # errors always pass
    now[0] = 10.5
    log_event(logger, "limit.refused", level=logging.WARNING, reason="a")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["event"], x.get("reason")) for x in lines] == [
        ("limit.refused", "a"), ("limit.refused", "b"), ("engine.panic", None),
        ("limit.refused", "a")]
    assert lines[-1]["suppressed_before"] == 9_999
