"""Takes the README's screenshots (docs/img/) from a running platform with the demo loaded.

    AUTORET_DATA_DIR=/tmp/shots .venv/bin/python manage.py runstack --port 8799   # prints a login
    .venv/bin/python bench/screenshots.py --url http://127.0.0.1:8799 --password PASSWORD

Drives Debian's chromium with Playwright (as the browser tests do). The Label page is shot on
the first visit, so the collection's instructions and example pairs are open; the Similar page on
the first image of the demo collection.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).resolve().parent.parent / "docs" / "img"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{args.url}/accounts/login/")
        page.get_by_label("Username").fill(args.username)
        page.get_by_label("Password").fill(args.password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{args.url}/")
        page.goto(f"{args.url}/collections/")
        page.locator("main a[href^='/collections/']", has_text="Fashion-MNIST").first.click()
        collection_url = page.url
        page.get_by_role("button", name="Label pairs").click()
        expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
        page.wait_for_timeout(500)  # the images' decode
        page.screenshot(path=args.out / "label.png", full_page=True)
        page.goto(collection_url)
        page.locator("a.thumb").first.click()
        page.get_by_role("button", name="Similar").click()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=args.out / "similar.png")
        browser.close()
    print(f"wrote {args.out / 'label.png'} and {args.out / 'similar.png'}")


if __name__ == "__main__":
    main()
