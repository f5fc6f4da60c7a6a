"""Fixtures of the browser tests: Debian's ``chromium`` driven by Playwright, and real uvicorn servers.

The browser is the system's ``chromium`` (``apt-get install -y chromium``), passed to Playwright as
``executable_path``: nothing is downloaded. Screenshots go to ``test-artifacts/ui/`` at the
repository root (git-ignored; ``PRUNESEARCH_UI_ARTIFACTS`` overrides it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.api import web
from service.app import create_app
from service.settings import Settings
from tests.service.live_server import live_server

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]


def chromium_executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def ui_artifacts() -> Path:
    """Where screenshots are saved (printed once, so a CI log says where to find them)."""
    path = Path(os.environ.get("PRUNESEARCH_UI_ARTIFACTS", ROOT / "test-artifacts" / "ui"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip("the 'chromium' binary is not installed (apt-get install -y chromium); the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def with_web(app: Any) -> Any:
    """``app`` serving the UI (``service.api.web``), unless the app factory already mounts it."""
    if not any(getattr(route, "path", None) == "/static/{path:path}" for route in app.routes):
        app.include_router(web.router)
    return app


@contextmanager
def ui_server(*, runner: bool) -> Iterator[tuple[str, Any]]:
    """A real uvicorn server (temp SQLite + artifacts dir) serving the API and the UI: ``(url, app)``."""
    with tempfile.TemporaryDirectory(prefix="ps-ui-") as tmp:
        d = Path(tmp)
        settings = Settings(database_url=f"sqlite:///{d / 'ps.db'}", data_dir=d, artifacts_dir=d / "artifacts",
                            runner=runner, max_concurrent_trials=1)
        app = with_web(create_app(settings, start_runner=runner))
        app.state.sse_poll_s = 0.1
        with live_server(app) as url:
            yield url, app


@pytest.fixture(scope="module")
def browser_context(browser: Any) -> Iterator[Any]:
    """One context per module: its pages share the HTTP cache (and V8's code cache), as a person's tabs do."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def new_page(browser_context: Any) -> Iterator[Callable[..., Any]]:
    """``new_page(width=1280, height=800)``: a new tab; the test fails if the page throws an uncaught error."""
    pages: list[Any] = []
    errors: list[str] = []

    def make(width: int = 1280, height: int = 800) -> Any:
        page = browser_context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        pages.append(page)
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for page in pages:
        page.close()
    assert not errors, f"uncaught errors in the page: {errors}"
