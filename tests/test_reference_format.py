"""reference_format: PNG (lossless) or JPEG (quality 95) for slow uplinks; what is sent, what the user sees."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from helpers import image_batch, node_inputs, run_node, submitted_payloads
from runcomfy_seedream.api.references import encode_reference, prepare_reference


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
