"""Turning reference pixels into what the service accepts: clean RGB within size limits, as base64 PNG.

Two steps, both run in worker threads: `prepare_reference` (floats -> clean
uint8 RGB, fingerprinted) and `encode_reference` (uint8 -> PNG -> base64,
downscaled until it fits). Works on numpy arrays, so any caller can use it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import InputError
from .schema import MAX_REFERENCE_BYTES, MAX_SIDE_EXCLUSIVE, DataUri, check_reference_dimensions

MAX_SIDE = MAX_SIDE_EXCLUSIVE - 1


@dataclass(frozen=True)
class PngSettings:
    """zlib level and strategy (0 default, 1 filtered, 2 Huffman only, 3 RLE).

    The default was chosen with `scripts/bench.py`: on photographic content, RLE after
    PNG's row filters is both faster and smaller than plain level 1, because noise
    leaves little for LZ77 matching to find.
    """

    compress_level: int = 1
    strategy: int = 3


DEFAULT_PNG = PngSettings()


@dataclass(frozen=True)
class PreparedReference:
    label: str
    rgb8: np.ndarray  # (H, W, 3) uint8
    digest: str  # SHA-256 of the clean pixels: what the resume journal and result cache key on
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncodedReference:
    label: str
    uri: DataUri
    width: int
    height: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_frame_shape(label: str, frame: np.ndarray) -> tuple[int, int]:
    """(width, height) of an (H, W, C) frame with 1, 2, 3 or 4 channels, after the schema's dimension rules."""
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise InputError(label, f"has shape {tuple(frame.shape)}; expected height x width x 1-4 channels.")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    check_reference_dimensions(label, width, height)
    return width, height


def to_rgb8(frame: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Float (H, W, C) in 0..1 -> uint8 RGB; NaN/inf and out-of-range values are clipped, alpha dropped.

    Few passes over the data: min and max (which also reveal NaN), one scale, one cast.
    """
    notes: list[str] = []
    channels = frame.shape[2]
    pixels = frame[:, :, : channels - 1] if channels in (2, 4) else frame  # alpha is not read by the model
    if pixels.dtype == np.uint8:
        scaled_source = None
        low, high = 0.0, 1.0
    else:
        scaled_source = pixels
        low, high = float(np.min(pixels)), float(np.max(pixels))
    if not (math.isfinite(low) and math.isfinite(high)):
        scaled_source = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        notes.append("NaN/inf pixels set to black/white")
        low, high = float(np.min(scaled_source)), float(np.max(scaled_source))
    rgb8 = np.empty(pixels.shape[:2] + (3,), dtype=np.uint8)
    if scaled_source is None:
        rgb8[:] = pixels
        return rgb8, notes
    scaled = np.multiply(scaled_source, np.float32(255.0), dtype=np.float32)
    scaled += np.float32(0.5)
    if low < 0.0 or high > 1.0:
        notes.append(f"pixel values {low:.2f}..{high:.2f} clipped to 0..1")
        np.clip(scaled, 0.0, 255.0, out=scaled)
    rgb8[:] = scaled  # one grey channel broadcasts to three
    return rgb8, notes


def prepare_reference(label: str, frame: np.ndarray) -> PreparedReference:
    rgb8, notes = to_rgb8(frame)
    digest = hashlib.sha256(f"{rgb8.shape}|".encode())
    digest.update(memoryview(rgb8).cast("B"))
    return PreparedReference(label, rgb8, digest.hexdigest(), tuple(notes))


def _png_bytes(image: Image.Image, png: PngSettings) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=png.compress_level, compress_type=png.strategy)
    return buffer.getvalue()


def encode_reference(
    prepared: PreparedReference,
    *,
    max_file_bytes: int = MAX_REFERENCE_BYTES - 1,
    png: PngSettings = DEFAULT_PNG,
) -> EncodedReference:
    """PNG-encode one reference. Too-large images are downscaled (aspect kept) until they fit."""
    image = Image.fromarray(prepared.rgb8, mode="RGB")
    notes = list(prepared.notes)
    original = image.size
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
    data = _png_bytes(image, png)
    while len(data) > max_file_bytes:
        scale = math.sqrt(max_file_bytes / len(data)) * 0.95
        image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
        data = _png_bytes(image, png)
    if image.size != original:
        check_reference_dimensions(prepared.label, *image.size)
        notes.append(
            f"downscaled from {original[0]}x{original[1]} to {image.size[0]}x{image.size[1]} "
            f"to fit the {MAX_SIDE_EXCLUSIVE} px / {max_file_bytes / 1e6:.1f} MB limits"
        )
    uri = DataUri("image/png", base64.b64encode(data))
    return EncodedReference(prepared.label, uri, image.size[0], image.size[1], tuple(notes))


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
