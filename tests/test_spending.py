"""Spending limits and the ledger, through real HTTP to the fake: a run over a limit is refused before anything is
uploaded, paid work is collected under any limit, and the ledger keeps every job with what it cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import node_inputs, run_list, run_node, state_dir
from runcomfy_seedream.api import Limits, shared
from runcomfy_seedream.api.errors import SpendingLimitError
from runcomfy_seedream.api.ledger import LEDGER_NAME, Ledger, LedgerEntry, today_totals
from runcomfy_seedream.api.spending import PER_DAY_ENV, PER_RUN_ENV, SETTING
from runcomfy_seedream.fake_service import Fault

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_process_state")


def ledger_lines(home: Path) -> list[dict]:
    path = state_dir(home) / LEDGER_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def ledger_entries(home: Path) -> list[LedgerEntry]:
    return list(Ledger(state_dir(home)).read().entries)


def items(count: int, *, seed: int = 100, **changes) -> list[dict]:
    return [node_inputs(seed=seed + i, **changes) for i in range(count)]


def refused(outcome) -> str:
    assert isinstance(outcome, SpendingLimitError), outcome
    return str(outcome)


# --- the limits ---------------------------------------------------------------------------------


def test_a_list_over_the_limit_per_run_is_refused_before_any_upload_with_the_figures(fake, comfy, monkeypatch, tmp_path):
    monkeypatch.setenv(PER_RUN_ENV, "2")
    roomy = Limits(batch_max_bytes=2**40)  # the outputs' memory is not what this is about
    message = refused(run_list(items(10, max_images=14, prompt="Generate 14 images of a fox.", image_size="2048:2048 (1:1)"), limits=roomy))
    assert fake.submits == 0 and not [r for r in fake.requests if r.method == "POST"]
    assert "This run may cost up to $4.20 (10 jobs × up to 14 images × $0.030)" in message
    assert f"your limit per run is $2.00 (set by {PER_RUN_ENV}" in message and "Nothing was sent." in message
    assert comfy.progress_texts()[-1] == message  # said under the node
    assert not any("Encoding" in text or "Submitting" in text for text in comfy.progress_texts())
    assert ledger_entries(tmp_path) == []  # nothing reserved


def test_a_run_over_the_daily_limit_is_refused_with_what_was_spent_today(fake, comfy, monkeypatch, tmp_path):
    run_node(**node_inputs(seed=1))  # $0.09, in the ledger
    monkeypatch.setenv(PER_DAY_ENV, "0.15")
    message = refused(run_list(items(1)))
    assert fake.submits == 1
    assert (
        "Today's spending is $0.09 over 1 job" in message and "this run may cost up to $0.09 (1 job × up to 3 images × $0.030)" in message
    )
    assert "$0.18 in all, over your daily limit of $0.15" in message and PER_DAY_ENV in message and "Nothing was sent." in message


def test_a_list_whose_total_straddles_the_limit_is_refused_whole(fake, comfy, monkeypatch):
    monkeypatch.setenv(PER_RUN_ENV, "0.25")  # two items of $0.09 fit, the third does not
    message = refused(run_list(items(3)))
    assert fake.submits == 0 and "$0.27 (3 jobs × up to 3 images × $0.030)" in message


def test_a_lists_estimate_counts_identical_items_once(fake, comfy, monkeypatch, tmp_path):
    monkeypatch.setenv(PER_RUN_ENV, "0.09")
    outcome = run_list([node_inputs(seed=7)] * 4)
    assert isinstance(outcome, list) and len(outcome) == 4 and fake.submits == 1
    assert "(today: $0.09 over 1 job)" in comfy.progress_texts()[-1]


def test_the_limit_saved_from_settings_is_used_and_the_environment_wins(fake, comfy, monkeypatch, tmp_path):
    folder = state_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "spending_limits.json").write_text(json.dumps({"per_run_usd": 0.05, "per_day_usd": None}))
    message = refused(run_list(items(1)))
    assert f"your limit per run is $0.05 ({SETTING}, or {PER_RUN_ENV})" in message and fake.submits == 0
    monkeypatch.setenv(PER_RUN_ENV, "1")
    assert isinstance(run_list(items(1)), list) and fake.submits == 1


def test_a_malformed_limit_variable_names_the_variable_refuses_new_jobs_and_collecting_still_works(fake, comfy, monkeypatch):
    run_node(**node_inputs(seed=1))
    monkeypatch.setenv(PER_DAY_ENV, "five dollars")
    message = refused(run_list(items(1, seed=2)))
    assert PER_DAY_ENV in message and "'five dollars'" in message and "Nothing was sent." in message and fake.submits == 1
    assert isinstance(run_list(items(1, seed=1)), list) and fake.submits == 1  # the saved result: never refused


# --- paid work is collected under any limit ------------------------------------------------------


def test_saved_results_and_resumed_requests_are_collected_under_any_limit(fake, comfy, monkeypatch, tmp_path):
    run_list(items(2))
    assert fake.submits == 2
    monkeypatch.setenv(PER_RUN_ENV, "0")
    monkeypatch.setenv(PER_DAY_ENV, "0")
    again = run_list(items(2))
    assert isinstance(again, list) and fake.submits == 2  # saved results: nothing charged, nothing refused
    # a job the node stopped waiting for (the deadline) is resumed, not paid again, under a zero limit
    from helpers import quick_timing

    monkeypatch.delenv(PER_RUN_ENV)
    monkeypatch.delenv(PER_DAY_ENV)
    fake.behaviour.run_s = 1.0
    fake.behaviour.queue_s = 0.0
    waited = run_list(items(1, prompt="Generate 3 images of a slow river."), timing=quick_timing(deadline_s=0.3))
    assert isinstance(waited, Exception) and fake.submits == 3
    monkeypatch.setenv(PER_RUN_ENV, "0")
    fake.behaviour.run_s = 0.1
    resumed = run_list(items(1, prompt="Generate 3 images of a slow river."))
    assert isinstance(resumed, list) and fake.submits == 3
    assert "paid $0.09 when it ran (nothing charged now)" in comfy.progress_texts()[-1]


def test_an_identical_run_in_progress_is_shared_under_a_limit_that_fits_one_job(fake, comfy, monkeypatch, tmp_path):
    """Two executions of the same inputs at once (two queued prompts, say): the second shares the first's job."""
    import asyncio

    from helpers import as_lists, node_object

    monkeypatch.setenv(PER_DAY_ENV, "0.09")
    fake.behaviour.queue_s = 0.3

    async def both():
        first, second = node_object(), node_object()
        inputs = as_lists(node_inputs(seed=5))
        return await asyncio.gather(first.generate(**inputs), second.generate(**inputs), return_exceptions=True)

    outcomes = asyncio.run(both())
    assert not [o for o in outcomes if isinstance(o, BaseException)] and fake.submits == 1


# --- the price --------------------------------------------------------------------------------


def test_an_unknown_price_with_a_limit_uses_the_last_price_seen_else_refuses(fake, comfy, monkeypatch, tmp_path):
    from helpers import quick_timing

    timing = quick_timing(limit_price_wait_s=5.0)
    monkeypatch.setenv(PER_RUN_ENV, "1")
    fake.behaviour.inject("catalog", *[Fault("http", status=500)] * 8)
    message = refused(run_list(items(1), timing=timing))
    assert "price for this model could not be read" in message and "Nothing was sent." in message and fake.submits == 0

    shared.reset_all()
    fake.behaviour.faults.clear()
    assert isinstance(run_list(items(1), timing=timing), list) and fake.submits == 1  # the price is seen (and kept)
    shared.reset_all()  # a restart: only the user folder remembers the price
    fake.behaviour.inject("catalog", *[Fault("http", status=500)] * 8)
    monkeypatch.setenv(PER_RUN_ENV, "0.05")  # the remembered $0.030 is what the limit is checked with
    assert "$0.09 (1 job × up to 3 images × $0.030)" in refused(run_list(items(1, seed=999), timing=timing))
    monkeypatch.setenv(PER_RUN_ENV, "1")
    assert isinstance(run_list(items(1, seed=999), timing=timing), list) and fake.submits == 2


# --- the ledger -------------------------------------------------------------------------------


def test_the_ledger_holds_each_job_with_its_cost_and_no_token(fake, comfy, tmp_path):
    run_node(**node_inputs(prompt="Generate 3 images of a red kite over the dunes at noon, wide shot, film grain."))
    (entry,) = ledger_entries(tmp_path)
    assert entry.status == "done" and entry.images == 3 and entry.cost_usd == pytest.approx(0.09)
    assert entry.estimate_usd == pytest.approx(0.09) and entry.node_id == "7" and entry.request_id in fake.jobs
    assert entry.prompt.startswith("Generate 3 images of a red kite") and len(entry.prompt) <= 61
    text = (state_dir(tmp_path) / LEDGER_NAME).read_text()
    assert fake.behaviour.token not in text and "base64" not in text
    assert comfy.progress_texts()[-1].startswith(f"Done: 3 images, request {entry.request_id}, cost $0.09 (today: $0.09 over 1 job)")


def test_a_cancelled_job_costs_nothing_in_the_days_total(fake, comfy, tmp_path):
    fake.behaviour.queue_s = 5.0
    comfy.stop_when = lambda text: "Queued at RunComfy" in text
    with pytest.raises(comfy.InterruptProcessingException):
        run_node(**node_inputs())
    (entry,) = ledger_entries(tmp_path)
    assert entry.status == "cancelled" and today_totals([entry]).usd == 0.0


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {scripts!r})
    from pack_import import load_pack
    load_pack()
    from pathlib import Path
    from runcomfy_seedream.api.ledger import Ledger, LedgerEntry
    ledger = Ledger(Path(sys.argv[1]))
    sys.stdin.readline()  # both start together
    for n in range(int(sys.argv[2])):
        entry = LedgerEntry.reserve(
            fingerprint=f"{{sys.argv[3]}}-{{n}}", max_images=1, estimate_usd=0.01, prompt="p", node_id=None, prompt_id=None
        )
        ledger.write([entry.changed(status="done", request_id=f"{{sys.argv[3]}}-{{n}}", cost_usd=0.01)])
    """
)


def test_two_processes_writing_the_ledger_at_once_lose_nothing(tmp_path):
    script = WRITER.format(scripts=str(ROOT / "scripts"))
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "150", name], stdin=subprocess.PIPE, text=True) for name in "ab"
    ]
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    view = Ledger(tmp_path, max_entries=100).read()  # compaction ran along the way (2 × 100 lines)
    assert len(view.entries) == 300 and not view.damaged
    assert today_totals(view.entries).usd == pytest.approx(3.0) and today_totals(view.entries).jobs == 300


RACER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {scripts!r})
    from pack_import import load_pack
    load_pack()
    from pathlib import Path
    from runcomfy_seedream.api.errors import SpendingLimitError
    from runcomfy_seedream.api.ledger import Ledger
    from runcomfy_seedream.api.spending import JobPlan, Spending, SpendingLimits

    async def main():
        spending = Spending(SpendingLimits(per_day_usd=1.0), Ledger(Path(sys.argv[1])), service="s")
        async def price():
            return 0.1
        sys.stdin.readline()
        admitted = 0
        for n in range(8):
            try:
                await spending.admit([JobPlan(f"{{sys.argv[2]}}-{{n}}", 2, "p")], price, print)
                admitted += 1
            except SpendingLimitError:
                pass
        print("admitted", admitted, flush=True)
        sys.stdin.readline()  # alive (its reservations live) until both have finished

    asyncio.run(main())
    """
)


def test_two_processes_racing_under_the_daily_limit_never_reserve_past_it(tmp_path):
    script = RACER.format(scripts=str(ROOT / "scripts"))
    racers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for name in "ab"
    ]
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    admitted = [int(racer.stdout.readline().split("admitted")[-1]) for racer in racers]
    assert sum(admitted) == 5  # $1.00 a day at $0.20 a job, whoever got there first
    live = [e for e in Ledger(tmp_path).read().entries if e.status == "reserved"]
    assert len(live) == 5 and today_totals(live).usd == pytest.approx(1.0)
    for racer in racers:
        racer.communicate("exit\n", timeout=60)


# --- a damaged or unwritable ledger -------------------------------------------------------------


def test_a_damaged_ledger_lets_paid_work_go_on_and_refuses_new_jobs_under_a_daily_limit(fake, comfy, monkeypatch, tmp_path):
    run_node(**node_inputs(seed=1))
    path = state_dir(tmp_path) / LEDGER_NAME
    written = len(path.read_text().splitlines())
    path.write_text(path.read_text() + '{"v": 1, "status": "done", "cost_usd": -5\nnot json at all\n')
    lines = f"line {written + 1}, {written + 2}"
    run_node(**node_inputs(seed=2))  # no daily limit: one warning line, and the run goes on
    assert fake.submits == 2
    warning = comfy.progress_texts()[-1].splitlines()[-1]
    assert warning.startswith("Warning: 2 lines of the spending ledger") and f"({lines})" in warning
    monkeypatch.setenv(PER_DAY_ENV, "10")
    message = refused(run_list(items(1, seed=3)))
    assert "daily spending limit cannot be checked" in message and lines in message and fake.submits == 2
    again = run_list(items(1, seed=2))  # collecting a paid job: never refused
    assert isinstance(again, list) and fake.submits == 2
    assert len(ledger_entries(tmp_path)) == 2 and "not json at all" in path.read_text()  # the damage is kept as it was


def test_an_unwritable_ledger_lets_paid_work_go_on_and_refuses_new_jobs_under_a_daily_limit(fake, comfy, monkeypatch, tmp_path):
    folder = state_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / ".ledger.lock").mkdir()  # the lock cannot be taken: nothing can be written
    images, *_ = run_node(**node_inputs(seed=1))
    assert images.shape[0] == 3 and fake.submits == 1
    text = comfy.progress_texts()[-1]
    assert "cannot be written" in text and "only this ComfyUI counts" in text and "(today: $0.09 over 1 job)" in text
    monkeypatch.setenv(PER_DAY_ENV, "10")
    assert "daily spending limit cannot be checked" in refused(run_list(items(1, seed=2))) and fake.submits == 1


# --- pure rules -------------------------------------------------------------------------------


def test_days_are_local_calendar_days_and_a_clock_set_back_cannot_hide_spending():
    now = time.time()
    day = 86400.0

    def done(at: float, usd: float) -> LedgerEntry:
        return LedgerEntry("e" + str(at), at, "done", 1, estimate_usd=usd, cost_usd=usd, request_id=str(at), updated=at)

    entries = [done(now - 2 * day, 1.0), done(now, 0.5), done(now + 3 * day, 0.25)]
    assert today_totals(entries, now).usd == pytest.approx(0.75) and today_totals(entries, now).jobs == 2


def test_what_an_entry_counts_towards_the_days_spending():
    now = time.time()
    dead = LedgerEntry("a", now, "reserved", 3, estimate_usd=0.09, pid=2**31 - 2, host=os.uname().nodename, updated=now)
    mine = LedgerEntry("b", now, "reserved", 3, estimate_usd=0.09, pid=os.getpid(), host=os.uname().nodename, updated=now)
    cases = [
        (LedgerEntry("c", now, "done", 3, estimate_usd=0.09, cost_usd=0.06), 0.06),  # the actual cost
        (LedgerEntry("d", now, "done", 3, estimate_usd=0.09), 0.09),  # no cost reported: the estimate
        (LedgerEntry("e", now, "queued", 3, estimate_usd=0.09), 0.09),
        (LedgerEntry("f", now, "unknown", 3, estimate_usd=0.09), 0.09),  # may have been charged
        (LedgerEntry("g", now, "failed", 3, estimate_usd=0.09), 0.0),
        (LedgerEntry("h", now, "cancelled", 3, estimate_usd=0.09), 0.0),
        (LedgerEntry("i", now, "dropped", 3, estimate_usd=0.09), 0.0),
        (mine, 0.09),
        (dead, 0.0),  # its process is gone: it never became a job
    ]
    for entry, usd in cases:
        assert today_totals([entry], now).usd == pytest.approx(usd), entry.status


def test_a_hand_edited_line_that_is_not_an_entry_is_damage_and_the_newest_snapshot_wins(tmp_path):
    first = LedgerEntry.reserve(fingerprint="f", max_images=2, estimate_usd=0.06, prompt="p", node_id=None, prompt_id=None)
    later = first.changed(status="done", cost_usd=0.06, request_id="r")
    lines = [later.to_json(), first.to_json(), '{"v": 1, "entry": "x", "time": 1, "status": "done", "cost_usd": "NaN"}', "[]"]
    (tmp_path / LEDGER_NAME).write_text("\n".join(lines) + "\n")
    view = Ledger(tmp_path).read()
    assert [e.status for e in view.entries] == ["done"] and view.damaged == (3, 4)


def test_the_daily_refusal_gives_the_figures_and_names_reservations_as_such():
    from runcomfy_seedream.api.ledger import Totals
    from runcomfy_seedream.api.spending import JobPlan, SpendingLimits, over_per_day

    limits = SpendingLimits(per_day_usd=0.3, sources={"per_day_usd": PER_DAY_ENV})
    jobs = [JobPlan("a", 3, "p"), JobPlan("b", 2, "p")]
    assert over_per_day(limits, Totals(0.15, 1), jobs, 0.03) is None  # $0.30: at the limit, not over it
    reserved_only = over_per_day(limits, Totals(0.27, 0, 0.27), jobs, 0.03)
    assert reserved_only.startswith("Today's spending is $0.27 reserved by runs about to submit, and this run may cost")
    assert "$0.15 (2 jobs, up to 5 images in all × $0.030): $0.42 in all, over your daily limit of $0.30" in reserved_only
    assert f"set by {PER_DAY_ENV}" in reserved_only and reserved_only.endswith("Nothing was sent.")
