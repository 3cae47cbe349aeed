"""A list input drives many RunComfy jobs at once: bounded uploads, one line, one cost, every item answered."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from helpers import image_batch, list_inputs, node_inputs, node_object, per_item, quick_timing, run_list, single
from runcomfy_seedream.api.client import PRICE_LOOKUP_TIMEOUT_S
from runcomfy_seedream.api.errors import BatchError
from runcomfy_seedream.fake_service import Fault


def reference_pixels(payload: dict) -> np.ndarray:
    data = base64.b64decode(payload["images"][0].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def as_uint8(tensor) -> np.ndarray:
    return (tensor[0].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def batch_lines(comfy) -> list[str]:
    return [text for text in comfy.progress_texts() if text.startswith("Batch of")]


def test_a_list_with_duplicates_pays_once_per_distinct_input_answers_every_item_in_order_and_bounds_uploads(fake, comfy):
    fake.behaviour.upload_bytes_per_s = 400_000  # each upload takes a while, so they overlap
    fake.behaviour.price_per_image_usd = 0.03
    distinct = [image_batch(1, 48, 64, seed=seed) for seed in range(8)]
    order = [index % 8 for index in range(24)][::-1]  # every input three times, spread through the list
    outputs = run_list([node_inputs(image_1=distinct[i], unique_id="9") for i in order])

    assert all(isinstance(output, tuple) for output in outputs), [o for o in outputs if not isinstance(o, tuple)]
    assert fake.submits == 8 and fake.submit_attempts == 8  # identical items share one job
    assert fake.max_uploads_in_flight <= 4, "at most four uploads in flight at once (the default)"
    assert fake.max_uploads_in_flight >= 2, "uploads did overlap"
    for item, output in zip(order, outputs, strict=True):
        images, image_list, urls, request_id = output
        assert images.shape[0] == 3 and len(urls.splitlines()) == 3
        assert np.array_equal(reference_pixels(fake.jobs[request_id].payload), as_uint8(distinct[item]))  # its own job

    lines = batch_lines(comfy)
    assert lines and all(line.startswith("Batch of 24: ") for line in lines[:-1])
    estimate = "estimated cost up to $0.72"  # 8 distinct inputs x 3 images x $0.03: duplicates are not counted twice
    assert all(estimate in line for line in lines[:-1] if "queued at RunComfy" in line or "uploading" in line)
    assert any("waiting to upload" in line for line in lines)
    assert lines[-1] == "Batch of 24 done: 8 jobs, cost $0.72 (today: $0.72 over 8 jobs)"
    first_of = {}
    for item, output in zip(order, outputs, strict=True):  # identical items share one decoded result, not copies
        assert output[0].data_ptr() == first_of.setdefault(item, output[0].data_ptr())
    assert not any(text.startswith(("Done:", "Preparing", "Submitting")) for text in comfy.progress_texts()[5:])


def test_a_429_storm_on_submits_slows_the_whole_batch_once_and_every_item_is_paid_once(fake, comfy):
    fake.behaviour.inject("submit", *[Fault("http", status=429, retry_after="0.3")] * 6)
    timing = quick_timing(submit_retry=quick_timing().job_retry.__class__(max_attempts=20, base_delay_s=0.01, max_delay_s=1.0))
    outputs = run_list([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(6)], timing=timing)
    assert all(isinstance(output, tuple) for output in outputs)
    assert fake.submits == 6 and fake.submit_attempts == 12
    submits = [r.at for r in fake.requests if r.method == "POST" and r.path.startswith("/v1/models/")]
    refused_at = submits[0]  # the first attempt was refused; nobody may submit again before its Retry-After
    assert all(at >= refused_at + 0.28 for at in submits[6:]), "one shared backoff after a 429"


def test_stop_in_the_middle_of_a_batch_cancels_every_queued_job_and_says_what_happened(fake, comfy):
    fake.behaviour.queue_s = 30.0  # every job stays queued
    comfy.stop_when = lambda text: text.startswith("Batch of 6:") and "4 queued at RunComfy" in text
    stopped = run_list(
        [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(6)],
        timing=quick_timing(),
    )
    assert isinstance(stopped, comfy.InterruptProcessingException)
    message = str(stopped)
    assert message.startswith("Stopped the batch of 6: ") and comfy.progress_texts()[-1] == message  # said once
    cancelled = sum(job.cancelled for job in fake.jobs.values())
    assert fake.submits >= 4 and cancelled == fake.submits, "every queued job was cancelled"
    assert f"{cancelled} queued jobs cancelled before they started" in message
    if fake.submits < 6:
        assert f"{6 - fake.submits} not sent" in message


def test_one_failing_item_is_listed_and_running_again_pays_only_for_it(fake, comfy):
    fake.behaviour.inject("submit", Fault("http", status=422, error_code="422001"))
    items = [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(4)]
    error = run_list(items)
    assert fake.submits == 3
    assert isinstance(error, BatchError) and len(error.failures) == 1
    assert str(error).startswith("1 of 4 items failed. The other 3 are saved: running the node again collects them")
    assert "item " in str(error) and "422" in str(error)

    again = run_list(items)
    assert all(isinstance(output, tuple) for output in again)
    assert fake.submits == 4, "only the failed item was paid for again"


@pytest.mark.parametrize("size", [1])
def test_a_single_item_looks_as_it_always_did(fake, comfy, size):
    run_list([node_inputs(unique_id="9")] * size)
    assert not batch_lines(comfy) and comfy.progress_texts()[-1].startswith("Done: 3 images")


def test_prompt_lines_make_a_list_of_prompts_and_five_prompts_give_five_image_sets(fake, comfy):
    from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

    splitter = NODE_CLASS_MAPPINGS["RunComfyPromptLines"]()
    assert splitter.OUTPUT_IS_LIST == (True,)
    text = "# five looks\nGenerate 2 images at dawn.\n\n  Generate 2 images at noon.  \nGenerate 2 images at dusk.\n" + (
        "Generate 2 images in fog.\nGenerate 2 images in snow.\n"
    )
    (prompts,) = splitter.split(text)
    assert prompts[0] == "Generate 2 images at dawn." and prompts[1] == "Generate 2 images at noon." and len(prompts) == 5
    assert splitter.split("Generate 2 images of a cat,\u2028one sitting.")[0] == ["Generate 2 images of a cat,\u2028one sitting."]

    outputs = run_list([node_inputs(prompt=prompt, max_images=2, unique_id="4") for prompt in prompts])
    assert [output[0].shape[0] for output in outputs] == [2] * 5 and fake.submits == 5
    assert sorted(job.payload["text"] for job in fake.jobs.values()) == sorted(prompts)
    assert comfy.progress_texts()[-1].startswith("Batch of 5 done: 5 jobs")


@pytest.mark.parametrize(
    "text,field",
    [
        ("", "text"),
        ("# only a comment\n\n", "text"),
        ("# a comment\n\nGenerate 2 images.\n" + "x" * 601, "text line 4"),  # numbered as the text's lines
        ("\n".join(f"Generate 2 images of scene {i}." for i in range(101)), "text"),
    ],
)
def test_prompt_lines_refuse_what_cannot_be_sent(text, field):
    from runcomfy_seedream.api.errors import InputError
    from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

    with pytest.raises(InputError) as caught:
        NODE_CLASS_MAPPINGS["RunComfyPromptLines"]().split(text)
    assert caught.value.field == field


def test_status_polls_of_all_jobs_in_flight_are_paced_together(fake, comfy):
    fake.behaviour.queue_s, fake.behaviour.run_s = 0.5, 0.5
    outputs = run_list(
        [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(4)],
        timing=quick_timing(status_interval_s=0.1),
    )
    assert all(isinstance(output, tuple) for output in outputs)
    polls = sorted(r.at for r in fake.requests if r.path.endswith("/status"))
    assert len(polls) >= 8
    # One pace for the process: one poll per 0.1 s is at most 11 in any second (12 allows for the server's clock
    # reading). Unpaced, four jobs polling every 0.06 s would make about 60.
    busiest = max(sum(1 for at in polls if start <= at < start + 1.0) for start in polls)
    assert busiest <= 12, busiest


def test_stop_reaches_every_batch_although_the_first_progress_bar_to_see_it_clears_it(fake, comfy):
    fake.behaviour.queue_s = 30.0
    comfy.stop_when = lambda text: text.startswith("Batch of 3:") and "3 queued at RunComfy" in text
    nodes = [node_object(), node_object()]

    async def two_batches():
        lists = [
            list_inputs([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id=str(10 + n)) for seed in range(n, 6, 2)])
            for n in range(2)
        ]
        return await asyncio.gather(*(node.generate(**inputs) for node, inputs in zip(nodes, lists, strict=True)), return_exceptions=True)

    outputs = asyncio.run(two_batches())
    assert all(isinstance(output, comfy.InterruptProcessingException) for output in outputs)
    assert fake.jobs and all(job.cancelled for job in fake.jobs.values()), "no queued job of either batch is left to run"


def test_when_comfyui_cancels_the_items_their_queued_jobs_are_cancelled_at_runcomfy(fake, comfy):
    fake.behaviour.queue_s = 30.0
    node = node_object()

    async def cancelled_midway():
        items = [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(3)]
        task = asyncio.create_task(node.generate(**list_inputs(items)))
        while fake.submits < 3 or not all(len(fake.requests_to(f"/v1/requests/{rid}/status")) for rid in fake.jobs):
            await asyncio.sleep(0.02)
        task.cancel()  # another node raised: ComfyUI's asyncio.run cancels what is left
        return await asyncio.gather(task, return_exceptions=True)

    outputs = asyncio.run(cancelled_midway())
    assert all(isinstance(output, asyncio.CancelledError) for output in outputs)
    assert all(job.cancelled for job in fake.jobs.values())


def test_a_run_of_another_node_during_a_batch_is_a_run_of_its_own(fake, comfy):
    fake.behaviour.queue_s = 0.5
    node, other = node_object(), node_object()

    async def during():
        items = [node_inputs(image_1=image_batch(1, 48, 64, seed=s), unique_id="9") for s in (1, 2)]
        batch = asyncio.create_task(node.generate(**list_inputs(items)))
        while fake.submits < 1:
            await asyncio.sleep(0.01)
        alone = await other.generate(**node_inputs(image_1=image_batch(1, 48, 64, seed=3), unique_id="8"))
        return single(alone), per_item(await batch)

    alone, batch = asyncio.run(during())
    assert alone[0].shape[0] == 3 and len(batch) == 2 and fake.submits == 3
    texts_of = {node_id: [text for text, shown in comfy.texts if shown == node_id] for node_id in ("8", "9")}
    assert texts_of["8"][-1].startswith("Done: 3 images") and not any(t.startswith("Batch of") for t in texts_of["8"])
    assert texts_of["9"][-1].startswith("Batch of 2 done: 2 jobs")


def test_a_stalled_catalog_does_not_hold_a_batch_back(fake, comfy):
    fake.behaviour.inject("catalog", Fault("stall", seconds=60.0))
    outputs = run_list([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(3)])
    assert all(isinstance(output, tuple) for output in outputs)
    first_submit = min(r.at for r in fake.requests if r.method == "POST" and r.path.startswith("/v1/models/"))
    catalog = [r for r in fake.requests if r.method == "GET" and r.path.startswith("/v1/models/")]
    # The estimate waits `price_wait_s` (0.5 s), then the batch goes on: the first submit comes before the stalled
    # lookup would have timed out.
    assert first_submit < catalog[0].at + PRICE_LOOKUP_TIMEOUT_S
    assert len(catalog) <= 2, "one lookup, then the failure is remembered"


def test_a_first_item_with_bad_input_fails_as_part_of_the_batch_and_the_others_run(fake, comfy):
    items = [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(3)]
    items[0]["prompt"] = "x" * 700
    error = run_list(items)
    assert isinstance(error, BatchError) and "item 1" in str(error) and "prompt: has 700 characters" in str(error)
    assert [number for number, _, _ in error.failures] == [1] and fake.submits == 2


def test_items_that_fail_alike_are_named_together_with_the_fix_said_once(fake, comfy):
    items = [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), max_images=15, unique_id="9") for seed in range(12)]
    items[5]["prompt"] = "x" * 700  # another reason: listed on its own
    error = run_list(items)
    assert isinstance(error, BatchError) and fake.submits == 0 and len(error.failures) == 12
    message = str(error)
    assert message.startswith("12 of 12 items failed. items 1-5, 7-12: max_images: 1 reference + max_images 15 = 16")
    assert message.count("Set max_images to 14 or less") == 1 and "item 6: prompt: has 700 characters" in message
    assert comfy.progress_texts()[-1] == message


def test_a_list_of_two_with_one_failure_says_the_other_item_is_saved(fake, comfy):
    """Before: "1 of 2 items failed. The other 1 are saved: …"."""
    fake.behaviour.inject("submit", Fault("http", status=422, error_code="422001"))
    error = run_list([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(2)])
    assert isinstance(error, BatchError) and fake.submits == 1
    assert str(error).startswith("1 of 2 items failed. The other item is saved: running the node again collects it without paying")
    assert "1 are" not in str(error)
