"""Run each example workflow in a real ComfyUI and save its canvas, with references and results, as its thumbnail.

Not part of the pytest suite: it needs a running ComfyUI with this pack in custom_nodes/, Chromium and Python
Playwright (plus Pillow). It starts nothing itself. Against the local fake service (no token, no cost):

    python scripts/fake_service.py --port 8770 --queue-seconds 1 --run-seconds 2 --output-scale 0.25
    RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8770/v1 RUNCOMFY_API_TOKEN=fake-runcomfy-token \
        python main.py --cpu --port 8190          # in ComfyUI; its input/ must hold the images the workflows load
    python scripts/screenshot_templates.py http://127.0.0.1:8190 [--out example_workflows] [--width 800]

For every example_workflows/<name>.json: load it as saved, press Queue, wait for the run, fit the whole graph in
view and write <name>.jpg (JPEG, --width pixels wide). Prints the text the node shows when the run is done.
Exits 1 if a run fails (then no thumbnail is written for it).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from comfy_browser import comfy_page

NODE = "RunComfySeedream4EditSequential"
EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
VIEWPORT = (1800, 1100)
# The part of the window the canvas shows without ComfyUI's side bar, top bar and corner controls over it.
SAFE = {"left": 90, "top": 100, "right": 1780, "bottom": 1040}

FIT_GRAPH = r"""
(safe) => {
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const node of app.graph.nodes) {
    x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - title);
    x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
  }
  const pad = 20;
  [x0, y0, x1, y1] = [x0 - pad, y0 - pad, x1 + pad, y1 + pad];
  const scale = Math.min(1.2, (safe.right - safe.left) / (x1 - x0), (safe.bottom - safe.top) / (y1 - y0));
  const rect = app.canvas.canvas.getBoundingClientRect();
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [(safe.left - rect.left) / scale - x0, (safe.top - rect.top) / scale - y0];
  app.canvas.setDirty(true, true);
  return { x: safe.left, y: safe.top, width: Math.round((x1 - x0) * scale), height: Math.round((y1 - y0) * scale) };
}
"""

HIDE_OVERLAYS = """
() => {
  const style = document.createElement('style');
  style.textContent = '.minimap-main-container, .p-toast, .graph-canvas-toolbar, .selection-toolbox { display: none !important; }';
  document.head.append(style);
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the running ComfyUI, e.g. http://127.0.0.1:8190")
    parser.add_argument("--out", type=Path, default=EXAMPLES, help="where the .jpg files go (default: example_workflows/)")
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--quality", type=int, default=82)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("names", nargs="*", help="only these workflows (file names without .json)")
    args = parser.parse_args(argv)

    from PIL import Image

    failures = []
    with comfy_page(args.url, args.chromium, viewport=VIEWPORT) as page:
        page.evaluate("async () => { await app.extensionManager?.setting?.set('Comfy.Minimap.Visible', false); }")
        page.evaluate(HIDE_OVERLAYS)
        for path in sorted(EXAMPLES.glob("*.json")):
            if args.names and path.stem not in args.names:
                continue
            page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text()))
            page.wait_for_timeout(800)  # LoadImage fetches its preview
            result = page.evaluate("() => __rc.queue()")
            last = next((t["text"] for t in reversed(result["texts"])), "(no text)")
            print(f"{path.name}: {result['kind']}: {last!r}")
            if result["kind"] != "success":
                print(f"    {result['detail']}")
                failures.append(path.name)
                continue
            page.mouse.move(5, VIEWPORT[1] - 5)  # no hover highlight or tooltip in the picture
            clip = page.evaluate(FIT_GRAPH, SAFE)
            page.wait_for_timeout(1200)  # result previews load
            png = page.screenshot(clip=clip)
            image = Image.open(io.BytesIO(png)).convert("RGB")
            height = round(image.height * args.width / image.width)
            image = image.resize((args.width, height), Image.LANCZOS)
            target = args.out / f"{path.stem}.jpg"
            image.save(target, "JPEG", quality=args.quality, optimize=True, progressive=True)
            print(f"    wrote {target} ({image.width}x{image.height}, {target.stat().st_size // 1024} KB)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
