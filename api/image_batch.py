"""Assembling decoded results into one float32 batch [B, H, W, 3] in 0..1, as they arrive.

Each image is converted straight into its slot by the thread that decoded it, so no
separate uint8 copy of the whole set is ever held. Images smaller than the canvas are
centred on black (never stretched); a larger late arrival grows the canvas.
"""

from __future__ import annotations

import threading

import numpy as np

_SCALE = np.float32(1.0 / 255.0)


class ImageBatch:
    def __init__(self, count: int) -> None:
        self.count = count
        self.sizes: list[tuple[int, int] | None] = [None] * count
        self._canvas: np.ndarray | None = None
        self._lock = threading.Lock()

    def place(self, index: int, pixels: np.ndarray) -> None:
        """Convert uint8 RGB (h, w, 3) into slot `index` (thread-safe)."""
        height, width = pixels.shape[:2]
        with self._lock:
            if self._canvas is None:
                self._canvas = np.zeros((self.count, height, width, 3), dtype=np.float32)
            elif height > self._canvas.shape[1] or width > self._canvas.shape[2]:
                self._grow(max(height, self._canvas.shape[1]), max(width, self._canvas.shape[2]))
            self.sizes[index] = (height, width)
            canvas = self._canvas
        # Convert outside the lock so images convert in parallel; if the canvas grew meanwhile, copy over.
        np.multiply(pixels, _SCALE, out=self._slot(canvas, index), dtype=np.float32)
        with self._lock:
            if self._canvas is not canvas:
                self._slot(self._canvas, index)[...] = self._slot(canvas, index)

    def _slot(self, canvas: np.ndarray, index: int) -> np.ndarray:
        height, width = self.sizes[index]
        top, left = (canvas.shape[1] - height) // 2, (canvas.shape[2] - width) // 2
        return canvas[index, top : top + height, left : left + width]

    def _grow(self, height: int, width: int) -> None:
        old = self._canvas
        self._canvas = np.zeros((self.count, height, width, 3), dtype=np.float32)
        for index, size in enumerate(self.sizes):
            if size is not None:
                self._slot(self._canvas, index)[...] = self._slot(old, index)

    @property
    def padded(self) -> bool:
        canvas = self._canvas
        return canvas is not None and any(size != canvas.shape[1:3] for size in self.sizes)

    def array(self) -> np.ndarray:
        if self._canvas is None or None in self.sizes:
            raise ValueError("not every image has been placed")
        return self._canvas

    def native(self, index: int) -> np.ndarray:
        """Image `index` at its own size: a view into the batch."""
        return self._slot(self.array(), index)
