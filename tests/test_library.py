"""The library without the node: the documented script (docs/script.md), the client, the job handle and resume, through real HTTP."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from runcomfy_seedream.api import (
    Credentials,
    EditSequentialRequest,
    InputError,
    Job,
    JobFailedError,
    PollSchedule,
    RequestNotFoundError,
    RetryPolicy,
    RunComfyClient,
    RunComfyError,
    StopRequested,
)
from runcomfy_seedream.api.events import Latch, heard_by
from runcomfy_seedream.api.job import UploadTracker, submit_watching
from runcomfy_seedream.fake_service import Fault

ROOT = Path(__file__).resolve().parents[1]
URL = "https://example.com/ref.png"
QUICK_POLLS = PollSchedule(first_s=0.02, steady_s=0.03, ceiling_s=0.05)


def documented_script() -> str:
    page = (ROOT / "docs" / "script.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", page, re.S).group(1)


def test_the_documented_script_runs_where_torch_cannot_be_imported(tmp_path):
    no_torch = tmp_path / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    script = documented_script() + "import sys; assert 'torch' not in sys.modules\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,  # not the repository: the installed package is what is imported
        env={"PYTHONPATH": str(no_torch.parent), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    request_id, shape = done.stdout.split(" ", 1)
    assert request_id and shape.strip() == "(3, 1440, 2560, 3)"


def client_for(fake, **options) -> RunComfyClient:
    options.setdefault("retry", RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    options.setdefault("job_retry", RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.02))
    return RunComfyClient(Credentials(fake.token), fake.base_url, **options)


def test_a_job_handle_reports_its_life_and_its_result(fake):
    fake.behaviour.queue_s, fake.behaviour.run_s = 0.15, 0.15

    async def scenario():
        async with client_for(fake) as client:
            job = await client.submit(EditSequentialRequest("Generate 2 images of a lighthouse.", max_images=2, images=(URL,)))
            events = [event async for event in job.events(QUICK_POLLS)]
            return job, events, await job.result()

    job, events, result = asyncio.run(scenario())
    phases, messages = [event.phase for event in events], [event.message for event in events]
    assert fake.submits == 1 and job.request_id in fake.jobs
    assert phases[0] == "queued" and "generating" in phases and phases[-1] == "generating"
    assert messages[-1] == "Fetching the result…"
    assert result.state in ("succeeded", "completed") and len(result.urls) == 2
    assert fake.jobs[job.request_id].payload["images"] == [URL]


def test_a_request_made_earlier_is_resumed_by_its_id_and_an_unknown_one_is_reported(fake):
    async def scenario():
        async with client_for(fake) as client:
            first = await client.submit(EditSequentialRequest("Generate 1 image of a fox.", max_images=1, images=(URL,)))
            resumed = Job.resume(client, first.request_id)
            result = await resumed.result(QUICK_POLLS)
            with pytest.raises(RequestNotFoundError):
                await Job.resume(client, "no-such-request").result(QUICK_POLLS)
            with pytest.raises(RequestNotFoundError):  # one path segment, whatever it holds: never another endpoint
                await Job.resume(client, "../../models/x").result(QUICK_POLLS)
            with pytest.raises(InputError, match="request_id"):
                Job.resume(client, "")
            return first, result

    first, result = asyncio.run(scenario())
    assert result.request_id == first.request_id and result.urls and fake.submits == 1


def test_cancel_ends_a_queued_job_and_wait_says_so_on_stop(fake):
    fake.behaviour.queue_s = 5.0

    async def scenario():
        async with client_for(fake) as client:
            job = await client.submit(EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,)))
            with pytest.raises(StopRequested) as stopped:
                await job.wait(should_stop=lambda: True, poll_schedule=QUICK_POLLS)
            return job, stopped.value

    job, stopped = asyncio.run(scenario())
    assert stopped.cancelled and "cancelled at RunComfy before it started" in str(stopped)
    assert fake.jobs[job.request_id].cancelled


def test_a_stop_seen_once_while_the_submit_is_answered_still_cancels_the_queued_job(fake):
    fake.behaviour.queue_s = 5.0
    fake.behaviour.inject("submit", Fault("stall", seconds=0.4))  # the job exists; its id comes late
    upload = UploadTracker()
    pressed: list[bool] = []

    def stop_once() -> bool:  # an edge-triggered Stop, as a script may write it
        if upload.complete and not pressed:
            pressed.append(True)
            return True
        return False

    stop = Latch(stop_once)  # the one Stop check of a run: once seen, it stays seen

    async def scenario():
        async with client_for(fake) as client:
            request = EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,))
            job = await submit_watching(client, request, should_stop=stop, upload=upload)
            with pytest.raises(StopRequested) as stopped:
                await job.wait(should_stop=stop, poll_schedule=QUICK_POLLS)
            return job, stopped.value

    job, stopped = asyncio.run(scenario())
    assert pressed and stopped.cancelled and fake.jobs[job.request_id].cancelled


def test_a_token_the_service_echoes_back_is_not_shown(fake):
    fake.behaviour.inject("submit", Fault("http", status=422, message=f"bad header: Authorization: Bearer {fake.token}"))

    async def scenario():
        async with client_for(fake) as client:
            await client.submit(EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,)))

    with pytest.raises(RunComfyError) as caught:
        asyncio.run(scenario())
    assert fake.token not in str(caught.value) and "Bearer <token>" in str(caught.value)


def test_a_failed_job_raises_with_the_services_reason(fake):
    fake.behaviour.fail_with = "content policy violation"

    async def scenario():
        async with client_for(fake) as client:
            job = await client.submit(EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,)))
            await job.result(QUICK_POLLS)

    with pytest.raises(JobFailedError, match="content policy violation"):
        asyncio.run(scenario())


def test_status_reads_retry_through_429s_and_5xx_with_the_injected_policy(fake):
    notices: list[str] = []
    fake.behaviour.inject("status", Fault("http", status=429, retry_after="0"), Fault("http", status=503), Fault("drop"))

    async def scenario():
        with heard_by(lambda event: notices.append(event.message)):  # retries are announced as events
            async with client_for(fake) as client:
                job = await client.submit(EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,)))
                notices.clear()  # the submit's own events
                return await job.result(QUICK_POLLS)

    assert asyncio.run(scenario()).urls and fake.submits == 1
    assert len(notices) == 3 and all("the job is still running" in notice for notice in notices)
    assert "HTTP 429" in notices[0]


@pytest.mark.parametrize(
    "bad,field,words",
    [
        (EditSequentialRequest("x" * 601, images=(URL,)), "prompt", "has 601 characters"),
        (EditSequentialRequest("Generate 1 image.", images=("http://127.0.0.1/a.png",)), "image_urls line 1", "only public https"),
    ],
    ids=["long prompt", "http url"],
)
def test_the_request_is_checked_before_anything_is_sent(fake, bad, field, words):
    async def scenario():
        async with client_for(fake) as client:
            await client.submit(bad)

    with pytest.raises(InputError) as caught:
        asyncio.run(scenario())
    assert caught.value.field == field and words in str(caught.value)
    assert fake.submits == 0 and not fake.requests, "nothing reached the service"


def test_a_status_answer_that_inflates_far_past_the_cap_is_never_held_whole(fake):
    """The kind of answer that got ComfyUI killed: about 130 KB of gzip that inflate to 128 MiB (or, gzipped twice, a
    few KB). Reading stops past the cap, so memory stays near what one network read inflates to, however far the
    answer would go; gzip twice over is not decoded at all."""
    fake.behaviour.queue_s = 10.0
    size = 128 * 2**20
    notices: list[str] = []

    async def scenario():
        with heard_by(lambda event: notices.append(event.message)):  # retries are announced as events
            async with client_for(fake) as client:
                job = await client.submit(EditSequentialRequest("Generate 2 images of a lighthouse.", max_images=2, images=(URL,)))
                fake.behaviour.inject("status", Fault("inflating", size=size), Fault("inflating", size=size, layers=2))
                tracemalloc.start()
                try:
                    return await client.status(job.request_id), tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

    status, peak = asyncio.run(scenario())
    assert status.state == "in_queue"
    assert peak < 192 * 2**20, f"{peak / 2**20:.0f} MiB at the peak"  # about twice what one 64 KB read of gzip inflates to
    assert len(notices) == 2 and "over the 4 MiB limit" in notices[0] and "(gzip, gzip)" in notices[1]
