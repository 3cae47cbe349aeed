"""Building inputs the way ComfyUI passes them, and running the node the way ComfyUI calls it."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pack_import import PACK_ROOT
from runcomfy_seedream.api import Limits, PollSchedule, RetryPolicy, Timing
from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

NODE_ID = "RunComfySeedream4EditSequential"


def image_batch(count: int, height: int, width: int, *, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A [B, H, W, C] float32 IMAGE with varied content."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((count, height, width, channels), dtype=np.float32))


def node_inputs(**overrides) -> dict:
    """Widget values as a saved workflow gives them, plus the hidden unique_id."""
    inputs = {
        "image_1": image_batch(1, 64, 96),
        "prompt": "Generate 3 images of this scene at dawn, noon and night.",
        "max_images": 3,
        "image_size": "2560:1440 (16:9)",
        "seed": 42,
        "optimize_prompt": "fast",
        "sequential_image_generation": "auto",
        "unique_id": "7",
    }
    inputs.update(overrides)
    return inputs


def quick_timing(**changes) -> Timing:
    """Real use waits minutes; tests inject short waits through the same parameters."""
    values = dict(
        deadline_s=30.0,
        submit_retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05),
        job_retry=RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05),
        poll_schedule=lambda: PollSchedule(first_s=0.03, steady_s=0.06, ceiling_s=0.2),
        download_retry=RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05),
        download_read_timeout_s=2.0,
        download_deadline_s=20.0,
        status_interval_s=0.0,
    )
    values.update(changes)
    return Timing(**values)


def node_object(timing: Timing | None = None, limits: Limits | None = None):
    node = NODE_CLASS_MAPPINGS[NODE_ID]()
    node.timing = timing or quick_timing()
    node.limits = limits
    return node


def run_node(*, timing: Timing | None = None, limits: Limits | None = None, **inputs):
    """The node called as ComfyUI calls it, with `timing` (short waits by default) and `limits`: one item, its outputs."""
    node = node_object(timing, limits)
    return single(asyncio.run(getattr(node, node.FUNCTION)(**as_lists(inputs))))


def as_lists(inputs: dict) -> dict:
    """Inputs as ComfyUI passes them to a node with INPUT_IS_LIST: every value a list."""
    return {name: value if isinstance(value, list) else [value] for name, value in inputs.items()}


def results(returned) -> tuple:
    """The node's four output lists, from what it returned as ComfyUI takes it ({"ui": …, "result": outputs})."""
    assert set(returned) == {"ui", "result"}, "the node returns its outputs and its ui for ComfyUI"
    return returned["result"]


def per_item(returned) -> list[tuple]:
    """The node's output lists as one (images, image_list, urls, request_id) per item."""
    images, image_list, urls, request_ids = results(returned)
    items, start = [], 0
    for batch, url_lines, request_id in zip(images, urls, request_ids, strict=True):
        items.append((batch, image_list[start : start + batch.shape[0]], url_lines, request_id))
        start += batch.shape[0]
    assert start == len(image_list), "image_list holds every image of every item, in item order"
    return items


def single(returned) -> tuple:
    (item,) = per_item(returned)
    return item


def submitted_payloads(fake) -> list[dict]:
    return [job.payload for job in fake.jobs.values()]


def data_uri_size(uri: str) -> tuple[int, int]:
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def list_inputs(items: list[dict]) -> dict:
    """Per-item inputs as ComfyUI gives a node with INPUT_IS_LIST a list input: one list per input."""
    names = list(dict.fromkeys(name for item in items for name in item))
    lists = {name: [item[name] for item in items] for name in names}
    if "unique_id" in lists:
        lists["unique_id"] = lists["unique_id"][:1]  # one node
    return lists


def run_list(items: list[dict], *, timing: Timing | None = None, limits: Limits | None = None):
    """One node called once with a list input of `items`, as ComfyUI does it: the outputs per item, or the one
    exception the node raised."""
    node = node_object(timing, limits)

    async def call():
        return await getattr(node, node.FUNCTION)(**list_inputs(items))

    try:
        return per_item(asyncio.run(call()))
    except BaseException as raised:  # noqa: BLE001 - the test looks at it
        if isinstance(raised, KeyboardInterrupt):
            raise
        return raised


def load_copy(name: str, monkeypatch):
    """The pack imported from this repository under `name`, as ComfyUI imports a custom_nodes folder; every
    module it adds to sys.modules is removed again after the test."""
    before = set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        for added in set(sys.modules) - before:
            monkeypatch.setitem(sys.modules, added, sys.modules.pop(added))  # absent when set: the undo deletes it


def state_dir(home) -> Path:
    """Where the node keeps its records outside ComfyUI, for a HOME of `home` (the `fake` fixture's is tmp_path)."""
    return Path(home) / ".cache" / "runcomfy-seedream"


def job_rows(home_or_state, *columns: str) -> list[tuple]:
    """The job records as a user with the sqlite3 shell would read them (oldest first): `columns` of each row."""
    import sqlite3

    state = Path(home_or_state)
    path = state / "records.db" if (state / "records.db").exists() else state_dir(state) / "records.db"
    with sqlite3.connect(path) as database:
        return database.execute(f"SELECT {', '.join(columns) or '*'} FROM jobs ORDER BY created").fetchall()
