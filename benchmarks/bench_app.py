"""The app in a browser: seconds from a click on Generate to the results, with the embedded default model.

Serves `hf_crystal.app.build_app()` (the embedded default adapter and its FlowLLM refiner) on 127.0.0.1, opens it
in headless Chromium (Debian's `chromium`, driven by Playwright), types a formula, sets the number of crystals,
clicks Generate and waits until the summary table has its rows and every 3D view has its canvas. Prints one table:
per setting (refiner on / off) the click-to-results seconds of each repeat and their median, and the seconds the
server spent in the model call (from the app's status line), so the rest is the page's own share (HTTP, queue,
table, 3D views). With `--screenshots DIR` it also saves the Generate and Infill tabs as PNGs (docs/images).

    scripts/loopback-only .venv/bin/python benchmarks/bench_app.py [--num 4] [--repeats 3] [--screenshots docs/images]

Run it inside the loopback-only namespace: the page and the app then reach nothing but 127.0.0.1. The load average
is printed before and after: the machine is shared, compare numbers from one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import time
from pathlib import Path

#: The status line's text in the page (its Markdown, without Gradio's "processing" overlay).
STATUS = "(document.querySelector('#status [data-testid=markdown]')?.innerText ?? '')"
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--no-first-run",
    "--no-sandbox",
    "--disable-dev-shm-usage",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate(page, formula: str, num: int, refine: bool, seed: int) -> tuple[float, float]:
    """(click-to-results seconds, model seconds from the status line) of one request."""
    page.locator("#formula textarea").fill(formula)
    page.locator("#seed textarea").fill(str(seed))
    page.locator("#num input[type=number]").fill(str(num))
    page.locator("#num input[type=number]").press("Enter")
    checkbox = page.locator("#refine input[type=checkbox]")
    if checkbox.is_checked() != refine:
        checkbox.click()
    page.evaluate(f"() => {{ window.oldStatus = {STATUS}; }}")
    start = time.perf_counter()
    page.click("#generate")
    page.wait_for_function(  # a new status line (it holds the model's seconds), the table's rows, the views
        f"""() => {{
            const status = {STATUS};
            return status !== window.oldStatus && /crystal/.test(status)
                && document.querySelectorAll('#summary [role=row][data-index]').length === {num}
                && document.querySelectorAll('#gallery .crystal-viewer canvas').length === {num};
        }}""",
        timeout=300_000,
    )
    seconds = time.perf_counter() - start
    status = page.locator("#status [data-testid=markdown]").inner_text()
    model = float(re.search(r"in ([\d.]+) s", status).group(1))
    return seconds, model


def _small_png(path: Path) -> None:
    """Re-save a screenshot as a 256-colour PNG (a few hundred kB less, same look for a UI)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formula", default="SrTiO3")
    parser.add_argument("--num", type=int, default=4, help="crystals per request (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="requests per setting (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--model", help="model or adapter (default: the embedded default, with its refiner)")
    parser.add_argument("--screenshots", type=Path, help="save generate.png and infill.png here")
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from hf_crystal.app import build_app

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    demo = build_app(args.model)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    print(f"app built and served in {time.perf_counter() - start:.1f} s (model loading included)")
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1300})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#generate")
            settings = (
                (True, False) if page.locator("#refine input[type=checkbox]").is_enabled() else (False,)
            )
            for refine in settings:
                runs = [_generate(page, args.formula, args.num, refine, seed) for seed in range(args.repeats)]
                rows.append((refine, runs))
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                _generate(page, args.formula, args.num, settings[0], 0)
                page.wait_for_timeout(500)
                page.screenshot(path=args.screenshots / "app-generate.png", full_page=True)
                page.get_by_role("tab", name="Infill").click()
                page.get_by_text("SrTiO3.cif").first.click()
                page.wait_for_function("() => document.querySelector('#element input').value === 'Sr'")
                page.click("#infill")
                page.wait_for_function(
                    "() => document.querySelectorAll('#infill-gallery .crystal-viewer canvas').length === 4",
                    timeout=120_000,
                )
                page.wait_for_timeout(500)
                page.screenshot(path=args.screenshots / "app-infill.png", full_page=True)
                for name in ("app-generate.png", "app-infill.png"):
                    _small_png(args.screenshots / name)
            browser.close()
    finally:
        demo.close()
    print(f"\n{args.num} x {args.formula}, embedded default model, {args.repeats} requests per setting")
    print(f"{'refiner':<8} {'click to results (s), each':<32} {'median':>7} {'model call (s), median':>23}")
    for refine, runs in rows:
        each = ", ".join(f"{s:.1f}" for s, _ in runs)
        print(
            f"{'on' if refine else 'off':<8} {each:<32} {statistics.median(s for s, _ in runs):>7.1f} "
            f"{statistics.median(m for _, m in runs):>23.1f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
