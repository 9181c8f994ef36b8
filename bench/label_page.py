"""The Label page in a real browser: time from a key press to the next pair on screen.

    # a running platform (`make run`, or the stack of labeling_load.py --stack) and its admin
    .venv/bin/python bench/label_page.py --url http://127.0.0.1:8000 --password PASSWORD \
        --answers 30 --think 1.0 --slow-ms 0 2000

Debian's chromium driven by Playwright (never `playwright install`), as in tests/e2e. The page
logs in, opens the Label page of the collection (the first with an active version unless
--collection is given) and answers --answers pairs with the keyboard, pausing --think seconds
(uniform 0.5x-1.5x) before each key press as a person looking at the images would. label.js
records each answer in window.__labelTimings: `shown`, from the key event's time to the new
pair's images set on the page, and `frame`, to the animation frame after it (the one that
paints it). `--slow-ms` delays every API response by that long (the pair queue and the answers):
what an annotator sees when the server is slow; several values run one after the other. Prints
one Markdown table, a row per delay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

CHROMIUM = os.environ.get("AUTORET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
API = "**/api/v1/**"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


async def run(args: argparse.Namespace, collection_id: int, slow_ms: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright, expect

    rng = random.Random(slow_ms)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{args.url}/accounts/login/")
        await page.get_by_label("Username").fill(args.username)
        await page.get_by_label("Password").fill(args.password)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"{args.url}/")

        async def slow(route: Any) -> None:
            await asyncio.sleep(slow_ms / 1000)
            await route.continue_()

        if slow_ms:
            await page.route(API, slow)
        await page.goto(f"{args.url}/collections/{collection_id}/label/")
        labeler = page.locator("#labeler")
        await expect(labeler).to_have_attribute("data-pair-id", _any(), timeout=60000)
        for _ in range(args.answers):
            shown = await labeler.get_attribute("data-pair-id")
            await page.wait_for_timeout(1000 * args.think * rng.uniform(0.5, 1.5))
            await page.keyboard.press(rng.choice("jkjs"))
            await expect(labeler).not_to_have_attribute("data-pair-id", shown or "", timeout=60000)
        await page.wait_for_timeout(200)  # the last animation frame
        timings = await page.evaluate("window.__labelTimings")
        pending = await page.locator("#pending").is_visible()
        await browser.close()
    shown_ms = [t["shown"] for t in timings]
    frame_ms = [t["frame"] for t in timings]
    return {
        "slow_ms": slow_ms,
        "answers": len(timings),
        "p50": statistics.median(shown_ms) if shown_ms else float("nan"),
        "p95": percentile(shown_ms, 0.95),
        "frame_p95": percentile(frame_ms, 0.95),
        "max": max(shown_ms, default=float("nan")),
        "waited": sum(1 for ms in shown_ms if ms > 50),
        "pending": pending,
    }


def _any() -> Any:
    import re

    return re.compile(r"\d+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--collection", type=int, default=None)
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default=os.environ.get("DJANGO_SUPERUSER_PASSWORD", ""))
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--think", type=float, default=1.0, help="seconds before each key press")
    parser.add_argument("--slow-ms", type=int, nargs="+", default=[0], metavar="MS")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    import django

    django.setup()
    from retrieval.models import Collection

    collections = Collection.objects.filter(active_version__isnull=False).order_by("pk")
    collection = collections.get(pk=args.collection) if args.collection else collections.first()
    if collection is None:
        sys.exit("no collection with an active model version")
    print(
        f"{args.answers} answers per row, {args.think:g} s think time, collection "
        f"{collection.pk}, {args.url}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the start\n"
    )
    print(
        "| API responses delayed by | answers | p50 key press to pair shown (ms) | p95 (ms) | "
        "p95 to the painting frame (ms) | max (ms) | answers that waited > 50 ms | "
        "outbox note at the end |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for slow_ms in args.slow_ms:
        row = asyncio.run(run(args, collection.pk, slow_ms))
        print(
            f"| {row['slow_ms']} ms | {row['answers']} | {row['p50']:.1f} | {row['p95']:.1f} | "
            f"{row['frame_p95']:.1f} | {row['max']:.0f} | {row['waited']} | "
            f"{'shown' if row['pending'] else 'hidden'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
