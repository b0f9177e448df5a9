"""Headless Chromium (Debian's package) driven by Playwright: UI screenshots and browser tests.

Playwright drives the system browser (`/usr/bin/chromium`), so no browser is downloaded;
`ensure_chromium()` installs Debian's `chromium` (and a font) when it is missing.
"""

import contextlib
import os
import shutil
import subprocess
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


CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """The path of Debian's Chromium, installing it with apt-get first if needed (as root)."""
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError(f"{CHROMIUM} is missing: install Debian's `chromium` package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return CHROMIUM


@contextlib.contextmanager
def open_page(width: int = 1600, height: int = 1000):
    """A Playwright page in a fresh profile of /usr/bin/chromium."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=ensure_chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()
