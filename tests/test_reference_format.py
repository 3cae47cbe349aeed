"""reference_format: PNG (lossless) or JPEG (quality 95) for slow uplinks; what is sent, what the user sees; the cache of
encoded references, and the sizes a downscale may produce."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from helpers import image_batch, node_inputs, run_node, submitted_payloads
from runcomfy_seedream.api.references import (
    EncodedFile,
    _scaled,
    encode_reference,
    prepare_reference,
)
from runcomfy_seedream.api.schema import (
    MAX_ASPECT_EXCLUSIVE,
    MAX_SIDE_EXCLUSIVE,
    MIN_ASPECT_EXCLUSIVE,
    MIN_SIDE_EXCLUSIVE,
    DataUri,
    check_reference_dimensions,
)
from runcomfy_seedream.api.shared import ENCODED, EncodedCache


def photo_like(height: int, width: int) -> np.ndarray:
    """Smooth shapes with grain: compresses like a photograph (noise alone defeats JPEG as well)."""
    rng = np.random.default_rng(3)
    coarse = rng.random((height // 32 + 2, width // 32 + 2, 3), dtype=np.float32)
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 6, (height, width, 3))
    return (np.clip(smooth + grain, 0, 255) / 255).astype(np.float32)


def decoded(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_jpeg_references_are_sent_as_jpeg_and_the_progress_names_format_and_size(fake, comfy):
    run_node(**node_inputs(image_1=image_batch(1, 96, 128), reference_format="jpeg"))
    (payload,) = submitted_payloads(fake)
    assert payload["images"][0].startswith("data:image/jpeg;base64,")
    image = decoded(payload["images"][0])
    assert image.format == "JPEG" and image.size == (128, 96)
    texts = comfy.progress_texts()
    assert any(t.startswith("Encoding references 1/1 as JPEG") for t in texts)
    assert any(t.startswith("Submitting the job to RunComfy: uploading 1 JPEG reference, 0.0") for t in texts)


def test_png_stays_the_default_and_the_format_is_part_of_what_is_paid_for(fake, comfy):
    run_node(**node_inputs())
    run_node(**node_inputs(reference_format="png"))  # the same request: the saved result is reused
    run_node(**node_inputs(reference_format="jpeg"))  # other bytes sent: a new job
    payloads = submitted_payloads(fake)
    assert fake.submits == 2 and payloads[0]["images"][0].startswith("data:image/png;base64,")


def test_a_reference_png_must_downscale_goes_at_full_size_as_jpeg():
    prepared = prepare_reference("image_1", photo_like(1200, 1600))
    limit = 1_500_000  # a slot of the 64 MiB body, as when many large references share it
    png = encode_reference(prepared, max_file_bytes=limit, fmt="png")
    jpeg = encode_reference(prepared, max_file_bytes=limit, fmt="jpeg")
    assert decoded(str(png.uri)).size < (1600, 1200) and any("downscaled" in note for note in png.notes)
    assert decoded(str(jpeg.uri)).size == (1600, 1200) and not jpeg.notes
    full_png = encode_reference(prepared, fmt="png")
    assert len(jpeg.uri.base64) * 3 < len(full_png.uri.base64)  # several times fewer bytes to upload


# --- the cache of encoded references -----------------------------------------------------------


def test_the_same_pixels_encoded_again_come_from_the_cache_with_their_notes():
    ENCODED.reset()
    pixels = photo_like(1200, 1600)
    limit = 1_500_000  # small enough that PNG must downscale
    first = encode_reference(prepare_reference("image_1", pixels), max_file_bytes=limit)
    again = encode_reference(prepare_reference("image_2", pixels.copy()), max_file_bytes=limit)  # same pixels, another input
    assert (ENCODED.hits, ENCODED.misses) == (1, 1)
    assert again.uri.base64 is first.uri.base64 and again.label == "image_2"
    assert any("downscaled" in note for note in again.notes)  # still reported when nothing was encoded

    jpeg = encode_reference(prepare_reference("image_1", pixels), max_file_bytes=limit, fmt="jpeg")
    other_share = encode_reference(prepare_reference("image_1", pixels), max_file_bytes=limit // 2)
    other_pixels = encode_reference(prepare_reference("image_1", photo_like(1200, 1599)), max_file_bytes=limit)
    assert (ENCODED.hits, ENCODED.misses) == (1, 4)
    assert jpeg.uri.mime == "image/jpeg" and decoded(str(other_share.uri)).size < decoded(str(first.uri)).size
    assert len({id(e.uri.base64) for e in (first, jpeg, other_share, other_pixels)}) == 4


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = EncodedCache(max_bytes=3_000)
    made = []

    def entry(name: str):
        def encode() -> EncodedFile:
            made.append(name)
            return EncodedFile(DataUri("image/png", name.encode() * 1_000))

        return encode

    for name in "abc":
        cache.get_or_encode(name, entry(name))
    cache.get_or_encode("a", entry("a"))  # used again: "b" is now the least recently used
    cache.get_or_encode("d", entry("d"))
    assert "b" not in cache and all(key in cache for key in "acd")
    assert cache.nbytes == 3_000 and len(cache) == 3 and made == ["a", "b", "c", "d"]
    cache.get_or_encode("b", entry("b"))  # encoded again, and "c" goes
    assert made[-1] == "b" and "c" not in cache and cache.nbytes <= cache.max_bytes
    assert EncodedCache(max_bytes=10).get_or_encode("big", entry("x")).nbytes == 1_000  # too big to keep: returned, not kept
    cache.reset()
    assert len(cache) == 0 and cache.nbytes == 0 and (cache.hits, cache.misses) == (0, 0)


def test_runs_needing_the_same_file_at_once_encode_it_once():
    cache = EncodedCache()
    calls = []
    start = threading.Barrier(4)

    def encode() -> EncodedFile:
        calls.append(1)
        time.sleep(0.05)  # long enough for the other threads to ask meanwhile (they find it either way)
        return EncodedFile(DataUri("image/png", b"QUJD"))

    def ask(_):
        start.wait()
        return cache.get_or_encode("same", encode)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, range(4)))
    assert len(calls) == 1 and all(result is results[0] for result in results)
    assert (cache.hits, cache.misses) == (3, 1)


def test_a_failed_encode_is_not_kept_and_the_next_run_tries_again():
    cache = EncodedCache()

    def broken() -> EncodedFile:
        raise MemoryError

    with pytest.raises(MemoryError):
        cache.get_or_encode("k", broken)
    assert "k" not in cache
    assert cache.get_or_encode("k", lambda: EncodedFile(DataUri("image/png", b"QUJD"))).uri.base64 == b"QUJD"


def test_a_rerun_with_a_new_seed_sends_the_references_without_encoding_them_again(fake, comfy):
    ENCODED.reset()
    run_node(**node_inputs(seed=1))
    run_node(**node_inputs(seed=2))
    first, second = submitted_payloads(fake)
    assert fake.submits == 2 and first["images"] == second["images"]
    assert (ENCODED.hits, ENCODED.misses) == (1, 1)


# --- downscaled sizes ---------------------------------------------------------------------------

_NEAR_LIMITS = sorted({*range(15, 19), *range(43, 51), *range(133, 138), *range(1998, 2003), *range(5996, 6003), *range(17995, 18002)})


def test_downscaled_sizes_always_keep_the_schema_rules():
    """`_scaled` on sizes near each limit (sides near 15 and 5999, aspects near 1:3 and 3:1), at every scale
    `encode_reference` may ask for (at most 1, and at most what brings the longer side under 6000 px)."""
    checked = 0
    for width in _NEAR_LIMITS:
        for height in _NEAR_LIMITS:
            if not MIN_ASPECT_EXCLUSIVE < width / height < MAX_ASPECT_EXCLUSIVE:
                continue  # refused before encoding
            fit_side = (MAX_SIDE_EXCLUSIVE - 1) / max(width, height)
            for scale in (1.0, 0.9999, 0.5, 0.33334, 1 / 3, 0.1, 0.01, 1e-4, fit_side, fit_side * 0.95, fit_side * 0.999):
                if scale > min(1.0, fit_side):
                    continue
                new_w, new_h = _scaled((width, height), scale)
                check_reference_dimensions("image_1", new_w, new_h)  # sides > 14 px, aspect inside (0.33, 3)
                assert new_w < MAX_SIDE_EXCLUSIVE and new_h < MAX_SIDE_EXCLUSIVE, (width, height, scale)
                for side, exact in ((new_w, width * scale), (new_h, height * scale)):
                    if exact >= MIN_SIDE_EXCLUSIVE + 1:  # else raised to the smallest side allowed
                        assert abs(side - exact) <= 1.5, (width, height, scale, new_w, new_h)  # rounded, at most a pixel more
                checked += 1
    assert checked > 3_000
