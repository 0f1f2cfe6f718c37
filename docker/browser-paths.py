"""Point every Chromium build Playwright's driver names at the image's Chromium.

Run once by docker/Dockerfile.browser. Playwright looks for its browsers under
PLAYWRIGHT_BROWSERS_PATH, in directories named after the revisions in its driver's
browsers.json; each path it could look at (the current Chrome for Testing layout and the
older one) becomes a symlink to the wrapper, so `p.chromium.launch()` needs no download.
"""

import json
import os
import pathlib
import sys

import playwright

WRAPPER = "/usr/local/bin/pdm-chromium"
LAYOUTS = {
    "chromium": ["chrome-linux64/chrome", "chrome-linux/chrome"],
    "chromium-headless-shell": [
        "chrome-headless-shell-linux64/chrome-headless-shell",
        "chrome-linux/headless_shell",
    ],
}

root = pathlib.Path(os.environ["PLAYWRIGHT_BROWSERS_PATH"])
driver = pathlib.Path(playwright.__file__).parent / "driver" / "package"
browsers = json.loads((driver / "browsers.json").read_text())["browsers"]
made = 0
for browser in browsers:
    for relative in LAYOUTS.get(browser["name"], []):
        directory = browser["name"].replace("-", "_") + "-" + browser["revision"]
        path = root / directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(WRAPPER)
        made += 1
        print("browser-layer:", path, "->", WRAPPER)
if made == 0:
    sys.exit("browser-layer: browsers.json names no Chromium build")

# The path Playwright resolves for a plain launch must be one of them.
from playwright.sync_api import sync_playwright  # noqa: E402

with sync_playwright() as p:
    resolved = p.chromium.executable_path
print("browser-layer: playwright resolves", resolved)
if os.path.realpath(resolved) != os.path.realpath(WRAPPER):
    sys.exit(f"browser-layer: playwright looks for {resolved}, which is not the wrapper")
