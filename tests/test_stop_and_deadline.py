"""Pressing Stop in each phase: noticed within a second, the queued job cancelled, and the user told what it costs."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpers import node_inputs, quick_timing, run_node, single
from runcomfy_seedream.api.errors import DeadlineExceededError


def _stop_and_count(comfy, fake, when):
    """Press Stop as soon as a progress text matches `when`; return (exception, status polls the service got after it).

    How soon Stop is noticed is measured in polls, not seconds: the node checks Stop every 0.2 s while the test's
    poll schedule asks every 0.06 s, so a handful of polls at most fall between the press and the node's reaction,
    however busy the machine is."""
    pressed_at = []

    def trigger(text):
        if when(text) and not pressed_at:
            pressed_at.append(time.monotonic())
            return True
        return False

    comfy.stop_when = trigger
    with pytest.raises(comfy.InterruptProcessingException) as caught:
        run_node(**node_inputs())
    return caught.value, sum(1 for r in fake.requests if r.path.endswith("/status") and r.at > pressed_at[0])


def test_stop_while_queued_cancels_the_job_at_runcomfy(fake, comfy):
    fake.behaviour.queue_s = 60.0
    error, polls_after = _stop_and_count(comfy, fake, lambda t: t.startswith("Queued"))
    (job,) = fake.jobs.values()
    assert job.cancelled and fake.cancel_calls == 1
    assert "was cancelled at RunComfy before it started generating" in str(error)
    assert polls_after <= 10
    assert comfy.progress_texts()[-1] == str(error)


def test_stop_while_generating_says_it_may_still_be_charged(fake, comfy):
    fake.behaviour.run_s = 60.0
    error, polls_after = _stop_and_count(comfy, fake, lambda t: t.startswith("Generating"))
    assert fake.cancel_calls == 0  # a running job cannot be cancelled
    assert "may still be charged" in str(error) and next(iter(fake.jobs)) in str(error)
    assert polls_after <= 10


def test_stop_while_preparing_sends_nothing(fake, comfy):
    error, _ = _stop_and_count(comfy, fake, lambda t: t.startswith("Preparing references 0/"))
    assert "nothing was sent" in str(error)
    assert fake.requests == []


def test_stop_while_encoding_creates_no_job(fake, comfy):
    error, _ = _stop_and_count(comfy, fake, lambda t: t.startswith("Encoding references 0/"))
    assert "nothing is charged" in str(error)
    assert fake.submits == 0


def test_stop_during_a_slow_upload_abandons_it_and_nothing_is_created(fake, comfy):
    fake.behaviour.upload_bytes_per_s = 1_000  # a slow uplink keeps the upload going for far longer than the test
    error, _ = _stop_and_count(comfy, fake, lambda t: t.startswith("Submitting"))
    assert "upload was abandoned before it completed" in str(error) and "nothing is charged" in str(error)
    assert fake.submits == 0


def test_stop_after_the_upload_waits_for_the_id_then_cancels(fake, comfy):
    from runcomfy_seedream.fake_service import Fault

    fake.behaviour.queue_s = 10.0
    fake.behaviour.inject("submit", Fault("stall", seconds=1.5))  # the body arrived; the answer is slow
    comfy.stop_when = lambda t: t.startswith("Submitting")
    original = comfy.stop_when

    import threading

    def press_later(text):
        if original(text):
            threading.Timer(0.6, comfy.press_stop).start()  # after the small body is surely sent
        return False

    comfy.stop_when = press_later
    with pytest.raises(comfy.InterruptProcessingException) as caught:
        run_node(**node_inputs())
    assert any(t.startswith("Stop pressed: waiting for RunComfy to confirm") for t in comfy.progress_texts())
    (job,) = fake.jobs.values()
    assert job.cancelled and "cancelled at RunComfy before it started" in str(caught.value)


def test_stop_while_downloading_keeps_the_request_id(fake, comfy):
    from runcomfy_seedream.fake_service import Fault

    fake.behaviour.inject("file", Fault("stall", seconds=60.0))  # the download cannot finish before Stop is noticed
    error, _ = _stop_and_count(comfy, fake, lambda t: t.startswith("Downloading 0/"))
    assert next(iter(fake.jobs)) in str(error) and "charged" in str(error)


def test_a_job_still_queued_at_the_deadline_is_cancelled(fake, comfy, monkeypatch):
    fake.behaviour.queue_s = 30.0
    with pytest.raises(DeadlineExceededError) as caught:
        run_node(timing=quick_timing(deadline_s=1.0), **node_inputs())
    assert "still queued" in str(caught.value) and "cancelled before it started" in str(caught.value)
    assert next(iter(fake.jobs.values())).cancelled


def test_a_job_still_running_at_the_deadline_is_reported_with_its_id(fake, comfy, monkeypatch):
    fake.behaviour.queue_s = 0.0
    fake.behaviour.run_s = 30.0
    with pytest.raises(DeadlineExceededError) as caught:
        run_node(timing=quick_timing(deadline_s=1.0), **node_inputs())
    assert "did not finish within 1 s" in str(caught.value) and next(iter(fake.jobs)) in str(caught.value)
    assert fake.cancel_calls == 0


def test_two_nodes_run_concurrently_each_with_one_submit(fake, comfy):
    from helpers import NODE_ID
    from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

    async def both():
        a = NODE_CLASS_MAPPINGS[NODE_ID]()
        b = NODE_CLASS_MAPPINGS[NODE_ID]()
        return await asyncio.gather(a.generate(**node_inputs(seed=1, unique_id="1")), b.generate(**node_inputs(seed=2, unique_id="2")))

    first, second = map(single, asyncio.run(both()))
    assert fake.submits == 2
    assert first[3] != second[3]
    assert not bool((first[0] == second[0]).all())  # different seeds, different pictures
    assert {node for _, node in comfy.texts} == {"1", "2"}


def test_stop_while_a_run_under_a_limit_waits_for_the_catalog_price_sends_nothing(fake, comfy, monkeypatch):
    """Before: Stop was not seen while the run waited for the catalog price its limit needs (up to 10 s for the lookup):
    the run then ended on "the price could not be read" instead of Stop."""
    import threading

    from runcomfy_seedream.api import shared
    from runcomfy_seedream.api.spending import PER_RUN_ENV
    from runcomfy_seedream.fake_service import Fault

    shared.reset_all()  # no price known to this process
    monkeypatch.setenv(PER_RUN_ENV, "5")
    fake.behaviour.inject("catalog", Fault("stall", seconds=30.0))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_node(**node_inputs())
        except BaseException as raised:  # noqa: BLE001 - the test looks at it
            outcome.append(raised)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    asked = threading.Event()
    while not asked.wait(0.01):  # until the catalog is being read (the run is waiting for its answer)
        asked.set() if any(r.path.endswith("/edit-sequential") and r.method == "GET" for r in fake.requests) else None
    comfy.press_stop()
    worker.join(60)
    shared.reset_all()
    (error,) = outcome
    assert isinstance(error, comfy.InterruptProcessingException), error
    assert "price" in str(error) and "nothing was sent" in str(error)
    assert fake.submits == 0 and not [r for r in fake.requests if r.method == "POST"]
