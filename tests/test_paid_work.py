"""Paid work is never lost and never paid twice: overlapping runs, other processes, kill -9, outages, honest holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import job_rows, node_inputs, node_object, quick_timing, run_node, single
from runcomfy_seedream.api import Limits, RetryPolicy
from runcomfy_seedream.api.errors import DeadlineExceededError, OutcomeUnknownError, ServiceError
from runcomfy_seedream.api.events import heard_by
from runcomfy_seedream.api.records import CachedResult, Records, request_fingerprint
from runcomfy_seedream.api.resume import RunStore
from runcomfy_seedream.fake_service import Fault

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import asyncio, sys
sys.path.insert(0, {scripts!r}); sys.path.insert(0, {tests!r})
from pack_import import load_pack
load_pack()
from helpers import node_inputs, quick_timing, run_node
images, _, _, request_id = run_node(timing=quick_timing(lease_s={lease_s!r}), **node_inputs())
print("RESULT", request_id, images.shape[0], float(images.sum()), flush=True)
"""
SHORT_LEASE_S = 1.0  # a process killed with its run lock lets the next run of these inputs in after this


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path in these tests


def start_child(tmp_path: Path, lease_s: float = 60.0) -> subprocess.Popen:
    """Another ComfyUI process on the same user folder, running the same inputs."""
    code = CHILD.format(scripts=str(ROOT / "scripts"), tests=str(ROOT / "tests"), lease_s=lease_s)
    return subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def created(fake, monkeypatch) -> threading.Event:
    """Set once the fake service created a job (the submit's last piece arrived)."""
    event, create = threading.Event(), fake.create_job

    def create_job(*args, **kwargs):
        try:
            return create(*args, **kwargs)
        finally:
            event.set()

    monkeypatch.setattr(fake, "create_job", create_job)
    return event


def polled(fake, monkeypatch) -> threading.Event:
    """Set once a job's status is asked for: its request id is in the records by then."""
    event, record = threading.Event(), fake.record

    def recorded(request):
        record(request)
        if request.path.split("?")[0].endswith("/status"):
            event.set()

    monkeypatch.setattr(fake, "record", recorded)
    return event


def edit_records(state: Path, statement: str, *params) -> None:
    """A change to the job records, as a user with the sqlite3 shell would make it."""
    with contextlib.closing(sqlite3.connect(state / "records.db")) as database, database:
        database.execute(statement, params)


def test_identical_runs_at_once_in_one_process_share_one_paid_job(fake, comfy):
    fake.behaviour.run_s = 1.0

    async def twice():
        first, second = node_object(), node_object()
        return await asyncio.gather(first.generate(**node_inputs(unique_id="1")), second.generate(**node_inputs(unique_id="2")))

    one, two = map(single, asyncio.run(twice()))
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert one[3] == two[3] and bool((one[0] == two[0]).all())
    assert any(t.startswith("Waiting for an identical run") for t in comfy.progress_texts())


def test_identical_runs_in_two_processes_on_one_user_folder_share_one_paid_job(fake, comfy, monkeypatch):
    fake.behaviour.run_s = 1.5
    submitted = created(fake, monkeypatch)
    child = start_child(Path(os.environ["HOME"]))
    try:
        submitted.wait(timeout=60)  # the other process submits first
        images, _, _, request_id = run_node(**node_inputs())
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    (line,) = [row for row in out.splitlines() if row.startswith("RESULT")]
    _, child_request, count, total = line.split()
    assert child_request == request_id and int(count) == images.shape[0] == 3
    assert abs(float(total) - float(images.sum())) < 1e-3 * float(total)
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert any(t.startswith("Waiting for an identical run") for t in comfy.progress_texts())


def test_kill_9_while_generating_then_running_again_collects_without_paying(fake, comfy, tmp_path, monkeypatch):
    fake.behaviour.run_s = 4.0
    waiting = polled(fake, monkeypatch)
    child = start_child(tmp_path, lease_s=SHORT_LEASE_S)
    try:
        waiting.wait(timeout=60)  # the request id is on disk (before it, a hold would be the right outcome)
        assert job_rows(tmp_path, "request_id", "hold") == [(*fake.jobs, 1)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    (request_id,) = fake.jobs
    images, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and images.shape[0] == 3
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert any(t.startswith(f"Resumed request {request_id}") for t in comfy.progress_texts())


def test_kill_9_after_the_upload_before_the_answer_holds_instead_of_paying_again(fake, comfy, tmp_path, monkeypatch):
    fake.behaviour.inject("submit", Fault("stall", seconds=20.0))  # the job exists; its answer is slow
    arrived = created(fake, monkeypatch)
    child = start_child(tmp_path, lease_s=SHORT_LEASE_S)
    try:
        arrived.wait(timeout=60)  # written down before the last piece of the upload went
        assert job_rows(tmp_path, "state", "hold", "request_id") == [("unknown", 1, None)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    with pytest.raises(OutcomeUnknownError) as caught:
        run_node(**node_inputs())
    assert "not sent again" in str(caught.value)
    assert fake.submits == 1 and fake.submit_attempts == 1


def test_a_job_the_node_cancelled_at_its_deadline_is_forgotten(fake, comfy):
    fake.behaviour.queue_s = 30.0
    with pytest.raises(DeadlineExceededError) as caught:
        run_node(timing=quick_timing(deadline_s=1.0), **node_inputs())
    assert caught.value.cancelled and "cancelled before it started" in str(caught.value)
    fake.behaviour.queue_s = 0.2
    images, *_ = run_node(**node_inputs())  # a new submit, not "cancelled at RunComfy (not by this node)"
    assert images.shape[0] == 3 and fake.submits == 2
    assert not any("not by this node" in t for t in comfy.progress_texts())


def test_a_gateway_timeout_after_the_upload_holds_the_inputs(fake, comfy):
    fake.behaviour.inject("submit", Fault("gateway", status=504))
    with pytest.raises(OutcomeUnknownError) as first:
        run_node(**node_inputs())
    assert "may have created the job" in str(first.value)
    with pytest.raises(OutcomeUnknownError) as second:
        run_node(**node_inputs())
    assert "not sent again" in str(second.value) and fake.submit_attempts == 1
    run_node(**node_inputs(seed=43))  # a new seed is a new request
    assert fake.submit_attempts == 2


@pytest.mark.parametrize("status", [401, 411, 413])
def test_a_proxy_that_refuses_early_holds_nothing(fake, comfy, status):
    import torch

    big = {"image_1": torch.rand((1, 1400, 1400, 3))}  # several MB: the refusal comes while it is being sent
    fake.behaviour.inject("submit", Fault("early", status=status))
    with pytest.raises(ServiceError) as caught:
        run_node(**node_inputs(**big))
    assert "may have been" not in str(caught.value) and fake.submits == 0
    images, *_ = run_node(**node_inputs(**big))  # nothing held: the same inputs go through at once
    assert images.shape[0] == 3 and fake.submits == 1


def test_a_long_outage_mid_job_ends_in_the_images_with_one_submit(fake, comfy):
    """A ten-minute outage, scaled down: retries are set by the policy, so only their count matters."""
    fake.behaviour.run_s = 1.0

    def outage() -> None:  # the service's side: down, then throttling, then failing, then back
        fake.refuse_connections(0.6)
        time.sleep(0.7)
        for fault in (Fault("http", status=429), Fault("http", status=429, retry_after="0"), Fault("http", status=503)):
            fake.behaviour.start_outage(0.6, fault)
            time.sleep(0.6)

    started = []

    def on_text(text):
        if text.startswith("Submitted") and not started:
            started.append(threading.Thread(target=outage, daemon=True))
            started[0].start()

    comfy.on_text = on_text
    images, *_ = run_node(timing=quick_timing(job_retry=RetryPolicy.until_deadline(base_delay_s=0.02, max_delay_s=0.1)), **node_inputs())
    assert images.shape[0] == 3 and fake.submits == 1 and fake.submit_attempts == 1
    texts = comfy.progress_texts()
    assert any(t.startswith("RunComfy unreachable") and "the job is still running" in t for t in texts)
    assert any(t.startswith("RunComfy busy (HTTP 429); retrying in") and "the job is still running" in t for t in texts)
    assert fake.behaviour.unanswered > 8, "more tries than any fixed count"


def test_over_ten_minutes_of_outage_the_waits_stay_under_half_a_minute_and_never_give_up():
    policy = RetryPolicy.until_deadline()
    waited, attempt, delays = 0.0, 0, []
    while waited < 600:
        attempt += 1
        delay = policy.delay(attempt, retry_after=0.0 if attempt % 2 else None)
        assert not policy.gives_up(attempt, waited, delay)
        delays.append(delay)
        waited += delay
    assert max(delays) <= 30.0 and min(delays[8:]) >= 20.0  # backs off, then polls about twice a minute
    assert 20 <= len(delays) <= 40


def test_retry_after_zero_still_backs_off(fake, comfy):
    fake.behaviour.inject("status", *[Fault("http", status=429, retry_after="0")] * 6)
    run_node(timing=quick_timing(job_retry=RetryPolicy.until_deadline(base_delay_s=0.04, max_delay_s=2.0)), **node_inputs())
    polls = [r.at for r in fake.requests if r.path.endswith("/status")]
    assert polls[6] - polls[0] >= 0.04 * 0.75 * (1 + 2 + 4 + 8 + 16 + 32)  # exponential, not a burst


def _user_folder_is_a_file(state: Path) -> None:
    state.parent.mkdir(parents=True)
    state.write_text("a file, not a folder")


def _records_db_is_a_folder(state: Path) -> None:
    (state / "records.db").mkdir(parents=True)


def _writes_are_refused(state: Path) -> None:
    """SQLite cannot start its rollback journal beside the records: every write is refused, as on a full disk."""
    (state / "records.db-journal").mkdir(parents=True)


def _read_only_folder(state: Path) -> None:
    state.mkdir(parents=True)
    state.chmod(0o500)


@pytest.mark.parametrize(
    "block",
    [
        _user_folder_is_a_file,
        _records_db_is_a_folder,
        _writes_are_refused,
        pytest.param(
            _read_only_folder,
            marks=pytest.mark.skipif(
                os.name == "nt" or (hasattr(os, "geteuid") and os.geteuid() == 0), reason="root and Windows write into a 0o500 folder"
            ),
        ),
    ],
)
def test_records_the_disk_refuses_move_to_memory_with_one_warning_and_the_paid_job_is_still_collected(fake, comfy, tmp_path, block):
    state = state_dir(tmp_path)
    block(state)
    try:
        fake.behaviour.run_s = 1.5
        comfy.stop_when = lambda text: text.startswith("Generating")
        with pytest.raises(comfy.InterruptProcessingException):
            run_node(**node_inputs())
        comfy.stop_when = None
        (request_id,) = fake.jobs
        images, _, _, collected = run_node(**node_inputs())
    finally:
        if state.is_dir():
            state.chmod(0o700)
    assert collected == request_id and images.shape[0] == 3
    assert fake.submits == 1 and fake.submit_attempts == 1
    assert any(t.startswith(f"Resumed request {request_id}") for t in comfy.progress_texts())
    warnings = [line for line in comfy.progress_texts()[-1].splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and warnings[0].count("kept in memory only") == 1 and warnings[0].endswith("this run goes on.")
    assert "closing ComfyUI before this job is collected means the next run pays again" in warnings[0]


def test_saved_results_are_capped_in_bytes_least_recently_used_first(tmp_path, fresh_process_state):
    records = Records.at(tmp_path)
    names = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]

    def store(name: str) -> None:
        records.store(name, CachedResult(f"req-{name[0]}", (), None, [os.urandom(1000)]), max_entries=100, max_bytes=3500)

    for age, name in enumerate(names[:3]):
        store(name)
        edit_records(tmp_path, "UPDATE saved SET used = ? WHERE fingerprint = ?", 1_000_000 + age, name)  # long ago, a before b before c
    assert records.saved(names[0]) is not None  # a is used again: now the most recent
    store(names[3])
    kept = sorted(p.name[0] for p in (tmp_path / "results").iterdir() if not p.name.startswith("."))
    assert kept == ["a", "c", "d"]  # b was the least recently used
    assert records.saved(names[1]) is None
    assert [records.saved(name).request_id for name in (names[0], *names[2:])] == ["req-a", "req-c", "req-d"]


def test_saved_results_beyond_the_count_bound_go_first_and_their_jobs_are_collected_again_free(fake, comfy, tmp_path):
    limits = Limits(cache_max_entries=2)
    first, second, third = (run_node(limits=limits, **node_inputs(seed=seed))[3] for seed in (1, 2, 3))
    assert len(list((state_dir(tmp_path) / "results").iterdir())) == 2
    assert run_node(limits=limits, **node_inputs(seed=3))[3] == third
    assert "saved result reused" in comfy.progress_texts()[-1]
    assert run_node(limits=limits, **node_inputs(seed=1))[3] == first  # evicted: its request is collected again
    assert "request resumed" in comfy.progress_texts()[-1] and fake.submits == 3
    assert len(list((state_dir(tmp_path) / "results").iterdir())) == 2


def test_a_batch_over_the_memory_budget_is_fitted_and_the_user_told(fake, comfy):
    from runcomfy_seedream.api import Limits

    fake.behaviour.mixed_sizes = True
    budget = 600_000  # the native copies (389 kB) fit; three padded 90x160 canvases (518 kB) on top do not
    images, image_list, _, _ = run_node(limits=Limits(batch_max_bytes=budget), **node_inputs())
    assert (images.numel() + sum(item.numel() for item in image_list)) * 4 <= budget
    assert [tuple(item.shape) for item in image_list] == [(1, 90, 160, 3), (1, 45, 80, 3), (1, 90, 160, 3)]
    height, width = images.shape[1:3]
    assert abs(width / height - 160 / 90) < 0.05  # never stretched
    assert "scaled down to fit" in comfy.progress_texts()[-1]
    assert np.isfinite(images.numpy()).all()


def test_the_run_lock_waits_stops_and_survives_cancelled_runs(tmp_path, fresh_process_state):
    from runcomfy_seedream.api.errors import StopRequested

    records = Records.at(tmp_path)
    first, second = (RunStore(records, owner, max_entries=10, max_bytes=2**20) for owner in ("first", "second"))
    for owner in ("first", "second"):
        records.renew(owner, 600.0)  # both runs are alive: only an unlock frees the lock
    waits: list[str] = []

    async def scenario():
        holding, never = asyncio.Event(), asyncio.Event()

        async def holder():
            async with first.exclusive("f" * 64, lambda: False, "waiting"):
                holding.set()
                await never.wait()

        task = asyncio.ensure_future(holder())
        await holding.wait()
        with pytest.raises(StopRequested) as stopped:  # Stop while waiting: nothing was sent
            with heard_by(lambda event: waits.append(event.message)):  # it says so once, while it waits
                async with second.exclusive("f" * 64, lambda: bool(waits), "waiting"):
                    pass
        assert "waiting for an identical run" in str(stopped.value)
        task.cancel()  # a cancelled run must let go of the lock
        await asyncio.gather(task, return_exceptions=True)
        with heard_by(lambda event: waits.append(event.message)):
            async with second.exclusive("f" * 64, lambda: False, "again"):
                pass
            async with first.exclusive("e" * 64, lambda: False, "other inputs"):
                pass

    asyncio.run(scenario())
    assert waits == ["waiting"]  # the lock was free again at once, and other inputs never wait
    with contextlib.closing(sqlite3.connect(tmp_path / "records.db")) as database:
        assert database.execute("SELECT * FROM locks").fetchall() == []  # locks go with their run


def test_a_hold_survives_the_clock_being_set_back(tmp_path, fresh_process_state):
    records = Records.at(tmp_path)
    later = time.time() + 30  # the clock was 30 s ahead when the hold was written
    edit_records(
        tmp_path,
        "INSERT INTO jobs (id, fingerprint, state, hold, created, updated) VALUES ('j1', ?, 'unknown', 1, ?, ?)",
        "f" * 64,
        later,
        later,
    )
    entry = records.held("f" * 64)
    assert entry is not None and entry.state == "unknown"


@pytest.mark.parametrize(
    "spelling,same_as",
    [
        ("http://LOCALHOST:8765/v1", "http://localhost:8765/v1"),
        ("https://model-api.runcomfy.net:443/v1", "https://model-api.runcomfy.net/v1"),
        ("HTTPS://Model-API.RunComfy.net./v1/", "https://model-api.runcomfy.net/v1"),
    ],
)
def test_one_service_spelled_differently_is_one_fingerprint(spelling, same_as):
    def key(base_url):
        return request_fingerprint(model_id="m", base_url=base_url, settings={"seed": 1}, reference_digests=["d"], reference_urls=[])

    assert key(spelling) == key(same_as) != key("https://other.example.com/v1")


def test_a_symlinked_cli_token_file_is_followed(fake, comfy, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNCOMFY_API_TOKEN")
    real = tmp_path / "dotfiles" / "token.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"token": fake.behaviour.token}))
    link = tmp_path / ".config" / "runcomfy" / "token.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3


def test_a_hold_the_disk_refused_still_holds_and_says_it_ends_with_comfyui(fake, comfy, tmp_path):
    state = state_dir(tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("a file where the state folder should be")
    fake.behaviour.inject("submit", Fault("drop"))
    with pytest.raises(OutcomeUnknownError):
        run_node(**node_inputs(seed=777))
    with pytest.raises(OutcomeUnknownError) as held:
        run_node(**node_inputs(seed=777))
    assert "when ComfyUI restarts" in str(held.value) and fake.submit_attempts == 1


@pytest.mark.parametrize("status", [500, 503])
def test_runcomfys_own_500001_after_the_upload_holds_the_inputs(fake, comfy, status):
    """A 5xx to a submit whose whole body was sent does not prove no job exists, even with RunComfy's own code."""
    fake.behaviour.inject("submit", Fault("gateway", status=status, error_code="500001"))
    with pytest.raises(OutcomeUnknownError) as first:
        run_node(**node_inputs())
    assert "may have been charged" in str(first.value) and "500001" in str(first.value)
    assert "Wait a moment and run again" not in str(first.value)
    with pytest.raises(OutcomeUnknownError) as second:
        run_node(**node_inputs())
    assert "not sent again" in str(second.value) and fake.submit_attempts == 1
