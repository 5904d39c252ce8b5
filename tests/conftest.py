"""Fixtures that several test files use. What they serve is made by synthetic.py."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from synthetic import drawn_test_set

import mnistlab.study
from mnistlab.server import make_server


@contextmanager
def serving(models, test_set=drawn_test_set, log=None, **options):
    """A server for `models` on a free port, in a thread, until the block ends; yields the server.
    Its test set ("try a test digit") is the drawn digits unless `test_set` says otherwise."""
    server = make_server(models, port=0, test_set=test_set, log=log, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serving_on_port(models, test_set=drawn_test_set, **options):
    """As `serving`, yielding the server's port."""
    with serving(models, test_set, **options) as server:
        yield server.server_address[1]


@pytest.fixture(scope="session")
def running_server():
    """running_server(models, test_set=..., log=None, limits=Limits(), study=None) -> a context manager: see `serving`."""
    return serving


@pytest.fixture(scope="session")
def running():
    """running(models, test_set=..., limits=Limits(), study=None) -> a context manager that yields the port of a running server."""
    return serving_on_port


@pytest.fixture
def progress_events(monkeypatch) -> list[tuple[str, int]]:
    """The (event, run index) calls that a study makes to its Progress, in order: start, epoch, end."""
    calls = []

    class Recording(mnistlab.study.Progress):
        def started(self, i):
            calls.append(("start", i))
            super().started(i)

        def epoch_done(self, i):
            calls.append(("epoch", i))
            super().epoch_done(i)

        def ended(self, i):
            calls.append(("end", i))
            super().ended(i)

    monkeypatch.setattr(mnistlab.study, "Progress", Recording)
    return calls


CHROMIUM = Path(os.environ.get("MNISTLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless Chromium driven by Playwright, for the module; skips without either."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make browser)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    with sync_api.sync_playwright() as playwright:  # Playwright gives it a new, empty profile
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
