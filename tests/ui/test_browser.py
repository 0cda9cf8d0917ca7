"""The dashboard in a real browser: `streamlit run` on a free loopback port, every page in headless Chromium.

Needs Playwright (dev dependency) and Debian's Chromium at /usr/bin/chromium (`.ci/run` installs
it); skipped locally without them, a failure in CI (CI=true). Screenshots of every page are saved
under $SSLMRI_SCREENSHOTS (default: this test's temporary folder); the path is printed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard_store import populate_full_store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("SSLMRI_CHROMIUM", "/usr/bin/chromium"))
START_TIMEOUT_S = 90
PAGE_TIMEOUT_MS = 60_000
EXCEPTION_MARKERS = ("Traceback (most recent call last)", "StreamlitAPIException")


def _require_browser() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[dev]')"
    if problem is None and not CHROMIUM.exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    _require_browser()
    url, ids = populate_full_store(tmp_path_factory.mktemp("browser-store"))
    port = _free_port()
    env = {**os.environ, "SSLMRI_DB": url, "PYTHONUNBUFFERED": "1"}
    log = tmp_path_factory.mktemp("browser-log") / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "Home.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--server.fileWatcherType", "none"],  # usage statistics and the toolbar: .streamlit/config.toml
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, ids
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_page(server: tuple[str, dict[str, int]]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        # Streamlit scrolls inside its own container, so a full-page screenshot is only as tall as the window.
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SSLMRI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


def _settle(page: object) -> None:
    """Wait until Streamlit has finished running the script: no running indicator for 2 s in a row
    (it appears only after a short delay, so one look is not enough)."""
    page.wait_for_selector('[data-testid="stApp"]')  # type: ignore[attr-defined]
    quiet_since = None
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        running = page.locator('[data-testid^="stStatusWidgetRunning"]').count()  # type: ignore[attr-defined]
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 2.0:
            return
        page.wait_for_timeout(250)  # type: ignore[attr-defined]
    pytest.fail("the page was still running after the timeout")


def _open(page: object, base: str, path: str, heading: str, shots: Path, name: str) -> str:
    page.goto(f"{base}/{path}")  # type: ignore[attr-defined]
    page.get_by_role("heading", name=heading).first.wait_for()  # type: ignore[attr-defined]
    _settle(page)
    text = page.inner_text("body")  # type: ignore[attr-defined]
    assert not any(marker in text for marker in EXCEPTION_MARKERS), text[:2000]
    assert page.locator('[data-testid="stException"]').count() == 0  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]
    return text


def test_every_page_renders_in_chromium(server: tuple[str, dict[str, int]], browser_page: object, shots: Path) -> None:
    base, ids = server
    page = browser_page
    text = _open(page, base, "", "sslmri — SimCLR for brain MRI", shots, "1_home")
    assert "Full labels: each arm in the latest experiment per task" in text and "Data audit" in text
    assert page.get_by_role("button", name="Deploy").count() == 0  # type: ignore[attr-defined]
    text = _open(page, base, f"Runs?run={ids['scan_ssl']}", "Runs", shots, "2_runs")
    assert f"Run #{ids['scan_ssl']}" in text
    text = _open(page, base, "SSL_vs_Supervised", "SSL vs supervised", shots, "3_ssl_vs_supervised")
    assert "Paired differences: SSL arm minus baseline" in text
    assert page.locator(".js-plotly-plot").count() >= 2  # type: ignore[attr-defined]
    text = _open(page, base, f"Confusion?run={ids['scan_ssl']}", "Confusion matrices", shots, "4_confusion")
    assert page.locator(".js-plotly-plot").count() >= 1  # type: ignore[attr-defined]
    text = _open(page, base, "Embeddings", "Embeddings", shots, "6_embeddings")
    assert "Colour by" in text
    text = _open(page, base, "Data", "Data sets and audits", shots, "7_data")
    assert "Files that could not be used" in text


def test_scan_explorer_opacity_slider_changes_the_image(
    server: tuple[str, dict[str, int]], browser_page: object, shots: Path
) -> None:
    base, ids = server
    page = browser_page
    text = _open(page, base, f"Scan_Explorer?run={ids['scan_ssl']}", "Scan Explorer", shots, "5_scan_explorer")
    assert "Prediction:" in text and "Upload a slice" in text
    image = page.locator('[data-testid="stImage"] img').first  # type: ignore[attr-defined]
    before = image.screenshot()
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Overlay opacity")  # type: ignore[attr-defined]
    thumb = slider.get_by_role("slider")
    thumb.focus()
    for _ in range(8):  # 0.4 -> 0.8 in steps of 0.05
        thumb.press("ArrowRight")
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    _settle(page)
    after = page.locator('[data-testid="stImage"] img').first.screenshot()  # type: ignore[attr-defined]
    assert after != before, "moving the opacity slider changes the overlay"
    page.screenshot(path=str(shots / "5_scan_explorer_opacity_0.8.png"), full_page=True)  # type: ignore[attr-defined]
