"""Spending limits and the job records, through real HTTP to the fake: a run over a limit is refused before anything
is uploaded, paid work is collected under any limit, and the records keep every job with what it cost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import job_rows, node_inputs, quick_timing, run_list, run_node, state_dir
from runcomfy_seedream.api import Limits, shared
from runcomfy_seedream.api.errors import RecordsError, SpendingLimitError
from runcomfy_seedream.api.events import heard_by
from runcomfy_seedream.api.records import MAX_LEASE_S, Records, Totals, local_day_start
from runcomfy_seedream.api.spending import PER_DAY_ENV, PER_RUN_ENV, SETTING, JobPlan, Spending, SpendingLimits
from runcomfy_seedream.fake_service import Fault

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_process_state")


def jobs_of(home: Path, *columns: str) -> list[tuple]:
    """The job records as the sqlite3 shell reads them; none when no run opened them yet."""
    return job_rows(home, *columns) if (state_dir(home) / "records.db").exists() else []


def items(count: int, *, seed: int = 100, **changes) -> list[dict]:
    return [node_inputs(seed=seed + i, **changes) for i in range(count)]


def refused(outcome) -> str:
    assert isinstance(outcome, SpendingLimitError), f"not refused: {type(outcome).__name__} {str(outcome)[:200]}"
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
    assert jobs_of(tmp_path) == []  # nothing reserved


def test_a_run_over_the_daily_limit_is_refused_with_what_was_spent_today(fake, comfy, monkeypatch, tmp_path):
    run_node(**node_inputs(seed=1))  # $0.09, in the records
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


# --- the records ------------------------------------------------------------------------------


def test_the_records_hold_each_job_with_its_cost_and_no_token(fake, comfy, tmp_path):
    run_node(**node_inputs(prompt="Generate 3 images of a red kite over the dunes at noon, wide shot, film grain."))
    ((state, images, cost, estimate, node_id, request_id, prompt),) = job_rows(
        tmp_path, "state", "images", "cost_usd", "estimate_usd", "node_id", "request_id", "prompt"
    )
    assert state == "done" and images == 3 and cost == pytest.approx(0.09)
    assert estimate == pytest.approx(0.09) and node_id == "7" and request_id in fake.jobs
    assert prompt.startswith("Generate 3 images of a red kite") and len(prompt) <= 61
    written = b"".join(path.read_bytes() for path in state_dir(tmp_path).glob("records.db*"))
    assert fake.behaviour.token.encode() not in written and b"base64" not in written
    assert comfy.progress_texts()[-1].startswith(f"Done: 3 images, request {request_id}, cost $0.09 (today: $0.09 over 1 job)")


def test_a_cancelled_job_costs_nothing_in_the_days_total(fake, comfy, tmp_path):
    fake.behaviour.queue_s = 5.0
    comfy.stop_when = lambda text: "Queued at RunComfy" in text
    with pytest.raises(comfy.InterruptProcessingException):
        run_node(**node_inputs())
    assert job_rows(tmp_path, "state") == [("cancelled",)]
    assert Records.at(state_dir(tmp_path)).today().usd == 0.0


# A ComfyUI process using the records of the folder argv[1] once its standard input says "go" (argv[2] == "1":
# with `import fcntl` failing, as on Windows).
CHILD_START = """
import asyncio, sys
if sys.argv[2] == "1":
    sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
sys.path.insert(0, {scripts!r})
from pack_import import load_pack
load_pack()
from pathlib import Path
from runcomfy_seedream.api.errors import RecordsError, SpendingLimitError
from runcomfy_seedream.api.records import Records
from runcomfy_seedream.api.spending import JobPlan, Spending, SpendingLimits

records = Records.at(Path(sys.argv[1]))

async def price():
    return {price}
"""

# argv[3]: its name, argv[4]: how many jobs it pays for, each through every step a paid job's records take.
WRITER = CHILD_START + textwrap.dedent(
    """
    async def main():
        spending = Spending(SpendingLimits(), records, service="s", owner=sys.argv[3])
        sys.stdin.readline()  # both start together
        for n in range(int(sys.argv[4])):
            plan = JobPlan(f"{{sys.argv[3]}}-{{n}}", 1, "p")
            await spending.admit([plan], price)
            job_id = await spending.ticket(plan, price)
            await spending.may_have_sent(job_id)
            await spending.submitted(job_id, f"{{sys.argv[3]}}-{{n}}")
            await spending.settled(f"{{sys.argv[3]}}-{{n}}", "done", images=1, cost_usd=0.01)
        print("trouble", records.trouble, flush=True)

    asyncio.run(main())
    """
)

both_ways = pytest.mark.parametrize("no_fcntl", [False, True], ids=["posix", "fcntl unimportable"])


def children(script: str, *args: list[str]) -> list[subprocess.Popen]:
    """One child per argument list, started together (each waits for "go")."""
    started = [
        subprocess.Popen([sys.executable, "-c", script, *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for arguments in args
    ]
    for child in started:
        child.stdin.write("go\n")
        child.stdin.flush()
    return started


@both_ways
def test_two_processes_writing_the_records_at_once_lose_nothing(tmp_path, no_fcntl):
    Records.at(tmp_path)  # made before they start, as by any earlier run
    script = WRITER.format(scripts=str(ROOT / "scripts"), price=0.01)
    writers = children(script, *[[str(tmp_path), "1" if no_fcntl else "0", name, "40"] for name in "ab"])
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]  # a guard against a hang, not a measure of speed
    assert [writer.returncode for writer in writers] == [0, 0]
    assert [out.splitlines()[-1] for out in outputs] == ["trouble None"] * 2  # neither had to keep its records in memory
    rows = job_rows(tmp_path, "state", "request_id", "cost_usd")
    assert len(rows) == 80 and {state for state, _, _ in rows} == {"done"}
    assert sorted(rid for _, rid, _ in rows) == sorted(f"{name}-{n}" for name in "ab" for n in range(40))
    today = Records.at(tmp_path).today()
    assert today.usd == pytest.approx(0.8) and today.jobs == 80


# argv[3]: its name; it reserves up to 8 jobs of $0.20 each under a daily limit of $1.00, alive (its lease
# renewed, so its reservations count) until its standard input says "exit".
RACER = CHILD_START + textwrap.dedent(
    """
    async def main():
        records.renew(sys.argv[3], 600.0)
        spending = Spending(SpendingLimits(per_day_usd=1.0), records, service="s", owner=sys.argv[3])
        sys.stdin.readline()
        admitted = 0
        for n in range(8):
            try:
                await spending.admit([JobPlan(f"{{sys.argv[3]}}-{{n}}", 2, "p")], price)
                admitted += 1
            except SpendingLimitError:
                pass
        print("trouble", records.trouble, flush=True)
        print("admitted", admitted, flush=True)
        sys.stdin.readline()  # alive (its reservations live) until both have finished

    asyncio.run(main())
    """
)


@both_ways
def test_two_processes_racing_under_the_daily_limit_never_reserve_past_it(tmp_path, no_fcntl):
    Records.at(tmp_path)  # made before they start, as by any earlier run
    script = RACER.format(scripts=str(ROOT / "scripts"), price=0.1)
    racers = children(script, *[[str(tmp_path), "1" if no_fcntl else "0", name] for name in "ab"])
    try:
        troubles = [racer.stdout.readline().strip() for racer in racers]
        admitted = [int(racer.stdout.readline().split("admitted")[-1]) for racer in racers]
        assert troubles == ["trouble None"] * 2  # both counted in the one database
        assert sum(admitted) == 5  # $1.00 a day at $0.20 a job, whoever got there first
        live = [job for job in Records.at(tmp_path).jobs() if job.shown_state == "reserved"]
        assert len(live) == 5 and Records.at(tmp_path).today().usd == pytest.approx(1.0)
    finally:
        for racer in racers:
            racer.communicate("exit\n", timeout=60)
    assert [racer.returncode for racer in racers] == [0, 0]


# --- damaged or unusable records ----------------------------------------------------------------


GARBAGE = b"SQLite format 3\x00" + b"\xff" * 4000  # the first bytes survived, the rest did not


def test_damaged_records_let_paid_work_go_on_and_refuse_new_jobs_today_under_a_daily_limit(fake, comfy, monkeypatch, tmp_path):
    run_node(**node_inputs(seed=1))
    folder = state_dir(tmp_path)
    shared.reset_all()  # ComfyUI restarted, and found its records damaged
    (folder / "records.db").write_bytes(GARBAGE)
    run_node(**node_inputs(seed=2))  # no daily limit: one warning line, and the run goes on
    assert fake.submits == 2
    (aside,) = folder.glob("records.db.damaged-*")
    warning = comfy.progress_texts()[-1].splitlines()[-1]
    assert warning.startswith("Warning: ") and f"set aside as {aside.name}" in warning
    monkeypatch.setenv(PER_DAY_ENV, "10")
    message = refused(run_list(items(1, seed=3)))
    assert "daily spending limit cannot be checked" in message and aside.name in message and fake.submits == 2
    assert "Clear the daily limit until tomorrow" in message and message.endswith("Nothing was sent.")
    again = run_list(items(1, seed=2))  # collecting a paid job: never refused
    assert isinstance(again, list) and fake.submits == 2
    assert job_rows(tmp_path, "state") == [("done",)]  # the job of seed 2; seed 1's is in the file set aside
    assert aside.read_bytes() == GARBAGE  # the damage is kept as it was


def _records_a_folder(folder: Path) -> None:
    (folder / "records.db").mkdir()


def _records_held(folder: Path) -> None:
    """Another ComfyUI process holds a write transaction on the records and never ends it."""
    Records.at(folder)  # made by an earlier run
    Records.reset()
    holder = sqlite3.connect(folder / "records.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    _HELD.append(holder)


_HELD: list[sqlite3.Connection] = []


@pytest.fixture
def release_held():
    yield
    while _HELD:
        with contextlib.suppress(sqlite3.Error):
            _HELD.pop().close()


@pytest.mark.usefixtures("release_held")
def test_unusable_records_let_paid_work_go_on_and_refuse_new_jobs_under_a_daily_limit(fake, comfy, monkeypatch, tmp_path):
    """records.db is a folder: the run goes on with the records in memory, and under a daily limit new jobs are refused,
    because what other processes spend today cannot be seen."""
    folder = state_dir(tmp_path)
    folder.mkdir(parents=True)
    _records_a_folder(folder)
    timing = quick_timing(records_wait_s=0.3)
    images, *_ = run_node(timing=timing, **node_inputs(seed=1))
    assert images.shape[0] == 3 and fake.submits == 1
    text = comfy.progress_texts()[-1]
    assert "kept in memory only" in text and "a folder is in its place" in text and "(today: $0.09 over 1 job)" in text
    monkeypatch.setenv(PER_DAY_ENV, "10")
    message = refused(run_list(items(1, seed=2), timing=timing))
    assert "daily spending limit cannot be checked" in message and fake.submits == 1


@pytest.mark.usefixtures("release_held")
def test_records_another_program_holds_send_nothing_rather_than_go_on_alone(fake, comfy, tmp_path):
    """A run that went on alone, in memory, could pay for inputs another process is paying for: before anything is
    paid, records held past the wait refuse the run, and nothing is sent."""
    folder = state_dir(tmp_path)
    folder.mkdir(parents=True)
    _records_held(folder)
    with pytest.raises(RecordsError) as refusal:
        run_node(timing=quick_timing(records_wait_s=0.3), **node_inputs(seed=1))
    assert "held by another program" in str(refusal.value) and "nothing was sent" in str(refusal.value)
    assert fake.submits == 0 and fake.submit_attempts == 0


@pytest.mark.usefixtures("release_held")
def test_records_another_process_holds_refuse_new_jobs_under_a_daily_limit_and_name_the_records(tmp_path):
    _records_held(tmp_path)
    spending = Spending(SpendingLimits(per_day_usd=5.0), Records.at(tmp_path), service="s", owner="o", lock_wait_s=0.2)

    async def price():
        return 0.03

    with pytest.raises(SpendingLimitError) as caught:
        asyncio.run(spending.admit([JobPlan("f", 2, "p")], price))
    message = str(caught.value)
    assert f"another program keeps the job records {tmp_path / 'records.db'} locked" in message
    assert "Collecting jobs already paid for still works" in message and message.endswith("Nothing was sent.")
    _HELD.pop().close()
    assert Records.at(tmp_path).jobs() == []  # nothing reserved


@pytest.mark.usefixtures("release_held")
def test_a_jobs_outcome_heard_while_another_process_writes_the_records_is_kept(tmp_path):
    """Another ComfyUI process commits at the moment this one hears that its job is done: the outcome is kept (in
    the records, or in memory once they stay held), never dropped with the job left "queued"."""
    records = Records.at(tmp_path)
    spending = Spending(SpendingLimits(), records, service="s", owner="o", lock_wait_s=0.2)
    warnings: list[str] = []

    async def price():
        return 0.03

    async def submitted():
        plan = JobPlan("f", 3, "p")
        with heard_by(lambda event: warnings.append(event.message) if event.warning else None):
            await submitting(plan)

    async def submitting(plan):
        await spending.admit([plan], price)
        job_id = await spending.ticket(plan, price)
        await spending.may_have_sent(job_id)
        await spending.submitted(job_id, "req-1")

    asyncio.run(submitted())
    holder = sqlite3.connect(tmp_path / "records.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # what a commit of another process holds, for a moment
    _HELD.append(holder)
    asyncio.run(spending.settled("req-1", "done", images=3, cost_usd=0.09))  # its warnings: logged
    _HELD.pop().close()
    ((job,),) = [records.jobs()]
    assert (job.state, job.images, job.cost_usd) == ("done", 3, 0.09), warnings
    assert records.today() == Totals(0.09, 1, 0.0)


# --- pure rules -------------------------------------------------------------------------------


def _rows(records: Records, *rows: dict, leases: dict[str, float] | None = None) -> Records:
    """`rows` of jobs and `leases` (owner -> until) written into `records`, as a run would have."""

    def write(conn: sqlite3.Connection) -> None:
        for row in rows:
            row = {"id": row.get("id", str(id(row))), "fingerprint": "f", "created": time.time(), "updated": time.time(), **row}
            conn.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        for owner, until in (leases or {}).items():
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (owner, until))

    records.write(write)
    return records


def test_days_are_local_calendar_days_and_a_clock_set_back_cannot_hide_spending(tmp_path):
    now = time.time()
    day = 86400.0

    def done(at: float, usd: float) -> dict:
        return {"id": str(at), "state": "done", "max_images": 1, "estimate_usd": usd, "cost_usd": usd, "request_id": str(at),
                "created": at, "updated": at}  # fmt: skip

    records = _rows(Records.at(tmp_path), done(now - 2 * day, 1.0), done(now, 0.5), done(now + 3 * day, 0.25))
    today = records.totals(local_day_start(now))
    assert today.usd == pytest.approx(0.75) and today.jobs == 2
    assert records.today() == today


def test_what_a_job_counts_towards_the_days_spending(tmp_path):
    now = time.time()
    alive, dead, ahead = now + 60, now - 1, now + MAX_LEASE_S + 600  # `ahead`: written before the clock was set back
    cases = [
        ({"state": "done", "estimate_usd": 0.09, "cost_usd": 0.06}, 0.06),  # the actual cost
        ({"state": "done", "estimate_usd": 0.09}, 0.09),  # no cost reported: the estimate
        ({"state": "queued", "estimate_usd": 0.09}, 0.09),
        ({"state": "generating", "estimate_usd": 0.09}, 0.09),
        ({"state": "unknown", "estimate_usd": 0.09}, 0.09),  # may have been charged
        ({"state": "failed", "estimate_usd": 0.09}, 0.0),
        ({"state": "cancelled", "estimate_usd": 0.09}, 0.0),
        ({"state": "dropped", "estimate_usd": 0.09}, 0.0),
        ({"state": "gone", "estimate_usd": 0.09}, 0.0),  # RunComfy no longer knows it
        ({"state": "reserved", "estimate_usd": 0.09, "owner": "alive"}, 0.09),  # its run's lease lives
        ({"state": "reserved", "estimate_usd": 0.09, "owner": "dead"}, 0.0),  # its run is gone: it never became a job
        ({"state": "reserved", "estimate_usd": 0.09, "owner": "ahead"}, 0.0),
        ({"state": "reserved", "estimate_usd": 0.09, "owner": "never"}, 0.0),  # no lease at all
    ]
    for n, (row, usd) in enumerate(cases):
        records = _rows(Records.at(tmp_path / str(n)), {"max_images": 3, **row}, leases={"alive": alive, "dead": dead, "ahead": ahead})
        assert records.today().usd == pytest.approx(usd), row


def test_a_reservation_counts_while_its_runs_lease_lives_and_not_after(tmp_path):
    records = _rows(Records.at(tmp_path), {"id": "r", "state": "reserved", "max_images": 3, "estimate_usd": 0.09, "owner": "run"})
    records.renew("run", 60.0)
    ((job,),) = [records.jobs()]
    assert job.shown_state == "reserved" and records.today() == Totals(0.09, 0, 0.09)
    records.write(lambda c: c.execute("UPDATE leases SET until = ? WHERE owner = 'run'", (time.time() - 1,)))  # it ran out
    ((job,),) = [records.jobs()]
    assert job.state == "reserved" and job.shown_state == "dropped" and records.today() == Totals(0.0, 0, 0.0)
    records.renew("run", 60.0)
    records.end_run("run")  # a run that ends drops what it never used, whatever its lease
    assert [job.state for job in records.jobs()] == ["dropped"] and records.today().usd == 0.0


def test_a_hand_edit_the_records_cannot_hold_is_refused_and_a_late_write_never_undoes_an_ending(tmp_path):
    records = _rows(Records.at(tmp_path), {"id": "j", "state": "done", "max_images": 2, "estimate_usd": 0.06, "cost_usd": 0.06})
    with contextlib.closing(sqlite3.connect(tmp_path / "records.db", isolation_level=None)) as shell:
        for edit in (
            "UPDATE jobs SET cost_usd = 'NaN'",
            "UPDATE jobs SET cost_usd = -5",
            "UPDATE jobs SET estimate_usd = 1e308",
            "UPDATE jobs SET state = 'paid'",
            "UPDATE jobs SET created = 1e12",
            "UPDATE jobs SET max_images = 1.5",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                shell.execute(edit)
    assert records.today() == Totals(0.06, 1, 0.0)  # as before the edits
    records.change("j", state="queued", request_id="late")  # an answer that arrives after the job ended
    ((job,),) = [records.jobs()]
    assert (job.state, job.request_id, job.cost_usd) == ("done", None, 0.06)


def test_the_daily_refusal_gives_the_figures_and_names_reservations_as_such():
    from runcomfy_seedream.api.spending import over_per_day

    limits = SpendingLimits(per_day_usd=0.3, sources={"per_day_usd": PER_DAY_ENV})
    jobs = [JobPlan("a", 3, "p"), JobPlan("b", 2, "p")]
    assert over_per_day(limits, Totals(0.15, 1), jobs, 0.03) is None  # $0.30: at the limit, not over it
    reserved_only = over_per_day(limits, Totals(0.27, 0, 0.27), jobs, 0.03)
    assert reserved_only.startswith("Today's spending is $0.27 reserved by runs about to submit, and this run may cost")
    assert "$0.15 (2 jobs, up to 5 images in all × $0.030): $0.42 in all, over your daily limit of $0.30" in reserved_only
    assert f"set by {PER_DAY_ENV}" in reserved_only and reserved_only.endswith("Nothing was sent.")
