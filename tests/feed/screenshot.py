"""Take the README's picture of the timeline page: ``jobctl demo --serve`` in
headless Chromium. Run from the repository's root:

    python -m tests.feed.screenshot docs/feed.png
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import trio

from ._chromium import open_page
from ._demo import serving_demo

#: Seconds of demo shown, and the timeline's window (a button on the page).
SETTLE = 15
WINDOW = 10


async def main(path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    options = ("--domains", "2", "--migrations", "100000")
    async with serving_demo(*options) as (url, _), open_page(chromium, url) as page:
        await trio.sleep(SETTLE)
        await page.evaluate(f"document.querySelector('button[data-window=\"{WINDOW}\"]').click()")
        await trio.sleep(0.5)
        await page.screenshot(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else "docs/feed.png"))
