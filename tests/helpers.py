"""Building inputs the way ComfyUI passes them, and running the node the way ComfyUI calls it."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import torch
from PIL import Image

from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

NODE_ID = "RunComfySeedream4EditSequential"


def image_batch(count: int, height: int, width: int, *, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A [B, H, W, C] float32 IMAGE with varied content."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((count, height, width, channels), dtype=np.float32))


def node_inputs(**overrides) -> dict:
    """Widget values as a saved workflow gives them, plus the hidden unique_id."""
    inputs = {
        "image_1": image_batch(1, 64, 96),
        "prompt": "Generate 3 images of this scene at dawn, noon and night.",
        "max_images": 3,
        "image_size": "2560:1440 (16:9)",
        "seed": 42,
        "optimize_prompt": "fast",
        "sequential_image_generation": "auto",
        "unique_id": "7",
    }
    inputs.update(overrides)
    return inputs


def run_node(**inputs):
    node = NODE_CLASS_MAPPINGS[NODE_ID]()
    return asyncio.run(getattr(node, node.FUNCTION)(**inputs))


def submitted_payloads(fake) -> list[dict]:
    return [job.payload for job in fake.jobs.values()]


def data_uri_size(uri: str) -> tuple[int, int]:
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def run_node_with_deadline(seconds: float, monkeypatch, **overrides):
    """Run the node with the job deadline shortened to `seconds` (30 minutes in real use)."""
    from runcomfy_seedream.api import pipeline

    original = pipeline.generate

    async def quick(*args, **kwargs):
        return await original(*args, **{**kwargs, "deadline_s": seconds})

    target = "runcomfy_seedream.nodes.seedream_edit_sequential.generate"
    monkeypatch.setattr(target, quick)
    try:
        return run_node(**node_inputs(**overrides))
    finally:
        monkeypatch.setattr(target, original)
