"""The audit report in a real browser: headless Chromium loads index.html without console
errors, every section and image is present, and a screenshot is taken."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HARDENED_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.browser


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_renders_in_headless_chromium(tiny_audit, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    result, folder, _, _ = tiny_audit
    page_path = folder / "index.html"
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri(), wait_until="load")
        sections = page.eval_on_selector_all("section[data-stage]", "els => els.map(e => e.id)")
        images = page.eval_on_selector_all(
            "figure img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
        )
        verdict = page.inner_text("#verdict")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == [], f"console errors: {errors}"
    assert sections == [s.name for s in result.stages]
    expected_images = sum(len(s.figures) for s in result.stages)
    assert len(images) == expected_images and expected_images >= 4
    assert all(complete and width > 50 and height > 50 for complete, width, height in images)
    assert "%" in verdict
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("HARDENED_KEEP_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot.read_bytes())
