"""log_event: fields become logfmt pairs; exc_info/stack_info reach logging as such (they used
to be passed in ``extra``, where logging raises KeyError, so the error path itself crashed)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from pysfu.log import LogfmtFormatter, log_event


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("pysfu.test_log")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.handlers.clear()


def test_fields_are_logfmt(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    log_event(logger, "room.created", room="r1", peer="a b", count=3, missing=None)
    line = out.getvalue().strip()
    assert "level=info logger=pysfu.test_log event=room.created" in line
    assert 'room=r1 peer="a b" count=3' in line
    assert "missing" not in line
    assert "\n" not in line


def test_exc_info_true_logs_the_traceback(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    try:
        raise RuntimeError("boom in handler")
    except RuntimeError:
        log_event(logger, "request.crashed", level=logging.ERROR, request="join",
                  exc_info=True)
    line = out.getvalue().strip()
    assert "\n" not in line  # one line per event: the traceback is quoted with \\n
    assert "level=error" in line and "event=request.crashed" in line and "request=join" in line
    assert "exc=" in line and "Traceback" in line and "RuntimeError: boom in handler" in line
    assert "test_exc_info_true_logs_the_traceback" in line


def test_exc_info_exception_instance_and_group(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise ExceptionGroup("handler", [ValueError("inner one")])
    except ExceptionGroup as group:
        error = group
    log_event(logger, "connection.crashed", level=logging.ERROR, remote="127.0.0.1:5",
              exc_info=error)
    line = out.getvalue()
    assert "remote=127.0.0.1:5" in line
    assert "ExceptionGroup" in line and "ValueError: inner one" in line


def test_exc_info_outside_except_and_stack_info(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    log_event(logger, "odd", exc_info=True)  # no exception being handled: no exc= field
    log_event(logger, "where", stack_info=True)
    first, second = out.getvalue().strip().split("\n")
    assert "exc=" not in first and "NoneType" not in first
    assert "stack=" in second and "Stack (most recent call last)" in second


def test_reserved_field_names_do_not_raise(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    log_event(logger, "odd.fields", name="n", args="a", message="m", msg="x", module="y",
              asctime="t")
    line = out.getvalue()
    assert "event=odd.fields" in line
    for key in ("name_=n", "args_=a", "message_=m", "msg_=x", "module_=y", "asctime_=t"):
        assert key in line


def test_disabled_level_costs_nothing(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.setLevel(logging.WARNING)
    log_event(logger, "quiet", exc_info=True)
    assert out.getvalue() == ""
