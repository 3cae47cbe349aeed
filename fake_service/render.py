"""Output images of the fake service: the requested size, and content that depends on inputs and seed."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


def inputs_digest(payload: dict, reference_colours: list[tuple[int, int, int]]) -> bytes:
    h = hashlib.sha256()
    h.update(repr((payload.get("text"), payload.get("seed"), payload.get("image_size"))).encode())
    h.update(repr(reference_colours).encode())
    for uri in payload.get("images", []):
        h.update(hashlib.sha256(uri.encode()).digest())
    return h.digest()


def render_output(
    digest: bytes,
    index: int,
    width: int,
    height: int,
    base_colour: tuple[int, int, int],
    *,
    photographic: bool = False,
) -> bytes:
    """A PNG of width x height: gradients tinted by a reference colour, varied by digest and index."""
    seed = int.from_bytes(hashlib.sha256(digest + index.to_bytes(2, "big")).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    slopes = rng.integers(1, 7, size=(3, 2))
    x = np.arange(width, dtype=np.uint16)
    y = np.arange(height, dtype=np.uint16)
    image = np.empty((height, width, 3), dtype=np.uint8)
    for c in range(3):
        row = ((x * slopes[c, 0]) >> 3).astype(np.uint8)
        col = ((y * slopes[c, 1]) >> 3).astype(np.uint8) + np.uint8(base_colour[c] // 2)
        image[:, :, c] = row[None, :] + col[:, None]
    if photographic:
        image += rng.integers(0, 24, size=image.shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
