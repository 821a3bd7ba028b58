"""Headless Chromium through Playwright, for the tests that look at pages as a person would."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "reports" / "test-artifacts"
# Without these, Chromium reaches for Google's hosts at start; this machine's network refuses them.
QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


@contextlib.contextmanager
def browser(extra_args: list[str] = ()):
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*QUIET, *extra_args])
        try:
            yield b
        finally:
            b.close()


def shows(locator, count: int) -> None:
    """Wait (Playwright's 5 s) until `locator` matches `count` elements. A filter set from a link's hash is applied
    by the page's hashchange handler, after the click that followed the link has returned."""
    from playwright.sync_api import expect

    expect(locator).to_have_count(count)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
