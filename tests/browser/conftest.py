"""Browser test fixtures: a real diffgraph server on a loopback port (in a background thread) with a
stub node pack, and Debian's Chromium driven by the playwright package.

Chromium is never downloaded: it must be at /usr/bin/chromium (CI installs Debian's package); the tests
skip when it is missing. Screenshots go to the folder in DIFFGRAPH_ARTIFACTS (default: a tmp folder).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.stub_pack import STUB_PACK

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ServerThread:
    """Runs the aiohttp app on its own event loop in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None):
        from aiohttp import web

        self.app = app
        self.runner = web.AppRunner(app)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            # Everything on this thread: playwright's sync API owns an event loop on the main thread.
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.runner.setup())
                site = web.TCPSite(self.runner, "127.0.0.1", self.port)
                self.loop.run_until_complete(site.start())
            except BaseException as exc:  # reported to the test thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(timeout=30)
        if failure:
            raise failure[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop)
        future.result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def server_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dg_browser")
    pack = base / "custom_nodes" / "stub_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(STUB_PACK)
    return base


def start_server(base: Path, *, with_models: bool = False, port: int | None = None) -> ServerThread:
    """A real app (create_app) over the folders under `base` (its custom_nodes/ packs loaded)."""
    from engine.folders import Folders
    from engine.runtime import build_runtime
    from engine.server.app import create_app
    from engine.server.config import ServerConfig

    folders = Folders.create(base)
    folders.create_directories()
    runtime = build_runtime(folders, with_models=with_models)
    srv = ServerThread(create_app(runtime, ServerConfig(store_path=base / "queue.sqlite3")), port)
    srv.folders = folders  # type: ignore[attr-defined]
    return srv


@pytest.fixture(scope="session")
def server(server_base: Path) -> Iterator[ServerThread]:
    srv = start_server(server_base)
    yield srv
    srv.stop()


# Module scope: playwright's sync API keeps an event loop on the main thread while it is open, which
# would break later (non-browser) tests that call asyncio.run in the same session.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = "Chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
        if os.environ.get("DIFFGRAPH_REQUIRE_BROWSER"):
            pytest.fail(message + "; CI must run the browser tests (.ci/run installs it)")
        pytest.skip(message)
    import playwright.sync_api as playwright  # a test dependency: missing means a broken install

    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("DIFFGRAPH_ARTIFACTS") or tmp_path_factory.mktemp("browser_artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Console:
    """Console errors, uncaught page errors and failed HTTP responses, so tests can require zero of them.

    Chromium logs every 4xx/5xx response as a console error without its URL; those are checked by URL
    through `failed_responses` instead, against the (path, status) pairs a test expects.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.failed_responses: list[tuple[str, int]] = []
        self.allowed_responses: set[tuple[str, int]] = set()

    def allow_response(self, path: str, status: int) -> None:
        self.allowed_responses.add((path, status))

    def unexpected(self) -> list[str]:
        errors = [e for e in self.errors if not e.startswith("Failed to load resource: the server responded")]
        errors += [
            f"HTTP {status} {path}"
            for path, status in self.failed_responses
            if (path, status) not in self.allowed_responses
        ]
        return errors


@pytest.fixture
def page(browser: Any, server: ServerThread) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    )
    pg = context.new_page()
    console = Console()
    pg.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: console.errors.append(f"pageerror: {e}"))
    pg.on(
        "response",
        lambda r: (
            console.failed_responses.append((urlsplit(r.url).path, r.status)) if r.status >= 400 else None
        ),
    )
    pg.console = console
    app = server.app
    if not any(
        getattr(r, "canonical", "") in ("/workflows", "/api/workflows") for r in app.router.resources()
    ):
        # The examples menu probes GET /api/workflows; without that route the menu stays hidden.
        console.allow_response("/api/workflows", 404)
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    yield pg
    errors = console.unexpected()
    context.close()
    assert not errors, f"console errors: {errors}"
