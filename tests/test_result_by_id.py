"""The "RunComfy result by request id" node through real HTTP to the fake: a job submitted elsewhere is collected
free (never submitted, never cancelled), waited for while queued or running, saved by its request id, and every way
it cannot be collected is said plainly."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from helpers import node_inputs, per_item, quick_timing, run_node
from runcomfy_seedream.api import Credentials, EditSequentialRequest, Limits, RunComfyClient, Session, collect
from runcomfy_seedream.api.errors import (
    BatchError,
    DeadlineExceededError,
    InputError,
    JobFailedError,
    RequestNotFoundError,
)
from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

BY_ID = "RunComfyResultByRequestId"
URL = "https://example.com/ref.png"
ROOT = Path(__file__).resolve().parents[1]


def submit_elsewhere(fake, prompt: str = "Generate 2 images of a lighthouse at dusk.", max_images: int = 2) -> str:
    """A job submitted straight to the service, as another machine or RunComfy's site would: its request id."""

    async def submit() -> str:
        async with RunComfyClient(Credentials(fake.token), fake.base_url) as client:
            job = await client.submit(EditSequentialRequest(prompt, max_images=max_images, images=(URL,)))
            return job.request_id

    return asyncio.run(submit())


def collect_by_id(request_id, *, timing=None, limits=None) -> list[tuple]:
    """The node called as ComfyUI calls it (every input a list): (images, image_list, urls, request_id) per id."""
    node = NODE_CLASS_MAPPINGS[BY_ID]()
    node.timing = timing or quick_timing()
    node.limits = limits
    ids = request_id if isinstance(request_id, list) else [request_id]
    return per_item(asyncio.run(getattr(node, node.FUNCTION)(request_id=ids, unique_id=["5"])))


def node_requests(fake, before: int) -> list:
    return fake.requests[before:]


def test_a_job_submitted_elsewhere_is_collected_without_submitting_anything(fake, comfy):
    request_id = submit_elsewhere(fake)
    submits, seen = fake.submits, len(fake.requests)

    ((images, image_list, urls, collected_id),) = collect_by_id(request_id)

    assert collected_id == request_id and images.shape[0] == 2 and len(image_list) == 2 and len(urls.splitlines()) == 2
    assert fake.submits == submits == 1
    assert not [r for r in node_requests(fake, seen) if r.method == "POST"], "the node sends no submit and no cancel"
    final = comfy.progress_texts()[-1]
    assert final == f"Done: 2 images, request {request_id}, paid $0.06 when it ran (nothing charged now)"
    assert "cost $" not in final


@pytest.mark.parametrize("state", ["in_queue", "in_progress"])
def test_a_job_still_queued_or_running_is_waited_for_then_collected(fake, comfy, state):
    fake.behaviour.queue_s, fake.behaviour.run_s = (1.0, 0.3) if state == "in_queue" else (0.0, 0.8)
    request_id = submit_elsewhere(fake)
    assert fake.jobs[request_id].state()[0] == state

    ((images, _, _, collected_id),) = collect_by_id(request_id)

    texts = comfy.progress_texts()
    assert collected_id == request_id and images.shape[0] == 2
    assert any(text.startswith("Generating") for text in texts)
    if state == "in_queue":
        assert any(text.startswith("Queued at RunComfy") for text in texts)
    assert texts[-1].startswith(f"Done: 2 images, request {request_id}, paid $0.06 when it ran (nothing charged now)")


def test_an_id_runcomfy_does_not_know_is_said_plainly(fake, comfy):
    with pytest.raises(RequestNotFoundError) as caught:
        collect_by_id("3f1c9a7e-0000-4000-8000-000000000000")
    message = str(caught.value)
    assert "RunComfy does not know request 3f1c9a7e-0000-4000-8000-000000000000" in message
    assert "mistyped" in message and "expired" in message and "Nothing is charged" in message
    assert "submit a new job" not in message  # the main node's advice; this node never submits
    assert caught.value.error_code == "404001" and fake.submits == 0
    assert comfy.progress_texts()[-1] == message  # under the node too


def test_a_failed_job_says_so_with_its_id_and_reason(fake, comfy):
    fake.behaviour.fail_with = "content policy violation"
    request_id = submit_elsewhere(fake)
    with pytest.raises(JobFailedError) as caught:
        collect_by_id(request_id)
    message = str(caught.value)
    assert message == (
        f"Request {request_id} failed at RunComfy (content policy violation), so it has no images to collect. Nothing is charged now."
    )
    assert comfy.progress_texts()[-1] == message and fake.submits == 1


@pytest.mark.parametrize("phase", ["Queued at RunComfy", "Generating"])
def test_stop_while_waiting_leaves_the_job_running_and_a_second_run_collects_it(fake, comfy, phase):
    if phase == "Generating":
        fake.behaviour.queue_s, fake.behaviour.run_s = 0.0, 60.0
    else:
        fake.behaviour.queue_s = 60.0
    request_id = submit_elsewhere(fake)
    comfy.stop_when = lambda text: text.startswith(phase)

    with pytest.raises(comfy.InterruptProcessingException) as caught:
        collect_by_id(request_id)

    expected = f"Stopped waiting; request {request_id} goes on at RunComfy; run this node again to collect it."
    assert str(caught.value) == expected and comfy.progress_texts()[-1] == expected
    job = fake.jobs[request_id]
    assert fake.cancel_calls == 0 and not job.cancelled, "somebody else's job is never cancelled"
    assert not comfy.interrupted, "the Stop flag is cleared as the interruption is raised, as ComfyUI does"

    comfy.stop_when = None
    job.queue_s, job.run_s = 0.0, 0.0  # it finishes at RunComfy
    ((images, _, _, collected_id),) = collect_by_id(request_id)
    assert collected_id == request_id and images.shape[0] == 2 and fake.submits == 1


def test_the_deadline_ends_the_wait_without_cancelling_the_job(fake, comfy):
    fake.behaviour.queue_s = 60.0
    request_id = submit_elsewhere(fake)
    with pytest.raises(DeadlineExceededError) as caught:
        collect_by_id(request_id, timing=quick_timing(deadline_s=1.0))
    message = str(caught.value)
    again = f"request {request_id} goes on at RunComfy; run this node again to collect it."
    assert message == f"Request {request_id} did not finish within 1 s: stopped waiting; {again}"
    assert comfy.progress_texts()[-1] == message
    assert fake.cancel_calls == 0 and not fake.jobs[request_id].cancelled


def test_a_second_run_reuses_the_saved_copy_without_asking_runcomfy(fake, comfy):
    request_id = submit_elsewhere(fake)
    ((first_images, _, first_urls, _),) = collect_by_id(request_id)
    seen = len(fake.requests)

    ((images, image_list, urls, collected_id),) = collect_by_id(request_id)

    assert node_requests(fake, seen) == [], "no status, result or file request the second time"
    assert collected_id == request_id and urls == first_urls and len(image_list) == 2
    assert np.array_equal(images.numpy(), first_images.numpy())
    final = comfy.progress_texts()[-1]
    paid = f"Done: 2 images, request {request_id}, paid $0.06 when it ran (nothing charged now)"
    assert final == f"{paid} (saved result reused)"
    assert "change the seed" not in final and "cost $" not in final


def test_a_result_without_a_cost_is_never_shown_as_a_charge(fake, comfy):
    fake.behaviour.result_fields = {"cost": None}
    request_id = submit_elsewhere(fake)
    collect_by_id(request_id)
    final = comfy.progress_texts()[-1]
    assert final == f"Done: 2 images, request {request_id}, paid for by an earlier run (nothing charged now)"
    assert "cost" not in final


@pytest.mark.parametrize(
    "typed,says",
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("abc def", "has a space or line break in it"),
        ("https://model-api.runcomfy.net/v1/requests/abc/status", "looks like a link or a path"),
        ("..", "looks like a link or a path"),
        ("abc\x07def", "has a control character in it"),
        ("x" * 201, "is 201 characters long"),
    ],
    ids=["empty", "blank", "two words", "a link", "dots", "a control character", "a runaway paste"],
)
def test_an_empty_or_malformed_id_is_refused_naming_request_id_before_anything_is_sent(fake, comfy, typed, says):
    with pytest.raises(InputError) as caught:
        collect_by_id(typed)
    assert caught.value.field == "request_id" and says in str(caught.value)
    assert "request_id output of the Seedream node" in str(caught.value)  # where a good id comes from
    assert fake.requests == [] and comfy.progress_texts()[-1] == str(caught.value)


def test_an_id_with_spaces_around_it_is_collected(fake, comfy):
    request_id = submit_elsewhere(fake)
    ((_, _, _, collected_id),) = collect_by_id(f"  {request_id}\n")
    assert collected_id == request_id


def test_a_list_of_two_ids_gives_two_outputs_in_order(fake, comfy):
    first = submit_elsewhere(fake, "Generate 2 images of a red fox.", 2)
    second = submit_elsewhere(fake, "Generate 1 image of a blue whale.", 1)

    items = collect_by_id([second, first])

    assert [item[3] for item in items] == [second, first]
    assert [item[0].shape[0] for item in items] == [1, 2] and [len(item[1]) for item in items] == [1, 2]
    assert fake.submits == 2 and fake.cancel_calls == 0
    final = comfy.progress_texts()[-1]
    assert final == "Collected 2 requests: 3 images, paid $0.09 when they ran (nothing charged now)"
    assert comfy.progress_texts()[0] == "Collecting 2 requests (free, nothing is submitted): 2 checking"
    assert any("generating" in text or "1 done" in text for text in comfy.progress_texts()[1:-1])


def test_a_list_names_the_ids_it_could_not_collect_and_saves_the_others(fake, comfy):
    good = submit_elsewhere(fake)
    with pytest.raises(BatchError) as caught:
        collect_by_id([good, "no-such-request"])
    message = str(caught.value)
    assert message.startswith(
        "1 of 2 requests could not be collected. 1 collected and saved. item 2: RunComfy does not know request no-such-request"
    )
    assert [(number, request_id) for number, request_id, _ in caught.value.failures] == [(2, "no-such-request")]
    seen = len(fake.requests)
    collect_by_id(good)
    assert node_requests(fake, seen) == [], "the one that was collected is saved"


def test_a_malformed_item_of_a_list_is_named_by_its_position(fake, comfy):
    with pytest.raises(InputError) as caught:
        collect_by_id(["abc", ""])
    assert caught.value.field == "request_id" and "(item 2 of 2) is empty" in str(caught.value) and fake.requests == []


def test_stop_in_a_list_leaves_every_job_running_and_says_which_were_not_collected(fake, comfy):
    done = submit_elsewhere(fake)
    fake.behaviour.queue_s = 60.0
    waiting = submit_elsewhere(fake)
    comfy.stop_when = lambda text: text.startswith("Collecting 2 requests") and "1 done" in text
    with pytest.raises(comfy.InterruptProcessingException) as caught:
        collect_by_id([done, waiting])
    assert str(caught.value) == (
        f"Stopped waiting: 1 of 2 requests not collected yet ({waiting}); they go on at RunComfy: run this node again to collect them. "
        "1 collected and saved."
    )
    assert fake.cancel_calls == 0 and not fake.jobs[waiting].cancelled


def test_a_job_this_machine_paid_for_is_collected_by_its_id_and_both_saved_copies_stay_apart(fake, comfy):
    *_, request_id = run_node(**node_inputs())
    ((images, *_, collected_id),) = collect_by_id(request_id)
    assert collected_id == request_id and images.shape[0] == 3 and fake.submits == 1
    run_node(**node_inputs())  # the same inputs: still their own saved copy
    assert comfy.progress_texts()[-1].startswith(f"Done: 3 images, request {request_id}, paid $0.09 when it ran")
    assert "change the seed for new images" in comfy.progress_texts()[-1]


def test_saved_copies_keep_within_the_cache_bounds(fake, comfy, tmp_path):
    first, second = submit_elsewhere(fake), submit_elsewhere(fake)
    collect_by_id(first, limits=Limits(cache_max_entries=1))
    collect_by_id(second, limits=Limits(cache_max_entries=1))
    state = tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path here
    assert len(list((state / "results").iterdir())) == 1
    with sqlite3.connect(state / "records.db") as database:
        assert database.execute("SELECT request_id FROM saved").fetchall() == [(second,)]


def test_collect_cancelled_by_its_caller_leaves_a_queued_job_alone(fake, tmp_path):
    fake.behaviour.queue_s = 60.0
    request_id = submit_elsewhere(fake)

    async def abandoned():
        async with Session.open(
            credentials=Credentials(fake.token), base_url=fake.base_url, timing=quick_timing(), state_dir=tmp_path
        ) as session:
            task = asyncio.ensure_future(collect(request_id, session))
            while not [r for r in fake.requests if r.path.endswith("/status")]:
                await asyncio.sleep(0.02)
            task.cancel()  # ComfyUI ending the prompt
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(abandoned())
    assert fake.cancel_calls == 0 and not fake.jobs[request_id].cancelled


def test_every_node_is_registered_with_a_name_and_a_help_page():
    assert NODE_DISPLAY_NAME_MAPPINGS[BY_ID] == "RunComfy result by request id"
    assert NODE_CLASS_MAPPINGS[BY_ID].CATEGORY == "RunComfy/Seedream"
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id.startswith("RunComfy") and node_id in NODE_DISPLAY_NAME_MAPPINGS
        assert (ROOT / "web" / "docs" / f"{node_id}.md").is_file(), node_id


def test_both_seedream_nodes_are_found_by_the_same_search_words():
    words = ["seedream", "bytedance", "runcomfy", "sequential", "storyboard", "character sheet", "image set"]
    assert NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"].SEARCH_ALIASES == words
    assert NODE_CLASS_MAPPINGS[BY_ID].SEARCH_ALIASES == words
    assert NODE_CLASS_MAPPINGS["RunComfyPromptLines"].SEARCH_ALIASES == ["runcomfy", "prompt list", "lines"]
