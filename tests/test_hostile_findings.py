"""Defects found by attacking the pack as a demanding user: each test failed before its fix."""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node
from runcomfy_seedream.api import Limits
from runcomfy_seedream.api.errors import DownloadError, OutcomeUnknownError, ServiceError
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


@pytest.mark.parametrize(
    "body",
    [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"x" * 3_000_000],
    ids=["not an image", "over the size cap"],
)
def test_a_finished_job_whose_files_cannot_be_used_says_it_may_be_charged_and_what_a_re_run_does(fake, comfy, body):
    fake.behaviour.inject("file", Fault("body", body=body))
    with pytest.raises(DownloadError) as caught:
        run_node(limits=Limits(max_download_bytes=2 * 2**20), **node_inputs())
    (request_id,) = fake.jobs
    message = str(caught.value)
    assert f"Request {request_id} finished at RunComfy and may be charged" in message
    assert "submits a new job, which is charged again" in message


def test_a_result_url_whose_host_no_name_encoding_allows_is_refused_as_collectable(fake, comfy):
    """https://xn--n3h/ (the punycode of a snowman, refused by IDNA 2008) made the download raise the idna library's own
    error through the node, with no word on the paid job."""
    fake.behaviour.result_urls = ["https://xn--n3h/out.png"]
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "host is malformed" in message and "is paid" in message and "without paying again" in message
    fake.behaviour.result_urls = None
    run_node(**node_inputs())
    assert fake.submits == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "application/json"])
def test_a_portal_page_sent_under_another_content_type_to_the_submit_holds_nothing(fake, comfy, content_type):
    """A login page is plainly not the API whatever its label: "may be charged" and the hour's hold would be false."""
    page = b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>"
    fake.behaviour.inject("submit", Fault("http", status=200, body=page, content_type=content_type))
    with pytest.raises(ServiceError) as caught:
        run_node(**node_inputs())
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert "not the RunComfy API" in str(caught.value) and "nothing was charged" in str(caught.value)
    run_node(**node_inputs())  # nothing held: the same inputs go through at once
    assert fake.submits == 1
