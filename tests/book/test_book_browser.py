"""The rendered book in a real browser: every chapter renders, shows its figures, has no errors.

The book is built from the notebooks' stored outputs (no execution: `make book` executes them) into a
temporary folder, served on loopback, and opened in headless Chromium (Debian's ``chromium`` and
``chromium-driver``). Screenshots of each chapter go to ``_build/screenshots/``.

Without Chromium the browser tests fail in CI (``CI=true``: ``ci.yml`` and ``.ci/run`` install it)
and are skipped elsewhere, with the reason and the command that installs it.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (f"headless Chromium is not installed (chromium: {CHROMIUM}, chromedriver: {CHROMEDRIVER}); "
           "install it with `apt-get install chromium chromium-driver`")


def _require_chromium() -> None:
    """Fail in CI (``CI=true``), skip elsewhere, when Chromium or its driver is missing."""
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {MISSING}: CI must run the browser test of the rendered book",
                    pytrace=False)
    pytest.skip(f"{MISSING}; the browser test of the rendered book is skipped (outside CI only)")


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the book from stored outputs into a temporary folder; return its html folder."""
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (out / "_config.yml").write_text(yaml.safe_dump(config))
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT),
           "--path-output", str(out), "--config", str(out / "_config.yml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def base_url(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _page(chapter: str) -> str:
    return chapter.rsplit(".", 1)[0] + ".html" if "." in Path(chapter).name else chapter + ".html"


def _is_notebook(chapter: str) -> bool:
    return (ROOT / chapter).suffix == ".ipynb" or (ROOT / f"{chapter}.ipynb").exists()


#: What the page must show before it is checked: loaded, titled, its images decoded (or failed).
READY = """
    if (document.readyState !== 'complete') return null;
    const h = document.querySelector('article h1');
    const images = Array.from(document.querySelectorAll('main img'));
    if (!h || !h.textContent.trim() || images.some(img => !img.complete)) return null;
    return {title: h.textContent,
            images: images.map(img => [img.src, img.naturalWidth, img.naturalHeight])};
"""


def _load(browser, url: str, what: str) -> dict:
    """Open *url* and wait (up to 60 s) until :data:`READY` holds: never read a page half-rendered."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    try:
        return WebDriverWait(browser, 60, poll_frequency=0.1).until(lambda d: d.execute_script(READY))
    except TimeoutException:
        state = browser.execute_script(
            "return [document.readyState, !!document.querySelector('article h1'), "
            "Array.from(document.querySelectorAll('main img')).filter(i => !i.complete).length]")
        raise AssertionError(f"{what}: not ready after 60 s (readyState, has h1, images pending) = "
                             f"{state}") from None


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_renders_in_chromium(chapter, browser, base_url):
    """Title, figures loaded with a real size, no error output anywhere."""
    from selenium.webdriver.common.by import By

    page = _load(browser, f"{base_url}/{_page(chapter)}", chapter)
    assert page["title"].strip("# \n"), f"{chapter}: no title"
    errors = browser.execute_script("""
        return Array.from(document.querySelectorAll('.output.traceback, .output.error, div.output_error, .cell_output .traceback'))
          .map(el => el.innerText.slice(0, 300));
    """)
    assert errors == [], f"{chapter}: error output {errors}"
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "Traceback (most recent call last)" not in text, f"{chapter}: a traceback on the page"
    images = page["images"]
    for src, width, height in images:
        assert width > 0 and height > 0, f"{chapter}: image not loaded: {src[:80]}"
    if _is_notebook(chapter):
        assert images, f"{chapter}: a chapter without a single figure"
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(max(height, 800), 16000))
    browser.save_screenshot(str(shots / (Path(chapter).stem + ".png")))
    browser.set_window_size(1280, 1600)


def test_navigation_reaches_every_chapter(browser, base_url):
    """The sidebar of the first page links to every chapter, and each link loads."""
    from selenium.webdriver.common.by import By

    _load(browser, f"{base_url}/{_page(_chapters()[0])}", _chapters()[0])
    links = {a.get_attribute("href").split("#")[0]
             for a in browser.find_elements(By.CSS_SELECTOR, "nav a.reference.internal, .bd-sidebar a")}
    for chapter in _chapters()[1:]:
        assert any(link.endswith(_page(chapter)) for link in links), f"no navigation link to {chapter}"


def test_api_page_lists_every_public_name_and_chapters_link_to_it(site):
    """Every name in abc_helpers.__all__ has an entry on the API page; each chapter links there."""
    import abc_helpers

    api = (site / "book" / "api.html").read_text()
    missing = [name for name in abc_helpers.__all__ if f'id="abc_helpers.{name}"' not in api]
    assert missing == [], f"not on the API page: {missing}"
    for chapter in _chapters():
        if _is_notebook(chapter):
            html = (site / _page(chapter)).read_text()
            assert 'href="api.html#abc_helpers.' in html, f"{chapter} links to no API entry"
