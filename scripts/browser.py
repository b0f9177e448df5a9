"""Headless Chromium (Debian's package) driven by Playwright, for the UI screenshots."""

import contextlib
import tempfile

# Without the networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@contextlib.contextmanager
def open_page(width: int = 1600, height: int = 1000):
    """A Playwright page in a fresh profile of /usr/bin/chromium."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()
