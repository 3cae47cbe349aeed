"""Turning reference pixels into what the service accepts: clean RGB, within size limits, as PNG data URIs.

Works on numpy arrays (H, W, C) of floats in 0..1, so any caller can use it;
the ComfyUI adapter passes tensor frames straight through.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import InputError
from .schema import MAX_REFERENCE_BYTES, MAX_SIDE_EXCLUSIVE, check_reference_dimensions

DEFAULT_PNG_COMPRESS_LEVEL = 1
MAX_SIDE = MAX_SIDE_EXCLUSIVE - 1


@dataclass(frozen=True)
class EncodedReference:
    label: str
    data_uri: str
    width: int
    height: int
    file_bytes: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_frame_shape(label: str, frame: np.ndarray) -> tuple[int, int]:
    """(width, height) of an (H, W, C) frame with 1, 2, 3 or 4 channels, after the schema's dimension rules."""
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise InputError(label, f"has shape {tuple(frame.shape)}; expected height x width x 1-4 channels.")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    check_reference_dimensions(label, width, height)
    return width, height


def to_rgb8(frame: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Float (H, W, C) in 0..1 -> uint8 RGB; NaN/inf and out-of-range values are clipped, alpha dropped."""
    notes: list[str] = []
    pixels = np.asarray(frame, dtype=np.float32)
    if not np.isfinite(pixels).all():
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
        notes.append("NaN/inf pixels set to black/white")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        notes.append(f"pixel values {low:.2f}..{high:.2f} clipped to 0..1")
    channels = pixels.shape[2]
    if channels in (2, 4):
        pixels = pixels[:, :, : channels - 1]  # alpha is not part of what the model reads
    rgb8 = np.empty(pixels.shape[:2] + (3,), dtype=np.uint8)
    rgb8[:] = np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5  # one grey channel broadcasts to three
    return rgb8, notes


def _png_bytes(image: Image.Image, compress_level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def encode_reference(
    label: str,
    frame: np.ndarray,
    *,
    max_file_bytes: int = MAX_REFERENCE_BYTES - 1,
    compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> EncodedReference:
    """Clean, fit and PNG-encode one reference. Too-large images are downscaled (aspect kept) until they fit."""
    rgb8, notes = to_rgb8(frame)
    image = Image.fromarray(rgb8, mode="RGB")
    original = image.size
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
    data = _png_bytes(image, compress_level)
    while len(data) > max_file_bytes:
        scale = math.sqrt(max_file_bytes / len(data)) * 0.95
        image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
        data = _png_bytes(image, compress_level)
    if image.size != original:
        check_reference_dimensions(label, *image.size)
        notes.append(
            f"downscaled from {original[0]}x{original[1]} to {image.size[0]}x{image.size[1]} "
            f"to fit the {MAX_SIDE_EXCLUSIVE} px / {max_file_bytes / 1e6:.1f} MB limits"
        )
    data_uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return EncodedReference(label, data_uri, image.size[0], image.size[1], len(data), tuple(notes))


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
