"""Assembling decoded results into one float32 batch [B, H, W, 3] in 0..1, within a memory budget.

The canvas is planned from the files' headers before any pixel is decoded: the largest
height and width of the set. Smaller images are centred on black (never stretched). When
sizes differ, each image is also kept at its native size for `image_list`.

`max_bytes` bounds everything this holds: the canvas and the native copies together. When
that would pass it (two large results of opposite aspect can ask for tens of GiB of
padding), the native copies get up to three quarters of the budget and the canvas the rest,
and the images that do not fit are scaled down, keeping their aspect. The largest legitimate
Seedream set (15 images of mixed sizes, about 2.1 GiB) fits the default budget untouched.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

_SCALE = np.float32(1.0 / 255.0)
_BYTES_PER_PIXEL = 3 * 4  # float32 RGB
DEFAULT_BATCH_BYTES = 3 * 1024**3


class ImageBatch:
    def __init__(self, sizes: Sequence[tuple[int, int]], *, max_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        """`sizes`: (height, width) of each image, from its header."""
        self.count = len(sizes)
        self.native_sizes = list(sizes)
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        canvas_bytes = self.count * height * width * _BYTES_PER_PIXEL
        self.keeps_natives = len(set(sizes)) > 1 or canvas_bytes > max_bytes
        self.list_sizes = list(sizes)
        canvas_budget = max_bytes
        if self.keeps_natives:
            natives = sum(h * w for h, w in sizes) * _BYTES_PER_PIXEL
            allowed = min(natives, max_bytes * 3 // 4)  # image_list keeps native sizes first; the canvas gets the rest
            if natives > allowed:
                shrink = math.sqrt(allowed / natives)
                self.list_sizes = [(max(1, math.floor(h * shrink)), max(1, math.floor(w * shrink))) for h, w in sizes]
            canvas_budget = max_bytes - allowed
        per_image = max(1, canvas_budget // max(1, self.count * _BYTES_PER_PIXEL))
        if height * width > per_image:
            shrink = math.sqrt(per_image / (height * width))
            height, width = max(1, math.floor(height * shrink)), max(1, math.floor(width * shrink))
        self.sizes = [_fit(size, height, width) for size in sizes]
        self.fitted = any(fitted != native for fitted, native in zip(self.sizes, sizes, strict=True))
        self.padded = any(size != (height, width) for size in self.sizes)
        self._canvas = np.zeros((self.count, height, width, 3), dtype=np.float32)
        self._natives: list[np.ndarray | None] = [None] * self.count
        self._placed = [False] * self.count
        self._lock = threading.Lock()

    @property
    def shrunk(self) -> list[int]:
        """Indexes of the images that were scaled down to fit the batch."""
        return [i for i, (native, fitted) in enumerate(zip(self.native_sizes, self.sizes, strict=True)) if native != fitted]

    @property
    def list_shrunk(self) -> bool:
        """True when even the one-by-one images had to be scaled down (only for sets far beyond Seedream's sizes)."""
        return self.list_sizes != self.native_sizes

    def place(self, index: int, pixels: np.ndarray) -> None:
        """Convert uint8 RGB (h, w, 3) into slot `index`, scaled down first if the batch needs it (thread-safe:
        each slot is written by one thread)."""
        if pixels.shape[:2] != self.native_sizes[index]:
            raise ValueError(f"image {index + 1} is {pixels.shape[1]}x{pixels.shape[0]}, its header said otherwise")
        if self.keeps_natives:  # image_list needs each image apart from the batch
            listed = _resized(pixels, self.list_sizes[index])
            native = np.empty(listed.shape, dtype=np.float32)
            np.multiply(listed, _SCALE, out=native, dtype=np.float32)
            self._natives[index] = native
        np.multiply(_resized(pixels, self.sizes[index]), _SCALE, out=self._slot(index), dtype=np.float32)
        with self._lock:
            self._placed[index] = True

    def _slot(self, index: int) -> np.ndarray:
        height, width = self.sizes[index]
        top, left = (self._canvas.shape[1] - height) // 2, (self._canvas.shape[2] - width) // 2
        return self._canvas[index, top : top + height, left : left + width]

    def array(self) -> np.ndarray:
        if not all(self._placed):
            raise ValueError("not every image has been placed")
        return self._canvas

    def native(self, index: int) -> np.ndarray:
        """Image `index` at its own size (a view of the batch when every image has the batch's size; scaled down
        only when `list_shrunk`)."""
        self.array()
        native = self._natives[index]
        return native if native is not None else self._slot(index)


def _resized(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if pixels.shape[:2] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def _fit(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """`size` scaled down (aspect kept) to fit inside height x width; unchanged if it fits."""
    h, w = size
    scale = min(1.0, height / h, width / w)
    if scale >= 1.0:
        return h, w
    return max(1, min(height, math.floor(h * scale))), max(1, min(width, math.floor(w * scale)))
