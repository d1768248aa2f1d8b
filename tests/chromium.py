"""Debian's Chromium for the browser tests: where it is, how it starts, where screenshots go."""

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def playwright_api() -> ModuleType:
    """playwright.sync_api: `make test` installs it, so in CI a missing Playwright fails, elsewhere it skips."""
    if os.environ.get("CI") == "true":
        return importlib.import_module("playwright.sync_api")
    return pytest.importorskip("playwright.sync_api")


def chromium_path() -> Path:
    """The browser's path; a missing browser fails the test in CI and skips it elsewhere."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} missing (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def launch(playwright):
    """A headless Chromium from a started Playwright."""
    return playwright.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
