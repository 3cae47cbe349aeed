"""The library's run and batch without the node: generate(), plan() and execute(), SeedreamList, through real HTTP to the
fake; and the pure pieces they are made of (phases, the one Stop, the list items)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from helpers import quick_timing
from runcomfy_seedream.api import (
    CollectList,
    Credentials,
    EditSequentialRequest,
    InputError,
    Item,
    Phase,
    Reference,
    SeedreamList,
    Session,
    StopRequested,
    execute,
    generate,
    plan,
)
from runcomfy_seedream.api.batch import Member
from runcomfy_seedream.api.events import Event, Latch, View, heard_by, stoppable
from runcomfy_seedream.nodes.comfy_bridge import list_items, list_values


def portrait(seed: int = 0) -> Reference:
    return Reference("portrait", np.random.default_rng(seed).random((48, 64, 3), dtype=np.float32))


def options(fake, tmp_path, **more) -> dict:
    return dict(credentials=Credentials(fake.token), base_url=fake.base_url, timing=quick_timing(), state_dir=tmp_path, **more)


def test_generate_runs_one_job_and_a_second_call_reuses_its_saved_images(fake, tmp_path):
    seen = []
    request = EditSequentialRequest("Generate 2 images of this portrait.", max_images=2, seed=7)
    first = asyncio.run(generate([portrait()], request, on_progress=seen.append, **options(fake, tmp_path)))
    again = asyncio.run(generate([portrait()], request, **options(fake, tmp_path)))

    assert first.images.array().shape[0] == 2 and len(first.urls) == 2 and not first.reused
    assert again.reused and again.request_id == first.request_id and fake.submits == 1
    assert np.array_equal(again.images.array(), first.images.array())
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= Phase.DOWNLOADING.end  # the bar never goes back
    order = [p.phase for p in seen]
    firsts = [order.index(phase) for phase in (Phase.PREPARING, Phase.UPLOADING, Phase.QUEUED, Phase.DOWNLOADING)]
    assert firsts == sorted(firsts), order  # the phases come in the order of the run


def test_plan_refuses_what_cannot_be_sent_before_anything_is_sent(fake, tmp_path):
    async def planned(request):
        async with Session.open(**options(fake, tmp_path)) as session:
            return await plan([portrait()], request, session, reference_format="png")

    with pytest.raises(InputError) as caught:
        asyncio.run(planned(EditSequentialRequest("Generate 2 images.", max_images=15)))  # 1 reference + 15 > 15
    assert caught.value.field == "max_images" and "Set max_images to 14 or less" in str(caught.value)
    with pytest.raises(InputError, match="reference_format"):

        async def jpeg2000():
            async with Session.open(**options(fake, tmp_path)) as session:
                return await plan([portrait()], EditSequentialRequest("Generate 1 image."), session, reference_format="jp2")

        asyncio.run(jpeg2000())
    assert fake.requests == [] and fake.submits == 0


def test_plan_then_execute_is_generate_in_two_halves_and_the_plan_names_what_is_paid_for(fake, tmp_path):
    async def halves():
        async with Session.open(**options(fake, tmp_path)) as session:
            planned = await plan([portrait(3)], EditSequentialRequest("Generate 3 images.", max_images=3), session, reference_format="png")
            before = fake.submits
            return planned, before, await execute(planned, session)

    planned, submits_before_execute, result = asyncio.run(halves())
    assert submits_before_execute == 0 and fake.submits == 1
    assert planned.images_charged == 3 and len(planned.fingerprint) == 64
    assert result.request_id in fake.jobs and result.images.count == 3


def test_a_batch_runs_each_distinct_item_once_and_reports_one_line(fake, tmp_path):
    fake.behaviour.price_per_image_usd = 0.02
    lines = []
    items = [Item([portrait(seed)], EditSequentialRequest("Generate 2 images.", max_images=2)) for seed in (1, 2, 1)]

    async def batch():
        async with Session.open(**options(fake, tmp_path)) as session:
            return await SeedreamList(items, session, lambda text, fraction: lines.append((text, fraction))).run()

    results = asyncio.run(batch())
    assert fake.submits == 2 and results[0] is results[2] and results[1] is not results[0]
    assert lines[-1] == ("Batch of 3 done: 2 jobs, cost $0.08 (today: $0.08 over 2 jobs)", 1.0)
    assert any("estimated cost up to $0.08" in text for text, _ in lines)  # 2 distinct items x 2 images x $0.02
    assert all(text.startswith("Batch of 3") for text, _ in lines)


def test_phases_carry_their_label_and_their_share_of_the_bar():
    running = [phase for phase in Phase if not phase.ended]
    assert [p.label for p in Phase][:4] == ["done", "failed", "stopped", "downloading"]  # the batch line's order
    assert Phase.QUEUED.label == "queued at RunComfy" and Phase.WAITING.label == "waiting to upload"
    starts = [phase.start for phase in reversed(running)]
    assert starts == sorted(starts)  # preparing … downloading: each later phase starts no earlier
    assert Phase.GENERATING.at(0.0) == Phase.GENERATING.start and Phase.GENERATING.at(2.0) == Phase.GENERATING.end
    assert Phase("queued") is Phase.QUEUED and Phase.QUEUED == "queued"


def test_a_run_s_view_never_goes_back_and_keeps_warnings_and_pinned_lines_under_each_message():
    view = View()
    events = [
        Event(Phase.DOWNLOADING, "Downloading 1/2", within=0.5),
        Event(None, "a retry notice"),  # no phase: the bar stays
        Event(Phase.QUEUED, "late event"),  # an earlier phase cannot move the bar back
        Event(None, "Estimated cost: up to $0.09", pinned="cost"),
        Event(None, "could not save", warning="disk"),
    ]
    shown = [view.take(event) for event in events]
    assert [p.fraction for p in shown][:3] == [Phase.DOWNLOADING.at(0.5)] * 3
    assert shown[-1].text == "Warning: could not save\nEstimated cost: up to $0.09"


def test_the_one_stop_check_latches_once_seen():
    flag = [False]
    stop = Latch(lambda: flag[0])
    assert not stop()
    flag[0] = True
    assert stop()
    flag[0] = False  # ComfyUI cleared its flag: the run still knows
    assert stop()


def test_stoppable_cancels_the_work_and_raises_the_moment_s_message():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asked = []

    def pressed_once_started() -> bool:  # Stop comes while the work is under way
        asked.append(True)
        return len(asked) > 1

    async def scenario():
        return await stoppable(forever(), pressed_once_started, "Stopped while waiting: nothing was sent.", request_id="r-1")

    with pytest.raises(StopRequested) as caught:
        asyncio.run(scenario())
    assert str(caught.value) == "Stopped while waiting: nothing was sent. (request id r-1)" and cancelled == [True]
    assert asyncio.run(stoppable(asyncio.sleep(0, result=5), lambda: False, "unused")) == 5


@pytest.mark.parametrize(
    "inputs,items",
    [
        ({"prompt": ["a"], "seed": [1]}, [{"prompt": "a", "seed": 1}]),
        ({"prompt": ["a", "b", "c"], "seed": [1]}, [{"prompt": p, "seed": 1} for p in "abc"]),  # the last value repeats
        ({"prompt": ["a", "b", "c"], "seed": [1, 2]}, [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}, {"prompt": "c", "seed": 2}]),
        ({"prompt": "a", "seed": 1}, [{"prompt": "a", "seed": 1}]),  # a script's plain values: one item
    ],
)
def test_a_list_input_is_mapped_as_comfyui_maps_other_nodes(inputs, items):
    assert list_items(list_values(inputs)) == items


def test_an_empty_list_is_refused_with_the_input_named():
    with pytest.raises(InputError) as caught:
        list_values({"prompt": [], "seed": [1]})
    assert caught.value.field == "prompt" and "at least one value" in str(caught.value)


def test_execute_s_result_carries_the_warning_line_its_run_said(fake, tmp_path):
    state = tmp_path / "state"
    state.write_text("a file where the folder should be")  # the records live in memory: the run warns of it
    view = View()

    async def halves():
        with heard_by(view.take):
            async with Session.open(**{**options(fake, tmp_path), "state_dir": state}) as session:
                planned = await plan(
                    [portrait()], EditSequentialRequest("Generate 2 images.", max_images=2), session, reference_format="png"
                )
                return await execute(planned, session)

    result = asyncio.run(halves())
    assert result.warnings and "kept in memory only" in result.warnings[0] and result.warnings == view.warnings


@pytest.mark.parametrize("count", [1, 2])
def test_a_show_that_fails_on_the_final_line_never_loses_the_paid_results(fake, tmp_path, count):
    shown = []

    def show(text, fraction):
        shown.append(text)
        if text.startswith(("Done:", "Batch of 2 done")):
            raise RuntimeError("the window went away")

    async def listed():
        async with Session.open(**options(fake, tmp_path)) as session:
            items = [Item([portrait(seed)], EditSequentialRequest("Generate 2 images.", max_images=2)) for seed in range(count)]
            return await SeedreamList(items, session, show).run()

    results = asyncio.run(listed())
    assert len(results) == count and fake.submits == count and shown[-1].startswith(("Done:", "Batch of 2 done"))


def test_an_item_that_has_ended_keeps_a_late_warning_but_neither_its_phase_nor_its_bar_moves():
    member = Member(1)
    assert member.hear(Event(Phase.GENERATING, "Generating… 3 s", within=0.5)).phase is Phase.GENERATING
    member.end(error=StopRequested("stopped"))
    assert member.hear(Event(None, "the job records could not be updated (OSError)", warning="records")) is None
    assert member.hear(Event(Phase.DOWNLOADING, "Downloading 0/2")) is None
    assert (member.phase, member.fraction) == (Phase.STOPPED, 1.0) and member.view.warnings


def test_a_collect_list_s_bar_counts_each_request_once():
    """['a', 'a', 'a', 'b'] with a collected and b a fifth of the way through: the bar is at their mean."""
    listed = CollectList(["a", "a", "a", "b"], session=None, show=lambda text, fraction: None)
    first, *copies, other = listed.members
    first.key, other.key = "a", "b"
    for copy in copies:
        copy.key, copy.leader = "a", first
    first.end()
    other.fraction = 0.2
    assert listed.fraction() == pytest.approx(0.6) and not listed.single()
