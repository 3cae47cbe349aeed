"""Run the node's whole pipeline against the built-in local fake service: no token, no account, no cost.

    python scripts/demo.py --out demo_output [--image a.png --image b.jpg] [--prompt "..."]

Starts the fake RunComfy service on 127.0.0.1, points the node at it exactly as
a user would (RUNCOMFY_MODEL_API_BASE and a token), runs it the way ComfyUI
calls it, and writes the generated images as PNG files. Its records (journal,
saved results, ledger) go to a temporary folder removed at the end, so the fake
job never appears in the ledger or saved results of real runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pack_import import load_pack


def load_image(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).unsqueeze(0)


def sample_references() -> list[torch.Tensor]:
    """Two synthetic references of different sizes, like two photos from different cameras."""
    rng = np.random.default_rng(7)
    first = np.linspace(0, 1, 768 * 512 * 3, dtype=np.float32).reshape(512, 768, 3)
    second = rng.random((640, 480, 3), dtype=np.float32)
    return [torch.from_numpy(first).unsqueeze(0), torch.from_numpy(second).unsqueeze(0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="folder for the generated PNGs")
    parser.add_argument("--image", action="append", default=[], help="a reference image file (repeatable)")
    parser.add_argument("--prompt", default="Generate 3 images of the same character: walking, sitting, waving.")
    parser.add_argument("--max-images", type=int, default=3)
    parser.add_argument("--image-size", default="2560:1440 (16:9)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--service-seconds", type=float, default=2.0, help="fake queue + generation time")
    args = parser.parse_args(argv)

    pack = load_pack()
    from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy

    references = [load_image(p) for p in args.image] or sample_references()
    behaviour = FakeBehaviour(queue_s=args.service_seconds / 3, run_s=args.service_seconds * 2 / 3)
    with FakeRunComfy(behaviour) as fake, tempfile.TemporaryDirectory(prefix="seedream-demo-", ignore_cleanup_errors=True) as state:
        os.environ["RUNCOMFY_SEEDREAM_STATE_DIR"] = state
        os.environ["RUNCOMFY_API_TOKEN"] = behaviour.token
        os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
        os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
        node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()
        inputs = {f"image_{i}": tensor for i, tensor in enumerate(references, start=1)}
        started = time.monotonic()
        (images,), image_list, (urls,), (request_id,) = asyncio.run(  # one item: each output is a list of one; `ui` holds the final line
            node.generate(
                prompt=args.prompt,
                max_images=args.max_images,
                image_size=args.image_size,
                seed=args.seed,
                optimize_prompt="fast",
                sequential_image_generation="auto",
                unique_id="demo",
                **inputs,
            )
        )["result"]
        elapsed = time.monotonic() - started

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, tensor in enumerate(image_list, start=1):
        pixels = (tensor[0].numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"seedream_{index:02d}.png")
    print(f"request {request_id}: {len(image_list)} images, batch {tuple(images.shape)}, {elapsed:.1f} s")
    print(f"wrote {len(image_list)} PNGs to {out.resolve()}")
    return 0


if __name__ == "__main__":
    logging_format = "%(message)s"
    import logging

    logging.basicConfig(level=logging.INFO, format=logging_format, stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise SystemExit(main())
