"""When trouble comes together: what the records keep (many jobs in flight, a disk that fills between two writes, a
release the disk refuses, a prompt ComfyUI cancels) and what the texts say (a batch's warnings, Stop in a list with a
failed item, jobs that did not report a cost, a saved cost that cannot be true, a tensor that cannot be read)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import image_batch, node_inputs, node_object, run_list, run_node
from runcomfy_seedream.api import EditSequentialRequest, GenerationResult, ImageBatch, Phase, Plan, StopRequested
from runcomfy_seedream.api.batch import Member, batch_done, batch_line, batch_outcome, collect_done, collect_line, collect_outcome
from runcomfy_seedream.api.errors import BatchError, RequestNotFoundError, RunComfyError
from runcomfy_seedream.api.events import heard_by
from runcomfy_seedream.api.records import MAX_ROWS, Records
from runcomfy_seedream.api.spending import JobPlan, Spending, SpendingLimits

pytestmark = pytest.mark.usefixtures("fresh_process_state")


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path in these tests


def block_the_disk(state: Path) -> None:
    """From now on the records cannot be written (SQLite cannot start its rollback journal), as when the disk fills up."""
    (state / "records.db-journal").mkdir()


def shell(state: Path, statement: str, rows=((),)) -> None:
    """A change to the job records, as a user with the sqlite3 shell would make it."""
    with contextlib.closing(sqlite3.connect(state / "records.db")) as database, database:
        database.executemany(statement, rows)


async def usd_per_image() -> float:
    return 0.03


async def submitting(records: Records, fingerprint: str) -> tuple[Spending, str]:
    """A run's reservation of one job, up to the last piece of its submit: it holds its inputs from now on."""
    records.renew("run", 600.0)
    spending = Spending(SpendingLimits(), records, service="https://model-api.runcomfy.net/v1", owner="run")
    job_id = await spending.ticket(JobPlan(fingerprint, 3, "Generate 3 images."), usd_per_image)
    await spending.may_have_sent(job_id)
    return spending, job_id


def test_every_job_of_a_long_list_in_flight_keeps_its_record(tmp_path):
    records = Records.at(tmp_path)
    now = time.time()
    in_flight = [(f"j{n}", f"fp{n}", "queued", 1, f"req{n}", now - 600 + n, now - 600 + n) for n in range(205)]
    finished = [(f"d{n}", f"old{n}", "done", 0, f"old-req{n}", now - 300 + n * 0.01, now) for n in range(MAX_ROWS + 50)]
    insert = "INSERT INTO jobs (id, fingerprint, state, hold, request_id, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)"
    shell(tmp_path, insert, in_flight + finished)
    records.tidy()  # more rows than the records keep, and every in-flight job older than every finished one
    oldest, newest = records.held("fp0"), records.held("fp204")
    assert oldest.request_id == "req0" and newest.request_id == "req204"
    kept = {job.id for job in records.jobs()}
    assert {f"j{n}" for n in range(205)} <= kept and len(kept) == 205 + MAX_ROWS  # the newest finished ones, and every held one
    assert not kept & {f"d{n}" for n in range(50)}  # the oldest finished ones went


def test_a_request_id_that_came_back_after_the_disk_filled_outranks_the_hold_written_before(tmp_path):
    records = Records.at(tmp_path)

    async def scenario():
        spending, job_id = await submitting(records, "fp")  # on disk, just before the last piece of the upload
        block_the_disk(tmp_path)
        warned: list[str] = []
        with heard_by(lambda event: warned.append(event.message) if event.warning else None):
            await spending.submitted(job_id, "req-1")  # RunComfy answered; the disk refuses: kept in memory
        return records.held("fp"), warned

    entry, warned = asyncio.run(scenario())
    assert entry.state == "queued" and entry.request_id == "req-1" and records.in_memory and warned == []
    assert "kept in memory only" in records.trouble and str(tmp_path / "records.db") in records.trouble


def test_a_release_the_disk_refuses_still_releases(tmp_path):
    records = Records.at(tmp_path)

    async def scenario():
        spending, job_id = await submitting(records, "fp")
        await spending.submitted(job_id, "req-1")
        block_the_disk(tmp_path)
        records.release("fp")  # the job was cancelled; the row on disk still holds the inputs
        return records.held("fp")

    assert asyncio.run(scenario()) is None and records.in_memory


def test_a_prompt_comfyui_cancels_while_queued_is_forgotten_and_the_next_run_submits(fake, comfy):
    fake.behaviour.queue_s = 30.0
    node = node_object()

    async def cancelled_while_queued():
        task = asyncio.create_task(node.generate(**node_inputs()))
        while not fake.jobs or not fake.requests_to(f"/v1/requests/{next(iter(fake.jobs))}/status"):
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(cancelled_while_queued())
    assert fake.cancel_calls == 1 and all(job.cancelled for job in fake.jobs.values())
    fake.behaviour.queue_s = 0.05
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3 and fake.submits == 2  # not "cancelled at RunComfy (not by this node)"


def test_a_batch_shows_its_items_local_trouble_and_says_a_restart_pays_again(fake, comfy, tmp_path):
    state = state_dir(tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("a file where the folder should be")
    outputs = run_list([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(2)])
    assert isinstance(outputs, list)
    final = comfy.progress_texts()[-1]
    assert final.startswith("Batch of 2 done: 2 jobs")
    warning = final.splitlines()[-1]
    assert warning.startswith(f"Warning: the job records cannot be kept in {state / 'records.db'}")
    assert "closing ComfyUI before this job is collected means the next run pays again" in warning
    assert "could not save the images for a free re-run" in warning and warning.endswith("this run goes on.")
    assert sum(line.startswith("Warning") for line in final.splitlines()) == 1  # one line for the batch


def test_stop_in_a_list_with_a_failed_item_says_what_happened_to_each_job(fake, comfy):
    fake.behaviour.queue_s = 30.0
    items = [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(3)]
    items[0]["prompt"] = "x" * 700
    comfy.stop_when = lambda text: text.startswith("Batch of 3:") and "2 queued at RunComfy" in text
    stopped = run_list(items)
    assert isinstance(stopped, comfy.InterruptProcessingException)
    assert str(stopped) == (
        "Stopped the batch of 3: 2 queued jobs cancelled before they started; 1 failed: item 1: prompt: has 700 characters; "
        "the model accepts at most 600. Shorten it by 100 characters."
    )  # what failed, and how to fix it, as without Stop
    assert all(job.cancelled for job in fake.jobs.values()) and fake.submits == 2


def test_a_single_run_s_last_text_keeps_its_warning_line(fake, comfy, tmp_path):
    state = state_dir(tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("a file where the folder should be")
    fake.behaviour.run_s = 30.0
    comfy.stop_when = lambda text: text.startswith("Generating")
    with pytest.raises(comfy.InterruptProcessingException):
        run_node(**node_inputs())
    last = comfy.progress_texts()[-1]
    assert last.startswith("Stopped. Request") and "means the next run pays again" in last.splitlines()[-1]


def test_a_saved_cost_that_cannot_be_true_is_set_aside_not_shown(fake, comfy, tmp_path):
    run_node(**node_inputs())
    state = state_dir(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        shell(state, "UPDATE saved SET cost_usd = -5.0")  # the records refuse a negative cost
    shell(state, "UPDATE saved SET cost_usd = 5000.0")  # an amount, but no job of 3 images can have cost it
    run_node(**node_inputs())
    final = comfy.progress_texts()[-1]
    assert "$5000" not in final and "set aside" in final and "request resumed" in final and fake.submits == 1


def test_an_item_whose_tensor_cannot_be_read_fails_alone(fake, comfy):
    unreadable = torch.empty((1, 48, 64, 3), device="meta")
    items = [node_inputs(image_1=image, unique_id="9") for image in (unreadable, image_batch(1, 48, 64))]
    failed = run_list(items)
    assert isinstance(failed, BatchError) and [number for number, _, _ in failed.failures] == [1]
    assert "image_1: could not be read" in str(failed) and fake.submits == 1


def _batch_of(*ends) -> list[Member]:
    """A list's members, ended as given: a result, or an error (the texts are pure functions of that)."""
    members = [Member(number) for number in range(1, len(ends) + 1)]
    images = ImageBatch([(4, 4)])
    images.place(0, np.zeros((4, 4, 3), dtype=np.uint8))
    for member, end in zip(members, ends, strict=True):
        if isinstance(end, BaseException):
            member.end(error=end)
        else:
            member.end(result=GenerationResult(end[0], ("https://x/1.png",), images, end[1]))
    return members


def test_a_batch_total_says_when_a_job_did_not_report_its_cost():
    line = batch_done(_batch_of(("r1", 0.09), ("r2", None), ("r3", 0.09)))
    assert line == "Batch of 3 done: 3 jobs, cost $0.18 for 2 of them (1 did not report a cost)"


def test_stop_says_which_jobs_were_not_cancelled_and_which_finished_without_being_downloaded():
    batch = _batch_of(
        StopRequested("cancel unconfirmed", request_id="r1"),
        StopRequested("stopped while downloading", request_id="r2", finished=True),
        ("r3", 0.09),
    )
    assert str(batch_outcome(batch)) == (
        "Stopped the batch of 3: 1 not cancelled (already generating, or the cancel was not confirmed) may still be "
        "charged; 1 done and saved; 1 finished at RunComfy but not downloaded (run the node again to collect them "
        "without paying)."
    )


def _records_in_memory(tmp_path) -> None:
    """A file where the user folder should be: the records live in memory, and every run warns of it."""
    state = state_dir(tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("a file where the folder should be")


def test_a_run_that_fails_keeps_its_warning_line_under_the_error(fake, comfy, tmp_path):
    _records_in_memory(tmp_path)
    fake.behaviour.fail_with = "the model crashed."  # a reason that ends a sentence itself
    with pytest.raises(RunComfyError):
        run_node(**node_inputs())
    last = comfy.progress_texts()[-1]
    assert last.startswith("RunComfy reports the generation failed: the model crashed. Adjust the prompt")
    assert "kept in memory only" in last.splitlines()[-1]


def test_a_list_s_records_warning_is_said_under_the_node_and_not_again_in_the_log(fake, comfy, tmp_path, caplog):
    _records_in_memory(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runcomfy.seedream"):
        outputs = run_list([node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(2)])
    assert len(outputs) == 2 and "kept in memory only" in comfy.progress_texts()[-1]
    assert [record.getMessage() for record in caplog.records if record.name == "runcomfy.seedream"] == []


def test_stop_counts_a_job_shared_by_identical_items_once_and_names_one_item_as_it():
    shared = StopRequested("stopped while downloading", request_id="r1", finished=True)
    assert str(batch_outcome(_batch_of(shared, shared, StopRequested("not sent")))) == (
        "Stopped the batch of 3: 1 finished at RunComfy but not downloaded (run the node again to collect it without paying); 1 not sent."
    )
    assert "1 done and saved (run the node again to collect it without paying)" in str(
        batch_outcome(_batch_of(("r1", 0.09), StopRequested("not sent")))
    )


def _requests_of(*ends) -> list[Member]:
    """A collect list's distinct requests, ended as given (the words are pure functions of that)."""
    members = _batch_of(*ends)
    for member, end in zip(members, ends, strict=True):
        member.key = end.request_id if isinstance(end, BaseException) else end[0]
    return members


def test_a_collect_list_says_each_request_s_fate_in_pure_words():
    both = _requests_of(("r1", 0.06), ("r2", 0.03))
    assert collect_done(both) == "Collected 2 requests: 2 images, paid $0.09 when they ran (nothing charged now)"
    assert collect_line(both) == "Collecting 2 requests (free, nothing is submitted): 2 done"
    stopped = _requests_of(("r1", 0.06), StopRequested("stopped waiting", request_id="r2"))
    assert str(collect_outcome(stopped)) == (
        "Stopped waiting: 1 of 2 requests not collected yet (r2); they go on at RunComfy: run this node again to collect "
        "them. 1 collected and saved."
    )
    unknown = _requests_of(("r1", None), RequestNotFoundError("RunComfy does not know request r2.", request_id="r2"))
    failed = collect_outcome(unknown)
    assert isinstance(failed, BatchError) and failed.failures[0][:2] == (2, "r2")
    assert str(failed) == "1 of 2 requests could not be collected. 1 collected and saved. item 2: RunComfy does not know request r2."


def test_a_batch_line_counts_phases_and_the_estimate_of_each_distinct_input_once():
    request = EditSequentialRequest("Generate 2 images.", max_images=2)
    first, copy, other = (Member(number) for number in (1, 2, 3))
    first.plan = other.plan = Plan(request, [], "png", "f", ())
    copy.plan, copy.leader, copy.phase = first.plan, first, Phase.SHARING
    first.end(result=None)
    other.phase = Phase.QUEUED
    assert batch_line([first, copy, other], None) == "Batch of 3: 1 done, 1 queued at RunComfy, 1 waiting for an identical item"
    assert batch_line([first, copy, other], 0.03).endswith("; estimated cost up to $0.12")  # 2 distinct x 2 images x $0.03
