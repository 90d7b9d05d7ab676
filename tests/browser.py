"""Headless Chromium for the tests that open a page: Debian's chromium through Playwright, with the flags the
issues name and a fresh profile folder; console errors, page errors and every requested URL are collected.

    with chromium_page(tmp_path / "profile") as (page, errors, requests):
        page.goto(url)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make setup installs it)")


@contextmanager
def chromium_page(profile: Path, width: int = 1280, height: int = 900) -> Iterator[tuple]:
    """(page, console and page errors, requested URLs), closed on the way out."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                    args=FLAGS, viewport={"width": width, "height": height})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            yield page, errors, requests
        finally:
            ctx.close()
