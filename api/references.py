"""Turning reference pixels into what the service accepts: clean RGB within size limits, as base64 PNG or JPEG.

Two steps, both run in worker threads: `prepare_reference` (floats -> clean
uint8 RGB, fingerprinted) and `encode_references` (uint8 -> PNG or JPEG -> base64, in
parallel, downscaled until each fits its share of the 64 MiB body). Works on numpy
arrays, so any caller can use it. What was done to an image comes back as notes, data
for the caller to show.

Encoded references are kept in `shared.ENCODED`, a process-wide cache bounded by
encoded bytes: a re-run with the same references and a new seed or prompt sends them
at once instead of encoding them again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError
from .events import Phase, say
from .schema import (
    MAX_ASPECT_EXCLUSIVE,
    MAX_BODY_BYTES,
    MAX_REFERENCE_BYTES,
    MAX_SIDE_EXCLUSIVE,
    MIN_ASPECT_EXCLUSIVE,
    MIN_SIDE_EXCLUSIVE,
    DataUri,
    check_reference_dimensions,
)
from .shared import ENCODED, map_in_threads

MAX_SIDE = MAX_SIDE_EXCLUSIVE - 1
BODY_SLACK_BYTES = 64 * 1024  # room in the request body for the prompt, URLs and the other fields


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
REFERENCE_FORMATS: tuple[str, ...] = ("png", "jpeg")  # both accepted by the schema; png is lossless, jpeg far smaller
JPEG_QUALITY = 95


@dataclass(frozen=True)
class PreparedReference:
    label: str
    rgb8: np.ndarray  # (H, W, 3) uint8
    digest: str  # SHA-256 of the clean pixels: what the job records and saved results key on
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncodedReference:
    label: str
    uri: DataUri
    notes: tuple[str, ...] = field(default_factory=tuple)  # everything done to it, for the text under the node


def check_frame_shape(label: str, frame: np.ndarray) -> tuple[int, int]:
    """(width, height) of an (H, W, C) frame with 1, 2, 3 or 4 channels, after the schema's dimension rules."""
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise InputError(label, f"has shape {tuple(frame.shape)}; expected height x width x 1-4 channels.")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    check_reference_dimensions(label, width, height)
    return width, height


ROW_BLOCK = 128  # rows converted at a time: keeps the float scratch small and in cache


def to_rgb8(frame: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Float (H, W, C) in 0..1 -> uint8 RGB; NaN/inf and out-of-range values are clipped, alpha dropped.

    Few passes: min and max (which also reveal NaN), then a scale and a cast done block
    by block, so the float scratch space is a few MB whatever the image size.
    """
    notes: list[str] = []
    channels = frame.shape[2]
    pixels = frame[:, :, : channels - 1] if channels in (2, 4) else frame  # alpha is not read by the model
    rgb8 = np.empty(pixels.shape[:2] + (3,), dtype=np.uint8)
    if pixels.dtype == np.uint8:
        rgb8[:] = pixels
        return rgb8, notes
    low, high = float(np.min(pixels)), float(np.max(pixels))
    finite = math.isfinite(low) and math.isfinite(high)
    if not finite:
        notes.append("NaN/inf pixels set to black/white, other values clipped to 0..1")
    clip = not finite or low < 0.0 or high > 1.0
    if finite and clip:
        notes.append(f"pixel values {low:.2f}..{high:.2f} clipped to 0..1")
    for top in range(0, pixels.shape[0], ROW_BLOCK):
        block = pixels[top : top + ROW_BLOCK]
        if not finite:
            block = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=0.0)
        scaled = np.multiply(block, np.float32(255.0), dtype=np.float32)
        scaled += np.float32(0.5)
        if clip:
            np.clip(scaled, 0.0, 255.0, out=scaled)
        rgb8[top : top + ROW_BLOCK] = scaled  # one grey channel broadcasts to three
    return rgb8, notes


def prepare_reference(label: str, frame: np.ndarray) -> PreparedReference:
    rgb8, notes = to_rgb8(frame)
    digest = hashlib.sha256(f"{rgb8.shape}|".encode())
    digest.update(memoryview(rgb8).cast("B"))
    return PreparedReference(label, rgb8, digest.hexdigest(), tuple(notes))


def _file_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=DEFAULT_PNG.compress_level, compress_type=DEFAULT_PNG.strategy)
    return buffer.getvalue()


@dataclass(frozen=True)
class EncodedFile:
    """What encoding one set of clean pixels produced, whatever the reference is called: the base64 file and
    the notes of the encoding itself (a downscale), not those of preparing the pixels."""

    uri: DataUri
    notes: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return len(self.uri.base64)


def encode_reference(prepared: PreparedReference, *, max_file_bytes: int = MAX_REFERENCE_BYTES - 1, fmt: str = "png") -> EncodedReference:
    """Encode one reference as PNG or JPEG (quality 95), or take it from `ENCODED` when these pixels were encoded
    the same way before. Too-large images are downscaled (aspect kept) until they fit; `_scaled` keeps every
    downscaled size within the schema's side and aspect rules."""
    if fmt not in REFERENCE_FORMATS:
        raise InputError("reference_format", f"{fmt!r} is not accepted. Choose one of: {', '.join(REFERENCE_FORMATS)}.")
    key = (prepared.digest, fmt, max_file_bytes, DEFAULT_PNG if fmt == "png" else None)
    encoded = ENCODED.get_or_encode(key, lambda: _encode_file(prepared.rgb8, max_file_bytes, fmt))
    return EncodedReference(prepared.label, encoded.uri, prepared.notes + encoded.notes)


def _encode_file(rgb8: np.ndarray, max_file_bytes: int, fmt: str) -> EncodedFile:
    original = Image.fromarray(rgb8, mode="RGB")
    scale = min(1.0, MAX_SIDE / max(original.size), _probe_scale(original, max_file_bytes, fmt))
    image = original if scale >= 1.0 else original.resize(_scaled(original.size, scale), Image.Resampling.LANCZOS)
    data = _file_bytes(image, fmt)
    while len(data) > max_file_bytes:
        scale *= math.sqrt(max_file_bytes / len(data)) * 0.95
        image = original.resize(_scaled(original.size, scale), Image.Resampling.LANCZOS)
        data = _file_bytes(image, fmt)
    notes: tuple[str, ...] = ()
    if image.size != original.size:
        notes = (
            f"downscaled from {original.size[0]}x{original.size[1]} to {image.size[0]}x{image.size[1]} "
            f"to fit the {MAX_SIDE_EXCLUSIVE} px / {max_file_bytes / 1e6:.1f} MB limits as {fmt.upper()}",
        )
    return EncodedFile(DataUri(f"image/{fmt}", base64.b64encode(data)), notes)


def prepare_references(references: Sequence[Any]) -> Awaitable[list[PreparedReference]]:
    """`prepare_reference` for every reference (each with a `label` and its `pixels`) in parallel worker threads,
    saying how far it is (its start at once, before anything is awaited)."""

    def prepared_one(prepared: PreparedReference, done: int) -> None:
        extra = f" ({prepared.label}: {'; '.join(prepared.notes)})" if prepared.notes else ""
        say(f"Preparing references {done}/{len(references)}{extra}", Phase.PREPARING, done / len(references))

    if references:
        say(f"Preparing references 0/{len(references)}", Phase.PREPARING)
    return map_in_threads(lambda ref: prepare_reference(ref.label, ref.pixels), references, on_done=prepared_one)


def encode_references(prepared: Sequence[PreparedReference], *, max_file_bytes: int, fmt: str = "png") -> Awaitable[list[EncodedReference]]:
    """Encode every reference in parallel worker threads (those in `ENCODED` are not encoded again), saying how far it
    is (its start at once, before anything is awaited) and which were downscaled."""
    total = len(prepared)

    def encoded_one(encoded: EncodedReference, done: int) -> None:
        fresh = [note for note in encoded.notes if note.startswith("downscaled")]
        extra = f" ({encoded.label}: {'; '.join(fresh)})" if fresh else ""
        say(f"Encoding references {done}/{total} as {fmt.upper()}{extra}", Phase.UPLOADING, 0.4 * done / total)

    if total:
        say(f"Encoding references 0/{total} as {fmt.upper()}", Phase.UPLOADING)
    return map_in_threads(
        lambda ref: encode_reference(ref, max_file_bytes=max_file_bytes, fmt=fmt), prepared, on_done=encoded_one, name="runcomfy-encode"
    )


def per_reference_byte_limit(data_reference_count: int) -> int:
    """Each file must be under 10 MB, and all of them base64-encoded must fit in one request body."""
    if data_reference_count == 0:
        return MAX_REFERENCE_BYTES - 1
    share = (MAX_BODY_BYTES - BODY_SLACK_BYTES) * 3 // 4 // data_reference_count
    return min(MAX_REFERENCE_BYTES - 1, share)


def _probe_scale(image: Image.Image, max_file_bytes: int, fmt: str) -> float:
    """A scale that should bring the file under `max_file_bytes`, from encoding a quarter-size centre crop.

    Avoids encoding a large reference twice (once too big, once downscaled). Returns 1.0
    when the image cannot be too big (raw pixels fit) or the estimate says it fits.
    """
    width, height = image.size
    if width * height * 3 <= max_file_bytes * 0.98:
        return 1.0
    crop = image.crop((width // 4, height // 4, width // 4 + width // 2, height // 4 + height // 2))
    estimate = len(_file_bytes(crop, fmt)) * (width * height) / max(1, crop.size[0] * crop.size[1])
    if estimate <= max_file_bytes * 0.9:
        return 1.0
    return math.sqrt(max_file_bytes * 0.9 / estimate)


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """`size` times `scale`, rounded so that the result keeps the schema's rules when `size` does: each side
    more than 14 px, and an aspect strictly inside (0.33, 3) (rounding alone can push 5999x2000 to 3.001)."""
    width, height = size
    new_w = min(MAX_SIDE, max(MIN_SIDE_EXCLUSIVE + 1, round(width * scale)))
    new_h = min(MAX_SIDE, max(MIN_SIDE_EXCLUSIVE + 1, round(height * scale)))
    while new_w / new_h >= MAX_ASPECT_EXCLUSIVE and new_h < MAX_SIDE:
        new_h += 1
    while new_w / new_h <= MIN_ASPECT_EXCLUSIVE and new_w < MAX_SIDE:
        new_w += 1
    return new_w, new_h
