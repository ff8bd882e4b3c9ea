"""Browser tests of the chat demo: Debian's Chromium, headless, driven by Playwright's sync API
against the real server (tiny preset, CPU) on loopback.

- The server is the session's `live` fixture (tests/live_server.py, shared with tests/server;
  `live.settings(...)` swaps limits and keys for a `with` block).
- Chromium is Debian's (`apt-get install chromium`, see scripts/install-system-test-deps.sh),
  never Playwright's own download; without it every test here is skipped with the reason.
  Playwright's `launch()` gives the browser a fresh temporary profile (--user-data-dir) of its own.
- Screenshots of each state go to test-artifacts/screenshots/ (git-ignored):
  `desktop-<state>.png` (1280x800, light) and `phone-<state>.png` (390x844, dark).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
EXPECTED_HTTP_ERRORS = re.compile(r"Failed to load resource: the server responded with a status of (401|503)")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
    # a fake microphone that needs no permission prompt
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("NEXTGPT_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright Python package is not installed (pip install -e '.[test]')"
    if reason is None and chromium_path() is None:
        reason = "Debian's chromium is not installed (scripts/install-system-test-deps.sh)"
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: release it after this suite
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


class Page:
    """A Playwright page on the demo plus the checks every test wants: no script errors, and
    screenshots of a state at both widths."""

    def __init__(self, page, live, shots: Path):
        self.page = page
        self.live = live
        self.shots = shots
        self.errors: list[str] = []
        self.frames_in: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", self._console)
        page.on("websocket", self._watch_socket)
        # nothing the page loads may come from anywhere but the server (no CDN, no web fonts)
        page.on("request", lambda r: r.url.startswith((live.base_url + "/", "data:", "blob:"))
                or self.errors.append(f"request off the server: {r.url}"))

    def _console(self, message) -> None:
        # Chromium logs every non-2xx fetch; the page polls /ready (503 while loading) and probes
        # /v1/models (401 without a key) on purpose.
        if message.type == "error" and not EXPECTED_HTTP_ERRORS.search(message.text):
            self.errors.append(f"console: {message.text}")

    def _watch_socket(self, ws) -> None:
        ws.on("framereceived", lambda payload: self.frames_in.append(
            payload if isinstance(payload, str) else payload.decode("utf-8", "replace")))

    def open(self, wait_ready: bool = True) -> "Page":
        self.page.goto(self.live.base_url + "/")
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30_000) -> None:
        self.page.wait_for_selector('#app[data-conn="ready"]', timeout=timeout)

    def shot(self, name: str, *, phone: bool = True) -> None:
        """`desktop-<name>.png` at 1280x800 (light), then `phone-<name>.png` at 390x844 (dark)."""
        page = self.page
        page.set_viewport_size(DESKTOP)
        page.emulate_media(color_scheme="light")
        self._settle()
        page.screenshot(path=str(self.shots / f"desktop-{name}.png"), animations="disabled")
        if phone:
            page.set_viewport_size(PHONE)
            page.emulate_media(color_scheme="dark")
            self._settle()
            page.screenshot(path=str(self.shots / f"phone-{name}.png"), animations="disabled")
            page.set_viewport_size(DESKTOP)
            page.emulate_media(color_scheme="light")

    def _settle(self) -> None:
        # the conversation follows the newest message on the next frame
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.evaluate("() => { const s = document.getElementById('scroller'); s.scrollTop = s.scrollHeight; }")

    def frames(self, kind: str) -> list[dict]:
        import json

        out = []
        for text in self.frames_in:
            try:
                msg = json.loads(text)
            except ValueError:
                continue
            if msg.get("type") == kind:
                out.append(msg)
        return out


@pytest.fixture()
def ui(browser, live, shots_dir):
    context = browser.new_context(viewport=DESKTOP, color_scheme="light", accept_downloads=True,
                                  permissions=["microphone"])
    context.set_default_timeout(30_000)
    page = Page(context.new_page(), live, shots_dir)
    try:
        yield page
        assert not page.errors, page.errors
    finally:
        context.close()


@pytest.fixture(scope="session")
def media_files(tmp_path_factory) -> dict[str, Path]:
    """Files a person would attach: a picture, a sound, a clip, a broken PNG and a text file."""
    from tests.samples import mp4, png, wav

    d = tmp_path_factory.mktemp("attach")
    files = {
        "image": d / "red-circle.png",
        "audio": d / "tone.wav",
        "video": d / "moving-square.mp4",
        "garbage": d / "holiday.png",
        "text": d / "notes.txt",
        "long_audio": d / "long-tone.wav",
    }
    files["image"].write_bytes(png((220, 40, 60), (96, 72)))
    files["audio"].write_bytes(wav(440.0, 1.0))
    files["video"].write_bytes(mp4(frames=8, size=(64, 48)))
    files["garbage"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))  # a PNG's signature, then noise
    files["text"].write_text("not media\n")
    files["long_audio"].write_bytes(wav(330.0, 3.0))  # ~96 KB
    return files
