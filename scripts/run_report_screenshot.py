"""The README's run report screenshot (docs/run_report.png): `llmkit report` of a run, opened in headless Chromium
as a user would open the file, the whole page captured.

    HF_HUB_OFFLINE=1 python scripts/run_report_screenshot.py [RUN_DIR] [--out docs/run_report.png] [--height 0]

RUN_DIR defaults to runs/support-assistant (what `make run` leaves). The page is written to a temporary folder
(the run folder is only read); --request-log / --bench are passed on to `llmkit report`. --height crops the
capture to the top N pixels (0: the whole page).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "support-assistant"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "run_report.png"))
    ap.add_argument("--request-log")
    ap.add_argument("--bench")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=0)
    args = ap.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from llmkit.web import run_report

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_path = run_report.write(args.run_dir, Path(tmp) / "report.html", request_log=args.request_log,
                                     bench=args.bench, **dict(zip(("registry", "registry_note"),
                                                                  run_report.registry_versions(Path(args.run_dir)))))
        ctx = pw.chromium.launch_persistent_context(str(Path(tmp) / "profile"), executable_path="/usr/bin/chromium",
                                                    headless=True, args=FLAGS,
                                                    viewport={"width": args.width, "height": 900})
        page = ctx.new_page()
        page.goto(page_path.as_uri(), wait_until="load")
        png = page.screenshot(full_page=True)
        ctx.close()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if args.height:
        img = img.crop((0, 0, img.size[0], min(args.height, img.size[1])))
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)  # flat page colours: small, still sharp
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB, {img.size[0]}x{img.size[1]}")


if __name__ == "__main__":
    main()
