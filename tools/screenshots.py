"""Full-page screenshots of every page of the built book, and what its figures say, for a reader's check.

Usage: ``python tools/screenshots.py [--html _build/html] [--out _build/screenshots] [--width 1280]``;
``make screenshots`` runs it after ``make book``. The built HTML is served on loopback and opened in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium); each page of
``_toc.yml`` is saved as ``<out>/<page>.png`` once it has loaded and its images are decoded, and
each captioned figure, with its caption, as ``<out>/<page>--<figure name>.png``. For
each page it prints the figures, how many have a caption and real alt text (not the image's file
name), so a missing caption shows without opening the pictures.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The page is ready: loaded, titled, every image decoded (or failed). Returns what the figures say.
READY = """
    if (document.readyState !== 'complete') return null;
    const h = document.querySelector('article h1');
    const images = Array.from(document.querySelectorAll('main img'));
    if (!h || !h.textContent.trim() || images.some(img => !img.complete)) return null;
    const outputs = Array.from(document.querySelectorAll('main .cell_output img'));
    return {title: h.textContent.replace(/#$/, '').trim(),
            images: outputs.length,
            captioned: outputs.filter(img => img.closest('figure') && img.closest('figure').querySelector('figcaption')).length,
            alt: outputs.filter(img => img.alt && !/\\.(png|svg|jpe?g)$/i.test(img.alt)).length,
            broken: outputs.filter(img => !img.naturalWidth).length};
"""


def pages(toc_path: Path) -> list[str]:
    """Return the book's pages in ``_toc.yml`` order, without their suffixes (``book/intro``)."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return [str(Path(f).with_suffix("")) if Path(f).suffix else f for f in files]


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve *directory* on a free loopback port; return the server and its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:  # no line per request
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def browser(width: int) -> object:
    """Start headless Chromium; raise FileNotFoundError naming the packages when it is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        msg = "Headless Chromium not found: apt-get install chromium chromium-driver, then run again."
        raise FileNotFoundError(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},1600"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    return chrome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        print(f"No built book in {args.html}: run `make book` first.", file=sys.stderr)
        return 1
    from selenium.webdriver.support.ui import WebDriverWait

    args.out.mkdir(parents=True, exist_ok=True)
    server, base = serve(args.html)
    chrome = browser(args.width)
    try:
        for page in pages(ROOT / "_toc.yml"):
            chrome.set_window_size(args.width, 1600)
            chrome.get(f"{base}/{page}.html")
            info = WebDriverWait(chrome, 60, poll_frequency=0.1).until(lambda d: d.execute_script(READY))
            height = chrome.execute_script("return document.documentElement.scrollHeight")
            chrome.set_window_size(args.width, min(max(height, 800), 30000))
            target = args.out / f"{Path(page).name}.png"
            partial = target.with_suffix(".png.part")
            partial.write_bytes(chrome.get_screenshot_as_png())
            partial.replace(target)  # never a half-written picture at the final path
            from selenium.webdriver.common.by import By

            for figure in chrome.find_elements(By.CSS_SELECTOR, "main figure[id]"):
                shot = args.out / f"{Path(page).name}--{figure.get_attribute('id')}.png"
                shot.with_suffix(".png.part").write_bytes(figure.screenshot_as_png)
                shot.with_suffix(".png.part").replace(shot)
            print(f"{target.relative_to(args.out.parent) if args.out.is_relative_to(ROOT) else target}: "
                  f"{info['title']!r}, {info['images']} figures, {info['captioned']} captioned, "
                  f"{info['alt']} with alt text, {info['broken']} broken")
    finally:
        chrome.quit()
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
