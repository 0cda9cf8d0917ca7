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


def _plot(page: object, kind: str) -> object:
    """The Plotly chart on the page with a trace of ``kind`` ("image": the slice viewer, "bar": the strip)."""
    page.wait_for_function(  # type: ignore[attr-defined]  # Plotly draws after the script has finished
        f"() => [...document.querySelectorAll('.js-plotly-plot')].some(el => (el._fullData || []).some("
        f"t => t.type === '{kind}'))")
    plots = page.locator(".js-plotly-plot")  # type: ignore[attr-defined]
    for i in range(plots.count()):
        if plots.nth(i).evaluate(f"el => (el._fullData || []).some(t => t.type === '{kind}')"):
            return plots.nth(i)
    pytest.fail(f"no Plotly chart with a {kind} trace on the page")


def _slice_text(page: object) -> str:
    """The shown slice as the caption above the image names it, e.g. ``2 of 3 · sub-00_slice-1.png``."""
    caption = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="Slice ").filter(  # type: ignore[attr-defined]
        has_text=" of ").first
    text = str(caption.inner_text()).strip()
    return text.removeprefix("Slice ").split(" · ")[0] + " · " + text.rsplit("/", 1)[-1]


def _rerun(page: object) -> None:
    page.wait_for_timeout(400)  # type: ignore[attr-defined]
    _settle(page)


def test_scan_explorer_opacity_slider_changes_the_image(
    server: tuple[str, dict[str, int]], browser_page: object, shots: Path
) -> None:
    base, ids = server
    page = browser_page
    text = _open(page, base, f"Scan_Explorer?run={ids['scan_ssl']}", "Scan Explorer", shots, "5_scan_explorer")
    assert "Prediction:" in text and "Upload a slice" in text and "How to read this page" in text
    assert "Patient sub-00:" in text
    before = _plot(page, "image").screenshot()  # type: ignore[attr-defined]
    _plot(page, "bar")
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / "5_scan_explorer.png"), full_page=True)  # type: ignore[attr-defined]
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Overlay opacity")  # type: ignore[attr-defined]
    thumb = slider.get_by_role("slider")
    thumb.focus()
    for _ in range(8):  # 0.4 -> 0.8 in steps of 0.05
        thumb.press("ArrowRight")
    _rerun(page)
    after = _plot(page, "image").screenshot()  # type: ignore[attr-defined]
    assert after != before, "moving the opacity slider changes the overlay"
    page.screenshot(path=str(shots / "5_scan_explorer_opacity_0.8.png"), full_page=True)  # type: ignore[attr-defined]


def test_scan_explorer_keyboard_strip_zoom_hover_and_report(
    server: tuple[str, dict[str, int]], browser_page: object, shots: Path
) -> None:
    """A clinician's tools in a real browser: → steps to the next slice, a click on the strip jumps to that slice,
    dragging a box on the image zooms (the axis range shrinks), the hover shows the grey and map values, and the
    report downloads as a PDF."""
    base, ids = server
    page = browser_page
    _open(page, base, f"Scan_Explorer?run={ids['scan_ssl']}", "Scan Explorer", shots, "5_scan_explorer_first")
    assert _slice_text(page).startswith("1 of 3 · sub-00_slice-2.png")  # the stored positions, not the names

    page.locator("h1").first.click()  # type: ignore[attr-defined]  # focus on the page, not in a widget
    page.keyboard.press("ArrowRight")  # type: ignore[attr-defined]
    _rerun(page)
    assert _slice_text(page).startswith("2 of 3 · sub-00_slice-1.png"), "→ moves to the next slice"
    page.keyboard.press("ArrowLeft")  # type: ignore[attr-defined]
    _rerun(page)
    assert _slice_text(page).startswith("1 of 3"), "← moves back"

    strip = _plot(page, "bar")
    bars = strip.locator("g.point path")  # type: ignore[attr-defined]
    assert bars.count() == 3
    boxes = sorted((b for b in (bars.nth(i).bounding_box() for i in range(3)) if b), key=lambda b: b["x"])
    page.mouse.click(boxes[2]["x"] + boxes[2]["width"] / 2, boxes[2]["y"] + boxes[2]["height"] / 2)  # type: ignore[attr-defined]
    _rerun(page)
    assert _slice_text(page).startswith("3 of 3 · sub-00_slice-3.png"), "clicking the strip shows that slice"
    page.screenshot(path=str(shots / "5_scan_explorer_strip_click.png"), full_page=True)  # type: ignore[attr-defined]

    viewer = _plot(page, "image")
    full = viewer.evaluate("el => el._fullLayout.xaxis.range.slice()")  # type: ignore[attr-defined]
    box = viewer.locator(".nsewdrag").first.bounding_box()  # type: ignore[attr-defined]
    assert box and abs(box["width"] - box["height"]) < 2, "the image is square"
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
    page.mouse.move(x0 + box["width"] * 0.1, y0 + box["height"] * 0.1)  # type: ignore[attr-defined]
    page.wait_for_timeout(300)  # type: ignore[attr-defined]
    hover = page.locator(".hoverlayer .hovertext").first.text_content() or ""  # type: ignore[attr-defined]
    assert "grey" in hover and ("map 0." in hover or "map 1." in hover), hover
    page.screenshot(path=str(shots / "5_scan_explorer_hover.png"), full_page=True)  # type: ignore[attr-defined]
    page.mouse.move(x0, y0)  # type: ignore[attr-defined]
    page.mouse.down()  # type: ignore[attr-defined]
    page.mouse.move(x0 + box["width"] * 0.3, y0 + box["height"] * 0.3, steps=8)  # type: ignore[attr-defined]
    page.mouse.up()  # type: ignore[attr-defined]
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    zoomed = viewer.evaluate("el => el._fullLayout.xaxis.range.slice()")  # type: ignore[attr-defined]
    assert zoomed[1] - zoomed[0] < 0.5 * (full[1] - full[0]), (full, zoomed)
    page.screenshot(path=str(shots / "5_scan_explorer_zoomed.png"), full_page=True)  # type: ignore[attr-defined]

    with page.expect_download() as info:  # type: ignore[attr-defined]
        page.get_by_role("button", name="Download report (PDF)").click()  # type: ignore[attr-defined]
    download = info.value
    assert download.suggested_filename == f"sslmri-report-run{ids['scan_ssl']}.pdf"
    assert Path(download.path()).read_bytes()[:4] == b"%PDF"
    from pypdf import PdfReader

    pdf = PdfReader(download.path())
    text = pdf.pages[0].extract_text()
    assert len(pdf.pages) == 1 and "not for diagnosis" in text and "Patient-level decision" in text
    assert "Git sha" in text and "Trained" in text  # the model as the issue names it: run, arm, data, date, sha


def _choose(page: object, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` by typing it, as a user does."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first  # type: ignore[attr-defined]
    box.click()
    page.keyboard.type(option)  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    _rerun(page)


def test_scan_explorer_nifti_patient_and_two_models(
    server: tuple[str, dict[str, int]], browser_page: object, shots: Path
) -> None:
    """A stored NIfTI patient opens like PNGs; two models side by side keep one image size."""
    base, ids = server
    page = browser_page
    _open(page, base, f"Scan_Explorer?run={ids['scan_ssl']}", "Scan Explorer", shots, "5_scan_explorer_reload")
    _choose(page, "Subject (patient)", "sub-90")
    page.get_by_text("gradcam computed now").first.wait_for()  # type: ignore[attr-defined]  # no stored map
    _settle(page)
    _plot(page, "image")
    text = page.inner_text("body")  # type: ignore[attr-defined]
    assert "Patient sub-90:" in text and "Cannot show this scan" not in text
    assert _slice_text(page).startswith("1 of 3 · sub-90_t1.nii.gz#z=1")
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / "5_scan_explorer_nifti.png"), full_page=True)  # type: ignore[attr-defined]
    _choose(page, "Subject (patient)", "sub-00")
    _choose(page, "Side by side with", f"#{ids['scan_scratch']}")
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => [...document.querySelectorAll('.js-plotly-plot')].filter(el => (el._fullData || []).some("
        "t => t.type === 'image')).length === 2")
    sizes = page.evaluate(  # type: ignore[attr-defined]
        "() => [...document.querySelectorAll('.js-plotly-plot')].filter(el => (el._fullData || []).some("
        "t => t.type === 'image')).map(el => [el._fullLayout.width, el._fullLayout.height])")
    assert sizes == [[432, 432], [432, 432]], sizes  # scan_figures.COMPARE_PX
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(shots / "5_scan_explorer_two_models.png"), full_page=True)  # type: ignore[attr-defined]
