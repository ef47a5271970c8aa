"""The report in a real browser: headless Chromium (driven by selenium through the system's chromedriver) opens the
page of a small real run (stores written by compute_store, a metrics.json from tribute.evaluate, a run log) and
the checks run in the page itself: every image decoded (complete, natural width > 0), each table with its rows,
nothing wider than the viewport at a desktop and a phone width; a screenshot is saved.

Skipped only when no Chromium is installed (.ci/run installs Debian's chromium and chromium-driver)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("jinja2")
pytest.importorskip("safetensors")

import tribute  # noqa: E402
from tribute.run_directory import RunDirectory  # noqa: E402
from tribute.store import compute_store  # noqa: E402

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "")
                     if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no Chromium (or chromedriver) installed: .ci/run installs Debian's chromium "
                                       "and chromium-driver; apt-get install chromium chromium-driver")

METHODS = ("gradient", "integrated_gradients", "smoothgrad", "guided_backprop")
METRICS = ["aopc_morf", "insertion", "completeness_gap"]
SAMPLES, SHOWN = 9, 6


def small_run(path: Path) -> RunDirectory:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(96, 4)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(SAMPLES, 3, 16, 16, generator=g), torch.randint(0, 4, (SAMPLES,), generator=g)
    run = RunDirectory(path, create=True)
    run.write_inputs(x, names=[f"a-rather-long-photo-name-{i}-without-spaces-to-test-wrapping" for i in range(SAMPLES)],
                     labels=y, classes=["cat", "dog", "cow", "a class with a long name"])
    for m in METHODS:
        compute_store(run.store_path(m), model, (x, y), m, target="label", chunk_size=4,
                      **({"samples": 4} if m == "smoothgrad" else {}))
    run.write_metrics(tribute.evaluate(model, (x, y), METHODS, METRICS, target="label", progress=False))
    run.log({"command": "tribute explain", "seconds": 3.0, "seed": 0, "settings": {"methods": list(METHODS)},
             "versions": {"tribute": tribute.__version__, "torch": torch.__version__}})
    run.log({"command": "tribute evaluate", "seconds": 4.0, "seed": 0})
    return run


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    run = small_run(tmp_path_factory.mktemp("browser") / "run")
    return tribute.report(run.path, max_samples=SHOWN)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("Chromium is installed but selenium is not: pip install 'tribute[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="tribute-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


IMAGES = """return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight,
                                                          i.getBoundingClientRect().width]);"""
TABLE_ROWS = """return Object.fromEntries(Array.from(document.querySelectorAll('table')).map((t, k) =>
                    [t.id || ('table-' + k), t.tBodies[0] ? t.tBodies[0].rows.length : 0]));"""
# elements sticking out of the viewport on the right, except inside a horizontally scrolling box
OVERFLOW = """const w = window.innerWidth;
return Array.from(document.querySelectorAll('body *'))
  .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > w + 0.5)
  .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));"""


def load(browser, page: Path, width: int, height: int = 900) -> None:
    browser.set_window_size(width, height)
    browser.get(page.as_uri())
    browser.execute_script("return document.readyState")  # selenium waits for the load event on get()


def test_every_image_loads_and_tables_have_their_rows(browser, page):
    load(browser, page, 1280)
    images = browser.execute_script(IMAGES)
    # SHOWN samples × (the image + a map per method), two colour bars, a curve figure for aopc_morf and insertion
    assert len(images) == SHOWN * (1 + len(METHODS)) + 2 + 2
    broken = [k for k, (complete, w, h, _) in enumerate(images) if not (complete and w > 0 and h > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert all(shown > 0 for *_, shown in images)
    rows = browser.execute_script(TABLE_ROWS)
    assert rows["metric-table"] == len(METHODS)
    assert rows["store-table"] == len(METHODS)
    assert rows["version-table"] >= 2  # tribute and torch at least
    records = [v for k, v in rows.items() if k.startswith("table-")]
    assert len(records) == 2 and records[0] >= 4  # two run-log records; the first with command, seconds, seed, ...
    text = browser.execute_script("return document.body.innerText")
    assert f"showing the first {SHOWN} of {SAMPLES} samples" in text
    assert "aopc_morf ↑" in text and "completeness_gap ↓" in text


@pytest.mark.parametrize("width", [1280, 420])
def test_nothing_is_wider_than_the_viewport(browser, page, tmp_path, width):
    load(browser, page, width)
    assert browser.execute_script("return document.scrollingElement.scrollWidth <= window.innerWidth"), \
        browser.execute_script("return [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert browser.execute_script(OVERFLOW) == []
    height = browser.execute_script("return document.scrollingElement.scrollHeight")
    browser.set_window_size(width, min(height + 120, 8000))
    shot = tmp_path / f"report-{width}.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.size[0] > 0.8 * width and im.size[1] > 600
        # not a blank page: many distinct colours (maps, curves)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200
