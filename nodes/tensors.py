"""ComfyUI IMAGE tensors <-> the numpy frames the api works on.

torch is imported when a tensor is converted, not when the pack is imported: the library
(`api`) is usable from a Python that has no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..api.downloads import ImageBatch
from ..api.errors import InputError
from ..api.pipeline import Reference

if TYPE_CHECKING:
    import torch


def reference_frames(inputs: Sequence[tuple[str, object]]) -> list[Reference]:
    """Every frame of every connected IMAGE input, in socket order then batch order.

    An IMAGE is a float tensor [B, H, W, C]; frames stay views (no copy) until encoding.
    """
    import torch

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
        try:
            array = tensor.detach().to("cpu", copy=False)
            pixels = (array if array.dtype == torch.float32 else array.float()).numpy()
        except Exception as unreadable:  # noqa: BLE001 - a tensor without data here (a meta tensor, a broken device)
            raise InputError(name, f"could not be read ({type(unreadable).__name__}). Connect an ordinary IMAGE output to it.") from None
        batch = pixels.shape[0]
        for index in range(batch):
            label = name if batch == 1 else f"{name} frame {index + 1}"
            frames.append(Reference(label, pixels[index]))
    return frames


def output_tensors(images: ImageBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The assembled results as ComfyUI IMAGEs, without copying: the batch [B, H, W, 3] shares the
    assembler's memory, and each list item is [1, h, w, 3] at its native size (a view of the batch
    unless sizes differ or the batch was scaled down, then the native copy the assembler kept)."""
    import torch

    batch = torch.from_numpy(images.array())
    if not images.keeps_natives:
        return batch, [batch[i : i + 1] for i in range(images.count)]
    return batch, [torch.from_numpy(np.ascontiguousarray(images.native(i))).unsqueeze(0) for i in range(images.count)]
