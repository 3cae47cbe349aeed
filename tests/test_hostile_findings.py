"""Defects found by attacking the pack as a demanding user: each test failed before its fix."""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node
from runcomfy_seedream.api.errors import DownloadError
from runcomfy_seedream.fake_service import Fault

BLOCK_PAGE = b"<!DOCTYPE html><html><body>This site is blocked by your organisation.</body></html>"


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "image/png"], ids=["labelled html", "labelled png"])
def test_a_block_page_served_for_a_result_file_keeps_the_paid_job_collectable(fake, comfy, content_type):
    """A filtering proxy answers the result download 200 with its own page: the job is paid, and a re-run must collect it
    instead of submitting (and paying for) a new one."""
    fake.behaviour.inject("file", *[Fault("http", status=200, body=BLOCK_PAGE, content_type=content_type)] * 3)
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "web page" in message and "is paid" in message and "without paying again" in message
    (request_id,) = fake.jobs
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1 and fake.submit_attempts == 1
