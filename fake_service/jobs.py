"""Jobs of the fake service: checking a submit against the published schema, and the life of a job.

The rules here are written from the spec independently of `api/schema.py`, so
the client's own checks are tested against a second reading of the spec.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .behaviour import FakeBehaviour
from .render import inputs_digest, render_output

SIZES = {
    "2048:2048 (1:1)": (2048, 2048),
    "2304:1728 (4:3)": (2304, 1728),
    "1728:2304 (3:4)": (1728, 2304),
    "2560:1440 (16:9)": (2560, 1440),
    "1440:2560 (9:16)": (1440, 2560),
    "2496:1664 (3:2)": (2496, 1664),
    "1664:2496 (2:3)": (1664, 2496),
    "3024:1296 (21:9)": (3024, 1296),
}
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)
_COUNT_IN_PROMPT = re.compile(r"\b(\d{1,2})\s+(?:\w+\s+){0,3}?(?:images|pictures|frames|shots|photos)\b", re.IGNORECASE)


class SchemaViolation(ValueError):
    pass


def _reference_colour(index: int, item: object, inspect_pixels: bool = True) -> tuple[int, int, int]:
    """Decode one reference (data URI) and check it like the service would; its mean colour feeds the outputs."""
    where = f"images[{index}]"
    if not isinstance(item, str):
        raise SchemaViolation(f"{where} must be a string URI")
    match = _DATA_URI.match(item)
    if not match:
        if item.startswith("https://"):
            return tuple(int(b) for b in item.encode()[:3].ljust(3, b"\0"))  # cannot fetch here: colour from the URL
        raise SchemaViolation(f"{where} must be an https URL or a base64 png/jpeg data URI")
    if not inspect_pixels:
        return tuple(int(b) for b in item.encode()[-3:])  # cheap stand-in colour
    try:
        data = base64.b64decode(item[match.end() :], validate=True)
    except binascii.Error:
        raise SchemaViolation(f"{where} is not valid base64") from None
    if len(data) >= 10_000_000:
        raise SchemaViolation(f"{where} is {len(data)} bytes; files must be under 10 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise SchemaViolation(f"{where} is {image.format}; only png or jpeg")
            width, height = image.size
            thumb = image.convert("RGB").resize((8, 8))
    except SchemaViolation:
        raise
    except Exception:  # noqa: BLE001 - anything PIL cannot read is a bad image
        raise SchemaViolation(f"{where} is not a readable image") from None
    if not (width > 14 and height > 14 and width < 6000 and height < 6000):
        raise SchemaViolation(f"{where} is {width}x{height}; sides must be > 14 and < 6000 px")
    if not 0.33 < width / height < 3:
        raise SchemaViolation(f"{where} is {width}x{height}; aspect ratio must be between 1:3 and 3:1")
    mean = np.asarray(thumb).reshape(-1, 3).mean(axis=0)
    return int(mean[0]), int(mean[1]), int(mean[2])


def check_payload(payload: object, *, inspect_pixels: bool = True) -> list[tuple[int, int, int]]:
    """Raise SchemaViolation like the service's 4xx; return the references' mean colours."""
    if not isinstance(payload, dict):
        raise SchemaViolation("body must be a JSON object")
    images = payload.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= 10:
        raise SchemaViolation("images must be a list of 1 to 10 image URIs")
    text = payload.get("text")
    if not isinstance(text, str) or not text or len(text) > 600:
        raise SchemaViolation("text is required, at most 600 characters")
    count = payload.get("sequential_image_generation_options", 3)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 15:
        raise SchemaViolation("sequential_image_generation_options must be an integer 1..15")
    mode = payload.get("sequential_image_generation", "auto")
    if mode not in ("auto", "disabled"):
        raise SchemaViolation("sequential_image_generation must be auto or disabled")
    if mode == "auto" and len(images) + count > 15:
        raise SchemaViolation("reference images plus generated images cannot exceed 15")
    if payload.get("image_size", "2560:1440 (16:9)") not in SIZES:
        raise SchemaViolation("image_size is not one of the accepted values")
    if payload.get("optimize_prompt_options", "fast") not in ("fast", "standard"):
        raise SchemaViolation("optimize_prompt_options must be fast or standard")
    seed = payload.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise SchemaViolation("seed must be an integer")
    return [_reference_colour(i, item, inspect_pixels) for i, item in enumerate(images)]


def most_images(payload: dict) -> int:
    """The most images a submit may make, and so be charged for: its maximum price over the price per image."""
    if payload.get("sequential_image_generation", "auto") == "disabled":
        return 1
    return payload.get("sequential_image_generation_options", 3)


def planned_image_count(payload: dict, behaviour: FakeBehaviour) -> int:
    """Like Seedream: the prompt says how many; never more than the maximum; one when disabled."""
    if payload.get("sequential_image_generation", "auto") == "disabled":
        return 1
    maximum = payload.get("sequential_image_generation_options", 3)
    if behaviour.images_returned is not None:
        return max(0, min(behaviour.images_returned, maximum))
    match = _COUNT_IN_PROMPT.search(payload["text"])
    wanted = int(match.group(1)) if match else maximum
    return max(1, min(wanted, maximum))


@dataclass
class Job:
    request_id: str
    owner_token: str
    payload: dict
    created: float
    queue_s: float
    run_s: float
    queue_ahead: int
    image_count: int
    fail_with: str | None
    cost_usd: float
    outputs: list[bytes | None] = field(default_factory=list)
    outputs_ready: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    noticed_done_at: float | None = None
    body_bytes: int = 0
    upload_s: float = 0.0  # time spent receiving the submit body
    processing_s: float = 0.0  # time the fake spent checking the submit after receiving it

    @property
    def done_at(self) -> float:
        return self.created + self.queue_s + self.run_s

    def state(self, now: float | None = None) -> tuple[str, int | None]:
        """(status, queue_position) as /status reports it."""
        if self.cancelled:
            return "cancelled", None
        elapsed = (time.monotonic() if now is None else now) - self.created
        if elapsed < self.queue_s:
            position = max(1, math.ceil(self.queue_ahead * (1 - elapsed / self.queue_s))) if self.queue_ahead else 0
            return "in_queue", position
        if elapsed < self.queue_s + self.run_s:
            return "in_progress", None
        return "completed", None


def new_job(payload: dict, colours: list[tuple[int, int, int]], token: str, behaviour: FakeBehaviour) -> Job:
    count = planned_image_count(payload, behaviour)
    job = Job(
        request_id=behaviour.request_id_prefix + str(uuid.uuid4()),
        owner_token=token,
        payload=payload,
        created=time.monotonic(),
        queue_s=behaviour.queue_s,
        run_s=behaviour.run_s,
        queue_ahead=behaviour.queue_ahead,
        image_count=count,
        fail_with=behaviour.fail_with,
        cost_usd=round(count * behaviour.price_per_image_usd, 4),
        outputs=[None] * count,
    )
    if behaviour.fail_with is None:
        threading.Thread(target=_render_all, args=(job, colours, behaviour), daemon=True).start()
    else:
        job.outputs_ready.set()
    return job


def output_size(job: Job, index: int, behaviour: FakeBehaviour) -> tuple[int, int]:
    width, height = SIZES[job.payload.get("image_size", "2560:1440 (16:9)")]
    scale = behaviour.output_scale * (0.5 if behaviour.mixed_sizes and index % 2 else 1.0)
    return max(16, round(width * scale)), max(16, round(height * scale))


_shared_renders: dict[tuple[int, int, int, bool], bytes] = {}


def _render_all(job: Job, colours: list[tuple[int, int, int]], behaviour: FakeBehaviour) -> None:
    digest = inputs_digest(job.payload, colours)
    for index in range(job.image_count):
        width, height = output_size(job, index, behaviour)
        key = (index, width, height, behaviour.photographic)
        if behaviour.reuse_renders and key in _shared_renders:
            job.outputs[index] = _shared_renders[key]
            continue
        job.outputs[index] = render_output(digest, index, width, height, colours[index % len(colours)], photographic=behaviour.photographic)
        if behaviour.reuse_renders:
            _shared_renders[key] = job.outputs[index]
    job.outputs_ready.set()
