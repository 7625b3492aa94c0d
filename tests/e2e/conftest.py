"""Fixtures for the browser end-to-end tests: a real `pysfu serve` subprocess and Debian's
Chromium driven by Playwright (sync API; these tests are plain functions, not trio).

No browser is ever downloaded: Playwright only drives /usr/bin/chromium
(scripts/install-browser.sh installs it). Without chromium or the `playwright` package the
tests are skipped, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pysfu.testing.ports import free_media_port, free_port

CHROMIUM = os.environ.get("PYSFU_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DIST = REPO / "pysfu" / "web" / "dist" / "index.html"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--auto-accept-this-tab-capture",
    "--auto-select-desktop-capture-source=Entire screen",
    "--enable-usermedia-screen-capturing",
]


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"e2e prerequisites missing under CI: {why}", pytrace=False)
    pytest.skip(why)


class SfuProcess:
    """`python -m pysfu serve` on free loopback ports; stderr goes to a log file."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.rtc_port = free_media_port()
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pysfu", "serve", "--port", str(self.port),
             "--rtc-port", str(self.rtc_port), "--metrics-port", "0"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while "event=server.listening" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pysfu serve exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pysfu serve did not start in 30 s:\n{self.log()}")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def sfu(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SfuProcess]:
    if not DIST.is_file():
        _missing(f"{DIST} is missing: build the page (cd pysfu/web && npm ci && npm run build)")
    server = SfuProcess(tmp_path / "pysfu-serve.log")
    request.node.pysfu_server = server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _playwright() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package 'playwright' is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"{CHROMIUM} not found: run scripts/install-browser.sh")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser_context(_playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium (persistent context on a temporary --user-data-dir) for the whole run;
    each test opens and closes its own pages (each page has its own sessionStorage)."""
    user_data_dir = tmp_path_factory.mktemp("chromium-profile")
    context = _playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1024, "height": 720},
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


class Pages:
    """Pages opened by one test: console output collected, all closed at the end."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base
        self.pages: list[tuple[str, Any]] = []
        self.console: list[str] = []

    def open(self, name: str, path: str, *, init_script: str | None = None) -> Any:
        """``init_script``: JavaScript run in the page before its own scripts."""
        page = self.context.new_page()
        if init_script is not None:
            page.add_init_script(init_script)
        page.on("console", lambda msg: self.console.append(f"[{name}] {msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"[{name}] pageerror: {exc}"))
        self.pages.append((name, page))
        page.goto(self.base + path)
        return page

    def dump(self) -> str:
        parts = []
        for name, page in self.pages:
            if page.is_closed():
                continue
            try:
                state = page.evaluate("() => window.pysfu && window.pysfu.state")
                stats = page.evaluate("async () => window.pysfu && await window.pysfu.stats()")
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                state, stats = f"<unavailable: {exc}>", None
            parts.append(f"--- {name} ({page.url})\nstate: {json.dumps(state, indent=1)}\n"
                         f"stats: {json.dumps(stats, indent=1)}")
        return "\n".join(parts)

    def close(self) -> None:
        for _, page in self.pages:
            if not page.is_closed():
                page.close()


@pytest.fixture
def pages(browser_context: Any, sfu: SfuProcess,
          request: pytest.FixtureRequest) -> Iterator[Pages]:
    opened = Pages(browser_context, sfu.base)
    request.node.pysfu_pages = opened
    try:
        yield opened
    finally:
        opened.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """On failure, attach what the browsers saw and the server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    opened = getattr(item, "pysfu_pages", None)
    if opened is not None:
        report.sections.append(("browser state and getStats()", opened.dump()))
        report.sections.append(("browser console", "\n".join(opened.console[-300:])))
    server = getattr(item, "pysfu_server", None)
    if server is not None:
        lines = server.log().splitlines()
        report.sections.append(("pysfu serve log (last 200 lines)", "\n".join(lines[-200:])))
        _save_artifact(item.name + ".server.log", server.log())
    if opened is not None:
        _save_artifact(item.name + ".console.log", "\n".join(opened.console))
        for name, page in opened.pages:
            if not page.is_closed():
                try:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"{_safe(item.name)}.{name}.png"))
                except Exception:  # noqa: BLE001, S110 - diagnostics only
                    pass


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _save_artifact(name: str, text: str) -> None:
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / _safe(name)).write_text(text)
    except OSError:
        pass


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: browser end-to-end test (Chromium + Playwright)")
