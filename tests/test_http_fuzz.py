"""HTTP head fuzzing against the real listener (``python -m pysfu serve`` on loopback):
Hypothesis sends raw bytes (random, and request heads built from mutated parts); every
connection must end in a 2xx/4xx answer (101 for a valid upgrade) or a plain close, and the
server must stay up and log no error."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysfu.testing.ports import free_media_port, free_port

STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    log = tmp_path_factory.mktemp("http_fuzz") / "server.log"
    # The per-address connection rate (issue 13) would refuse most of the fuzz's connections
    # (a 503) before the head parser this fuzzes: lifted here.
    env = {**os.environ, "PYSFU_HTTP_TIMEOUT": "2", "PYSFU_WRITE_TIMEOUT": "2",
           "PYSFU_LOG_LEVEL": "info", "PYSFU_CONNECTIONS_PER_SECOND_PER_ADDRESS": "1e6",
           "PYSFU_CONNECTION_BURST_PER_ADDRESS": "1000000"}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pysfu", "serve", "--port", str(port),
             "--rtc-port", str(free_media_port()), "--metrics-port", "0"],
            stderr=err, env=env)
    try:
        deadline = time.monotonic() + 30
        while "event=server.listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield port, proc
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert "level=error" not in text and "Traceback" not in text, text[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        received = b""
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return received


METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b"get", b"G\x00T",
           b""]
TARGETS = [b"/", b"/ws", b"/app.js", b"/healthz", b"/index.html", b"*", b"/../../etc/passwd",
           b"/%00", b"/a\x00b", b"/" + b"a" * 300, b"http://x/", b"/?" + b"q" * 2000, b""]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1\x00", b"", b"http/1.1"]
NAMES = [b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
         b"Content-Length", b"Transfer-Encoding", b"Expect", b"X", b"Bad Name", b""]
VALUES = [b"127.0.0.1", b"websocket", b"Upgrade", b"dGhlIHNhbXBsZSBub25jZQ==", b"13", b"0",
          b"chunked", b"100-continue", b"-1", b"\xff\xfe", b"a\x00b", b"x" * 9000, b""]
SEPARATORS = [b"\r\n", b"\n", b"\r", b"\r\n "]

header = st.tuples(st.sampled_from(NAMES) | st.binary(max_size=20),
                   st.sampled_from([b": ", b":", b" : ", b""]),
                   st.sampled_from(VALUES) | st.binary(max_size=40))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    sep = draw(st.sampled_from(SEPARATORS))
    line = b" ".join([draw(st.sampled_from(METHODS) | st.binary(max_size=8)),
                      draw(st.sampled_from(TARGETS) | st.binary(max_size=60)),
                      draw(st.sampled_from(VERSIONS))])
    fields = [name + colon + value for name, colon, value in draw(st.lists(header, max_size=8))]
    data = sep.join([line, *fields]) + sep + sep
    data += draw(st.binary(max_size=64))  # a body, frames, junk
    if draw(st.booleans()):  # cut anywhere
        data = data[:draw(st.integers(0, len(data)))]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(heads(), st.binary(max_size=512)))
def test_http_heads(listener: tuple[int, subprocess.Popen], data: bytes) -> None:
    port, proc = listener
    answer = exchange(port, data)
    if answer:
        match = STATUS.match(answer)
        assert match, answer[:200]
        status = int(match.group(1))
        assert status == 101 or 200 <= status < 300 or 400 <= status < 500, answer[:200]
    assert proc.poll() is None


def test_still_serving_after_the_fuzz(listener: tuple[int, subprocess.Popen]) -> None:
    answer = exchange(listener[0], b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
