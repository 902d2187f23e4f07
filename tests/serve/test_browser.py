"""End to end in a real browser: ``pleura serve`` on a free port, a simulated clip uploaded through the page in
headless Chromium (the system's, driven by Playwright for Python through ``executable_path``: no browser
download), and the diagnosis, the overlay video and the biomarkers checked on the page; a screenshot is saved.

Skipped, with the reason, when Playwright or Chromium is absent (``apt-get install chromium``; ``.ci/run`` does it).
``PLEURA_SERVE_CLIP=FILE`` analyses another file and ``PLEURA_SERVE_SCREENSHOT=PNG`` keeps the screenshot there
(docs/serve.png is made so, from a real POCUS clip: see docs/serve.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pleura.data.synthetic import write_clip
from pleura.simulate.writer import simulate_clip

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is absent: pip install -e '.[dev]'")
CHROMIUM = next(
    (p for p in (os.environ.get("PLEURA_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")) if p),
    None,
)  # fmt: skip
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is absent: apt-get install chromium (.ci/run installs it)"),
    pytest.mark.slow,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``pleura serve`` (the command, in its own process) on a free port, with the shipped model."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pleura", "serve", "--port", str(port)], stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "api/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pleura serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated 20-frame clip (COVID-19 scene, curvilinear probe) as MP4, or ``PLEURA_SERVE_CLIP``."""
    if os.environ.get("PLEURA_SERVE_CLIP"):
        return Path(os.environ["PLEURA_SERVE_CLIP"])
    _, frames = simulate_clip(5, 0, "covid", "curvilinear", 128, 20)
    return write_clip(tmp_path_factory.mktemp("clip") / "simulated R3.mp4", np.stack([f.image for f in frames]))


def test_upload_a_clip_through_the_page(server: str, clip: Path, tmp_path: Path) -> None:
    shot = Path(os.environ.get("PLEURA_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server)
            page.wait_for_selector("body[data-ready=true]")
            assert "Not a medical device" in page.inner_text("#notice")
            assert "pocus-foundation-w16-128" in page.inner_text("#model")
            page.set_input_files("#pick", str(clip))

            page.wait_for_selector(".result .diagnosis", timeout=120_000)
            diagnosis = page.inner_text(".result .diagnosis")
            assert diagnosis in ("covid", "pneumonia", "normal", "No diagnosis")
            assert len(page.query_selector_all(".probs .fill")) == 3
            # the overlay video is in the page and Chromium decodes it (its size is known once metadata loads)
            page.wait_for_function("() => { const v = document.querySelector('video.overlay'); "
                                   "return v && v.readyState >= 1 && v.videoWidth > 0; }", timeout=30_000)  # fmt: skip
            # the biomarkers table, the per-frame timeline, and the player with a toggle per class and Grad-CAM
            biomarkers = page.inner_text(".biomarkers")
            assert "b line count" in biomarkers and "aeration score" in biomarkers
            assert page.query_selector(".timeline") is not None
            toggles = page.inner_text(".player .toggles")
            assert "b line" in toggles and "Grad-CAM" in toggles
            page.click(".player .toggles label:has-text('Grad-CAM') input")  # toggling redraws without an error
            links = [a.get_attribute("href") for a in page.query_selector_all(".downloads a")]
            assert any("predictions.json" in h for h in links) and any("annotated.mp4" in h for h in links)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
