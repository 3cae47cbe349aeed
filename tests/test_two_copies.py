"""Two copies of the pack in custom_nodes (a manager install beside a manual clone) must not stop ComfyUI.

ComfyUI imports each folder under its own package name, so the copies share nothing but
ComfyUI itself: its route table, applied with `app.add_routes` once every pack is loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from helpers import NODE_ID, as_lists, image_batch, load_copy, node_inputs, single  # noqa: E402
from runcomfy_seedream.nodes.token_route import ROUTE  # noqa: E402

COPIES = ("comfyui_runcomfy_seedream", "runcomfy_seedream_clone")  # as a manager and a manual clone would be named


@pytest.fixture
def routes(comfy):
    """ComfyUI's route table: a real aiohttp RouteTableDef on the stand-in PromptServer."""
    table = web.RouteTableDef()
    sys.modules["server"].PromptServer.instance.routes = table
    return table


def serve_get(routes) -> tuple[int, dict]:
    """Apply the table to an app as ComfyUI does after loading every pack, then GET the route."""

    async def go():
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get(ROUTE)
            return response.status, json.loads(await response.text())

    return asyncio.run(go())


def run_copy_node(pack, **inputs):
    """The copy's node run as ComfyUI runs it, with short waits built from the copy's own types."""
    api = pack.api
    node = pack.NODE_CLASS_MAPPINGS[NODE_ID]()
    node.timing = api.Timing(
        submit_retry=api.RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05),
        job_retry=api.RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05),
        poll_schedule=lambda: api.PollSchedule(first_s=0.03, steady_s=0.06, ceiling_s=0.2),
        download_retry=api.RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05),
        status_interval_s=0.0,
    )
    return single(asyncio.run(getattr(node, node.FUNCTION)(**as_lists(inputs))))


def test_two_copies_register_the_token_route_once_and_comfyui_starts(fake, routes, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="runcomfy.seedream")
    httpx_log = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_log, "filters", list(httpx_log.filters))  # the copies' log filters go with them
    first, second = (load_copy(name, monkeypatch) for name in COPIES)

    ours = [(route.method, route.path) for route in routes if getattr(route, "path", None) == ROUTE]
    assert sorted(ours) == [("DELETE", ROUTE), ("GET", ROUTE), ("POST", ROUTE)]
    panel = [(route.method, route.path) for route in routes if getattr(route, "path", "").startswith("/runcomfy/seedream/jobs")]
    assert len(panel) == len(set(panel)) == 3  # the jobs panel's routes, once
    status, answer = serve_get(routes)  # raised "method HEAD is already registered" before
    assert status == 200 and answer["ok"] is True and answer["source"] == "env"

    notes = [record for record in caplog.records if record.name == "runcomfy.seedream" and ROUTE in record.getMessage()]
    assert len(notes) == 1, [record.getMessage() for record in notes]
    note = notes[0].getMessage()
    assert COPIES[0] in note and COPIES[1] in note and "custom_nodes" in note  # which copies, and the fix

    for seed, pack in enumerate((first, second)):  # either copy's node runs (other seeds: no cached result reused)
        images, _, urls, request_id = run_copy_node(pack, **node_inputs(image_1=image_batch(1, 64, 96), max_images=1, seed=seed))
        assert images.shape[0] == 1 and urls and request_id
    assert fake.submits == 2
