"""ComfyUI IMAGE tensors <-> the numpy frames the api works on."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from ..api.errors import InputError
from ..api.pipeline import Reference


def reference_frames(inputs: Sequence[tuple[str, object]]) -> list[Reference]:
    """Every frame of every connected IMAGE input, in socket order then batch order.

    An IMAGE is a float tensor [B, H, W, C]; frames stay views (no copy) until encoding.
    """
    frames: list[Reference] = []
    for name, tensor in inputs:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise InputError(name, f"is a {type(tensor).__name__}, not an IMAGE. Connect an IMAGE output to it.")
        if tensor.ndim != 4 or tensor.shape[-1] not in (1, 2, 3, 4):
            raise InputError(
                name,
                f"has shape {tuple(tensor.shape)}; an IMAGE must be [batch, height, width, channels]. "
                "Connect an IMAGE output (e.g. from Load Image) to it.",
            )
        if not tensor.is_floating_point():
            raise InputError(name, f"has dtype {tensor.dtype}; an IMAGE holds floats in 0..1.")
        array = tensor.detach().to("cpu", copy=False)
        if array.dtype != torch.float32:
            array = array.float()
        pixels = array.numpy()
        batch = pixels.shape[0]
        for index in range(batch):
            label = name if batch == 1 else f"{name} frame {index + 1}"
            frames.append(Reference(label, pixels[index]))
    return frames


def to_image_batch(images: Sequence[np.ndarray]) -> tuple[torch.Tensor, bool]:
    """uint8 RGB images -> one [B, H, W, 3] float32 tensor in 0..1.

    Images of different sizes are centred on the largest canvas with black borders,
    never stretched; the flag says whether that happened. Each image is converted in
    one pass straight into its slot of the batch (torch releases the GIL, so the
    images are converted in parallel threads).
    """
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    padded = any(image.shape[:2] != (height, width) for image in images)
    batch = (torch.zeros if padded else torch.empty)((len(images), height, width, 3), dtype=torch.float32)

    def convert(index: int) -> None:
        image = images[index]
        h, w = image.shape[:2]
        top, left = (height - h) // 2, (width - w) // 2
        torch.mul(torch.from_numpy(image), 1.0 / 255.0, out=batch[index, top : top + h, left : left + w])

    with ThreadPoolExecutor(max_workers=min(len(images), os.cpu_count() or 1)) as pool:
        list(pool.map(convert, range(len(images))))
    return batch, padded


def to_image_list(images: Sequence[np.ndarray], batch: torch.Tensor, padded: bool) -> list[torch.Tensor]:
    """Each image as its own [1, H, W, 3] tensor at native size; shares memory with the batch when it can."""
    if not padded:
        return [batch[i : i + 1] for i in range(len(images))]
    return [torch.from_numpy(image).unsqueeze(0).float().mul_(1.0 / 255.0) for image in images]
