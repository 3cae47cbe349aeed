"""A paid request is never paid twice: re-running the same inputs collects it, and finished results come from disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers import job_rows, node_inputs, node_object, quick_timing, run_node, single
from runcomfy_seedream.api.errors import DeadlineExceededError, OutcomeUnknownError
from runcomfy_seedream.fake_service import Fault


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path in these tests


def test_after_a_timeout_running_again_collects_the_same_request(fake, comfy, monkeypatch, tmp_path):
    fake.behaviour.run_s = 2.5
    with pytest.raises(DeadlineExceededError) as caught:
        run_node(timing=quick_timing(deadline_s=1.0), **node_inputs())
    (request_id,) = fake.jobs
    assert request_id in str(caught.value)
    assert job_rows(tmp_path, "request_id", "hold") == [(request_id, 1)]  # it holds these inputs

    images, _, _, second_id = run_node(**node_inputs())  # a fresh node object, as after a restart
    assert second_id == request_id and images.shape[0] == 3
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert any(t.startswith(f"Resumed request {request_id}") for t in comfy.progress_texts())
    assert "request resumed" in comfy.progress_texts()[-1]
    assert job_rows(tmp_path, "state", "request_id", "hold") == [("done", request_id, 1)]  # a second record


def test_after_an_outage_outlasts_the_deadline_running_again_resumes(fake, comfy):
    fake.behaviour.run_s = 0.5
    comfy.on_text = lambda text: text.startswith("Submitted") and fake.behaviour.start_outage(30.0, Fault("http", status=503))
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=1.5), **node_inputs())
    assert fake.behaviour.unanswered > 8  # it kept trying until the job's deadline
    fake.behaviour.outage = None
    comfy.on_text = None
    _, _, _, request_id = run_node(**node_inputs())
    assert fake.submits == 1 and request_id in fake.jobs


def test_a_request_the_service_forgot_is_submitted_anew_and_the_user_told(fake, comfy, monkeypatch):
    fake.behaviour.run_s = 2.5
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=1.0), **node_inputs())
    fake.jobs.clear()  # expired at RunComfy
    fake.behaviour.run_s = 0.3
    _, _, _, request_id = run_node(**node_inputs())
    assert request_id in fake.jobs
    assert any("no longer known to RunComfy; submitting a new one" in t for t in comfy.progress_texts())
    assert "is no longer known to RunComfy, so a new one was submitted" in comfy.progress_texts()[-1]


def test_unchanged_inputs_after_a_restart_cost_nothing(fake, comfy):
    first = run_node(**node_inputs())
    requests_before = len(fake.requests)
    second = run_node(**node_inputs())  # a new node object: ComfyUI's memory cache is gone
    assert len(fake.requests) == requests_before, "nothing may be sent"
    assert second[3] == first[3] and bool((second[0] == first[0]).all())
    assert comfy.progress_texts()[-1].startswith(f"Done: 3 images, request {first[3]}, paid $0.09 when it ran (nothing charged now)")
    assert any("nothing sent, nothing charged" in t for t in comfy.progress_texts())


def test_a_new_seed_forces_a_new_generation(fake, comfy):
    run_node(**node_inputs(seed=1))
    run_node(**node_inputs(seed=2))
    assert fake.submits == 2


def test_changed_pixels_force_a_new_generation(fake, comfy):
    from helpers import image_batch

    run_node(**node_inputs(image_1=image_batch(1, 64, 96, seed=1)))
    run_node(**node_inputs(image_1=image_batch(1, 64, 96, seed=2)))
    assert fake.submits == 2


def test_an_unknown_submit_outcome_blocks_an_identical_resubmit(fake, comfy):
    fake.behaviour.inject("submit", Fault("drop"))
    with pytest.raises(OutcomeUnknownError):
        run_node(**node_inputs())
    with pytest.raises(OutcomeUnknownError) as caught:
        run_node(**node_inputs())
    assert "to avoid paying twice it is not sent again" in str(caught.value) and "change the seed" in str(caught.value)
    assert fake.submit_attempts == 1
    run_node(**node_inputs(seed=43))
    assert fake.submit_attempts == 2


def test_stop_while_generating_then_run_again_collects_the_paid_job(fake, comfy):
    fake.behaviour.run_s = 1.5
    comfy.stop_when = lambda text: text.startswith("Generating")
    with pytest.raises(comfy.InterruptProcessingException):
        run_node(**node_inputs())
    comfy.stop_when = None
    _, _, _, request_id = run_node(**node_inputs())
    assert fake.submits == 1 and request_id in fake.jobs


def test_a_cancelled_queued_job_is_forgotten_so_the_next_run_submits(fake, comfy):
    fake.behaviour.queue_s = 3.0
    comfy.stop_when = lambda text: text.startswith("Queued")
    with pytest.raises(comfy.InterruptProcessingException):
        run_node(**node_inputs())
    comfy.stop_when = None
    fake.behaviour.queue_s = 0.2
    run_node(**node_inputs())
    assert fake.submits == 2 and fake.cancel_calls == 1


def test_a_failed_job_is_not_resumed(fake, comfy):
    from runcomfy_seedream.api.errors import JobFailedError

    fake.behaviour.fail_with = "temporary model error"
    with pytest.raises(JobFailedError):
        run_node(**node_inputs())
    fake.behaviour.fail_with = None
    run_node(**node_inputs())
    assert fake.submits == 2


def test_the_records_hold_no_secret_and_only_the_owner_reads_them(fake, comfy, tmp_path):
    secret = "rc_live_SECRET_in_env_9d8c"
    fake.valid_tokens.add(secret)
    import os

    os.environ["RUNCOMFY_API_TOKEN"] = secret  # restored by the fixture's monkeypatch at teardown
    fake.behaviour.run_s = 2.5
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.8), **node_inputs())  # leaves a job that holds its inputs behind
    written = b"".join(p.read_bytes() for p in state_dir(tmp_path).rglob("*") if p.is_file())
    assert [rid for (rid,) in job_rows(tmp_path, "request_id")] == list(fake.jobs)  # the paid request was recorded
    assert secret.encode() not in written and b"SECRET" not in written
    assert oct(state_dir(tmp_path).stat().st_mode & 0o777) == "0o700"


def test_two_nodes_running_at_once_keep_consistent_records(fake, comfy, tmp_path):
    async def both():
        nodes = [node_object() for _ in range(2)]
        return await asyncio.gather(
            nodes[0].generate(**node_inputs(seed=5, unique_id="1")), nodes[1].generate(**node_inputs(seed=6, unique_id="2"))
        )

    first, second = map(single, asyncio.run(both()))
    assert sorted(rid for (rid,) in job_rows(tmp_path, "request_id")) == sorted([first[3], second[3]])  # neither lost
    assert fake.submits == 2 and len(list((state_dir(tmp_path) / "results").iterdir())) == 2
