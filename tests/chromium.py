"""Open a local HTML file in Debian's headless Chromium (through Playwright) and record what the page did.

Playwright's own browser downloads are never used: the system's /usr/bin/chromium is launched. Without it (or
without the playwright package) the calling test is skipped, or failed where INTERP_AUDIT_REQUIRE_BROWSER=1
(CI, whose `make test` installs Chromium first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("INTERP_AUDIT_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every request other than the file itself and data: URIs
    dialogs: list[str] = field(default_factory=list)  # "alert: 1", ...
    sections: list[str] = field(default_factory=list)  # ids of the visible <section> elements, in page order
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # full-page PNG
    viewport: dict = field(default_factory=lambda: dict(VIEWPORT))


def _unavailable(reason: str):
    if os.environ.get("INTERP_AUDIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (INTERP_AUDIT_REQUIRE_BROWSER=1; `make browser` installs Chromium)")
    pytest.skip(reason)


def open_in_chromium(html_path: str | Path) -> PageCheck:
    """Load the file in headless Chromium, with every other request aborted and recorded."""
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")

    url = Path(html_path).resolve().as_uri()
    check = PageCheck()

    def route(route):
        request_url = route.request.url
        if request_url == url or request_url.startswith("data:"):
            route.continue_()
        else:
            if request_url not in check.requests:
                check.requests.append(request_url)
            route.abort()

    def on_request(request):  # requests a route does not see (e.g. made by the browser itself for the page)
        if request.url != url and not request.url.startswith("data:") and request.url not in check.requests:
            check.requests.append(request.url)

    def on_dialog(dialog):
        check.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on(
                "console",
                lambda message: check.console_errors.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: check.page_errors.append(str(error)))
            page.on("dialog", on_dialog)
            page.on("request", on_request)
            page.route("**/*", route)
            page.goto(url, wait_until="load")
            check.sections = page.eval_on_selector_all(
                "section", "nodes => nodes.filter(n => n.checkVisibility() && n.offsetHeight > 0).map(n => n.id)"
            )
            check.text = page.inner_text("body")
            check.screenshot = page.screenshot(full_page=True, type="png")
        finally:
            browser.close()
    return check
