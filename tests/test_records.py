"""The job records on every OS: two ComfyUI processes on one user folder (also with `fcntl` unimportable, as on
Windows), a process killed in each phase, damaged or unwritable records, and a folder an earlier version wrote."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import job_rows, node_inputs, quick_timing, run_node, state_dir
from runcomfy_seedream.api import Limits
from runcomfy_seedream.api.errors import SpendingLimitError, StopRequested
from runcomfy_seedream.api.records import Records, local_day_start, plausible_cost
from runcomfy_seedream.api.spending import JobPlan, Spending, SpendingLimits
from runcomfy_seedream.fake_service import Fault

ROOT = Path(__file__).resolve().parents[1]
PACK_SOURCES = [*ROOT.glob("api/*.py"), *ROOT.glob("nodes/*.py"), ROOT / "__init__.py"]

# One ComfyUI process running the node's job on the user folder argv[1], once its standard input says "go".
# argv: folder, seed, max_images, lease_s, die_at (a progress text at whose start the process dies: "" never),
# per_day_usd ("" none), block_fcntl ("1": `import fcntl` fails, as on Windows), pause_at (a progress text at whose
# start the process stops itself, as a laptop asleep or a debugger: "" never).
CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys
    if sys.argv[7] == "1":
        sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
    sys.path.insert(0, {scripts!r})
    from pack_import import load_pack
    load_pack()
    from pathlib import Path
    import numpy as np
    from runcomfy_seedream.api import EditSequentialRequest, PollSchedule, Reference, RetryPolicy, Timing, generate
    from runcomfy_seedream.api.errors import RunComfyError
    from runcomfy_seedream.api.spending import SpendingLimits

    folder, seed, max_images, lease_s, die_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    limits = SpendingLimits(per_day_usd=float(sys.argv[6])) if sys.argv[6] else SpendingLimits()
    timing = Timing(
        deadline_s=60.0,
        submit_retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05),
        job_retry=RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05),
        poll_schedule=lambda: PollSchedule(first_s=0.03, steady_s=0.06, ceiling_s=0.2),
        status_interval_s=0.0,
        lease_s=lease_s,
    )
    pixels = np.random.default_rng(seed).random((48, 64, 3), dtype=np.float32)

    paused = []

    def progress(progress):
        if die_at and progress.text.startswith(die_at):
            os._exit(9)  # killed: no cleanup, no finally, as kill -9 or a crash
        if sys.argv[8] and progress.text.startswith(sys.argv[8]) and not paused:
            paused.append(True)
            print("paused", flush=True)
            import signal
            from runcomfy_seedream.api.records import Records
            with Records.at(Path(folder))._guard:  # between two of its transactions: paused holding no database lock
                os.kill(os.getpid(), signal.SIGSTOP)  # the test's own process control, on POSIX

    async def main():
        request = EditSequentialRequest("Generate {{}} images of a red fox.".format(max_images), max_images=max_images)
        try:
            result = await generate([Reference("image_1", pixels)], request, state_dir=Path(folder), timing=timing,
                                    spending_limits=limits, on_progress=progress)
            return {{"request_id": result.request_id, "images": result.images.count}}
        except RunComfyError as error:
            return {{"error": type(error).__name__, "message": str(error)}}

    sys.stdin.readline()
    print(json.dumps(asyncio.run(main())), flush=True)
    """
).format(scripts=str(ROOT / "scripts"))


def start(
    fake,
    folder: Path,
    *,
    seed: int = 1,
    max_images: int = 2,
    lease_s: float = 60.0,
    die_at: str = "",
    per_day: str = "",
    no_fcntl=False,
    pause_at: str = "",
):
    env = {**os.environ, "RUNCOMFY_API_TOKEN": fake.token, "RUNCOMFY_MODEL_API_BASE": fake.base_url}
    args = [str(folder), str(seed), str(max_images), str(lease_s), die_at, per_day, "1" if no_fcntl else "0", pause_at]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT)
    )


def go(*processes) -> None:
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()


def answer(process) -> dict:
    out, _ = process.communicate(timeout=120)  # a guard against a hang, not a measure of speed
    return json.loads(out.strip().splitlines()[-1])


def until(condition, what: str, limit_s: float = 60.0) -> None:
    """Wait for a state another process reaches (a job at the service, a lease run out), polling it."""
    give_up = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < give_up, f"never saw {what}"
        time.sleep(0.02)


both_ways = pytest.mark.parametrize("no_fcntl", [False, True], ids=["posix", "fcntl unimportable"])


# --- two processes, one user folder ---------------------------------------------------------------------------


@both_ways
def test_identical_inputs_in_two_processes_pay_once(fake, tmp_path, no_fcntl):
    fake.behaviour.queue_s, fake.behaviour.run_s = 0.3, 0.3
    first, second = (start(fake, tmp_path, no_fcntl=no_fcntl) for _ in range(2))
    go(first, second)
    answers = [answer(first), answer(second)]
    assert fake.submits == 1
    assert answers[0]["request_id"] == answers[1]["request_id"] == next(iter(fake.jobs))
    assert [a["images"] for a in answers] == [2, 2]


@both_ways
def test_a_killed_run_holds_its_inputs_only_until_its_lease_ends_and_is_never_paid_twice(fake, tmp_path, no_fcntl):
    """kill -9 while generating, under a daily limit: the next process takes the run lock once the dead run's lease
    ends, and collects the paid job instead of paying again."""
    fake.behaviour.run_s = 2.0
    first = start(fake, tmp_path, lease_s=0.6, die_at="Generating", per_day="1.00", no_fcntl=no_fcntl)
    go(first)
    first.wait(timeout=120)
    assert first.returncode == 9 and fake.submits == 1
    second = start(fake, tmp_path, lease_s=0.6, per_day="1.00", no_fcntl=no_fcntl)
    go(second)
    assert answer(second) == {"request_id": next(iter(fake.jobs)), "images": 2}
    assert fake.submits == 1


def test_a_run_killed_before_it_sent_anything_frees_its_reservation_after_its_lease(fake, tmp_path, no_fcntl=True):
    """The dead run's reservation counts while its lease lives, then neither counts nor shows (rows and totals agree)."""
    fake.behaviour.price_per_image_usd = 0.03
    first = start(fake, tmp_path, lease_s=0.5, die_at="Encoding references", per_day="0.06", no_fcntl=no_fcntl)
    go(first)
    first.wait(timeout=120)
    assert first.returncode == 9 and fake.submits == 0
    records = Records(tmp_path)
    (reserved,) = records.jobs()
    assert reserved.state == "reserved"
    until(lambda: not records.jobs()[0].alive, "the dead run's lease run out")
    assert records.jobs()[0].shown_state == "dropped" and records.today().usd == 0
    second = start(fake, tmp_path, seed=2, per_day="0.06", no_fcntl=no_fcntl)  # other inputs: the whole day's limit
    go(second)
    assert answer(second)["images"] == 2 and fake.submits == 1
    assert records.today().usd == pytest.approx(0.06)


def test_a_crash_after_the_last_piece_counts_under_the_daily_limit(fake, comfy, tmp_path, monkeypatch):
    """R1: the submit reached RunComfy (the job exists) and the process died before the answer. Whatever may have
    reached RunComfy counts at its estimate: new inputs that would pass the limit are refused, and the same inputs
    are held, not paid again."""
    fake.behaviour.price_per_image_usd = 0.03
    state = state_dir(tmp_path)
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_MAX_USD_PER_DAY", "0.15")
    run_node(**node_inputs(seed=1, max_images=2, prompt="Generate 2 images of a red fox."))  # $0.06, done
    fake.behaviour.inject("submit", Fault("stall", seconds=3.0))  # the job is made; its answer is held
    first = start(fake, state, seed=7, per_day="0.15")
    go(first)
    until(lambda: len(fake.jobs) == 2, "the second job at the service")
    first.kill()  # SIGKILL here, TerminateProcess on Windows
    first.wait(timeout=60)
    records = Records(state)
    assert [job.state for job in records.jobs()] == ["unknown", "done"]
    assert records.today().usd == pytest.approx(0.12) and records.today().jobs == 2
    with pytest.raises(SpendingLimitError) as refused:
        run_node(**node_inputs(seed=3, max_images=2, prompt="Generate 2 images of a red fox."))
    assert "Today's spending is $0.12 over 2 jobs" in str(refused.value) and "$0.18 in all" in str(refused.value)
    assert fake.submits == 2


# --- the records of a run that may have paid stay right, whatever the folder does -------------------------------


def test_a_request_the_service_no_longer_knows_counts_nothing_and_cannot_be_cancelled(fake, comfy, tmp_path):
    """R4: once the service says "not found", the record says so, counts $0, and offers no Cancel."""
    from runcomfy_seedream.api.errors import DeadlineExceededError
    from runcomfy_seedream.nodes.jobs_route import job_row

    fake.behaviour.run_s = 1.2
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs())
    (forgotten,) = fake.jobs
    fake.jobs.clear()  # expired at RunComfy
    fake.behaviour.run_s = 0.3
    _, _, _, request_id = run_node(**node_inputs())
    records = Records(state_dir(tmp_path))
    gone = records.by_request(forgotten)
    assert (gone.state, gone.hold, gone.detail) == ("gone", False, "RunComfy no longer knows this request")
    assert not job_row(gone, False)["cancellable"]
    assert records.today().jobs == 1 and records.today().usd == pytest.approx(records.by_request(request_id).cost_usd)


def test_an_absurd_cost_is_shown_as_unknown_and_counted_at_the_estimate(fake, comfy, tmp_path, monkeypatch):
    """R6: one sanity rule where a cost enters: 2,000,000 for a job of 3 images is a fault, never a charge."""
    fake.behaviour.price_per_image_usd = 0.03
    fake.behaviour.result_fields = {"cost": 2_000_000}
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_MAX_USD_PER_DAY", "1.00")
    run_node(**node_inputs(seed=1))
    shown = comfy.progress_texts()[-1]
    assert "2000000" in shown and "cannot be right" in shown and "cost $2000000" not in shown
    (job,) = Records(state_dir(tmp_path)).jobs()
    assert job.cost_usd is None and "2000000" in job.detail
    assert Records(state_dir(tmp_path)).today().usd == pytest.approx(0.09)  # the estimate
    fake.behaviour.result_fields = {}
    run_node(**node_inputs(seed=2))  # the day is not poisoned: the next job is admitted
    assert fake.submits == 2


def test_saved_results_and_paid_jobs_are_collected_when_the_records_refuse_writes(fake, comfy, tmp_path):
    """R7: a folder that refuses every write (read-only, or full) still reuses its saved results and collects its paid
    jobs; one warning line says the records are kept in memory. Here SQLite cannot create its rollback journal."""
    from runcomfy_seedream.api.errors import DeadlineExceededError

    state = state_dir(tmp_path)
    run_node(**node_inputs(seed=1))  # saved
    fake.behaviour.run_s = 1.2
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs(seed=2))  # paid, not collected
    fake.behaviour.run_s = 0.1
    from runcomfy_seedream.api import shared

    shared.reset_all()  # a new ComfyUI process
    (state / "records.db-journal").mkdir()  # every write fails from now on; reads still work
    run_node(**node_inputs(seed=1))
    reused = comfy.progress_texts()[-1]
    assert "saved result reused" in reused and fake.submits == 2
    run_node(**node_inputs(seed=2))
    collected = comfy.progress_texts()[-1]
    assert "request resumed" in collected and fake.submits == 2
    for shown in (reused, collected):
        (warning,) = [line for line in shown.splitlines() if line.startswith("Warning")]
        assert "kept in memory only" in warning and str(state / "records.db") in warning


def mounted(tmp_path: Path, size: str) -> Path:
    target = tmp_path / "mnt"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("this machine cannot mount a small filesystem")
    return target


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_a_real_read_only_or_full_filesystem_still_collects_the_paid_job(fake, comfy, tmp_path, monkeypatch, trouble):
    folder = mounted(tmp_path, "1m")
    try:
        monkeypatch.setenv("RUNCOMFY_SEEDREAM_STATE_DIR", str(folder / "state"))
        from runcomfy_seedream.api import shared
        from runcomfy_seedream.api.errors import DeadlineExceededError

        fake.behaviour.run_s = 1.2
        with pytest.raises(DeadlineExceededError):
            run_node(timing=quick_timing(deadline_s=0.5), **node_inputs())
        fake.behaviour.run_s = 0.1
        shared.reset_all()  # a new ComfyUI process
        if trouble == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
                while True:
                    filler.write(b"\0" * 65536)
        images, _, _, request_id = run_node(**node_inputs())
        assert images.shape[0] == 3 and fake.submits == 1 and request_id in fake.jobs
        shown = comfy.progress_texts()[-1]
        assert "request resumed" in shown
        assert len([line for line in shown.splitlines() if line.startswith("Warning")]) == 1
    finally:
        shared.reset_all()
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_stop_is_seen_while_another_process_holds_the_records(tmp_path):
    """R5: waiting for the records watches Stop; it never waits out its whole limit first."""
    holder = sqlite3.connect(tmp_path / "records.db", isolation_level=None)
    Records(tmp_path)  # the tables exist
    holder.execute("BEGIN IMMEDIATE")
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > 3

    spending = Spending(
        SpendingLimits(per_day_usd=5.0), Records(tmp_path), service="s", owner="o", should_stop=should_stop, lock_wait_s=3600
    )

    async def price():
        return 0.03

    import asyncio

    with pytest.raises(StopRequested) as stopped:
        asyncio.run(spending.admit([JobPlan("f", 2, "p")], price))
    assert "Stopped while waiting for the job records" in str(stopped.value) and len(asked) == 4
    holder.execute("ROLLBACK")


# --- an earlier version's user folder ------------------------------------------------------------------------


def test_a_folder_an_earlier_version_wrote_is_imported_whole(fake, comfy, tmp_path, monkeypatch):
    state = state_dir(tmp_path)
    state.mkdir(parents=True)
    # What the previous version wrote for three runs, in its formats: the job of seed 1 was killed mid-wait, seeds
    # 2 and 3 finished and were saved. Their fingerprints come from running those inputs once here.
    fake.behaviour.run_s = 1.2
    from runcomfy_seedream.api.errors import DeadlineExceededError

    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs(seed=1))
    fake.behaviour.run_s = 0.1
    run_node(**node_inputs(seed=2))
    run_node(**node_inputs(seed=3))
    rows = {fp: (rid, state_) for fp, rid, state_ in job_rows(tmp_path, "fingerprint", "request_id", "state")}
    saved = sqlite3.connect(state / "records.db").execute("SELECT fingerprint, folder, request_id, urls FROM saved").fetchall()
    from runcomfy_seedream.api import shared

    shared.reset_all()
    os.remove(state / "records.db")
    killed_fp = next(fp for fp, (rid, s) in rows.items() if s != "done")
    now = time.time()
    journal = {fp: {"state": "submitted", "request_id": rid, "at": now - 60} for fp, (rid, _) in rows.items()}
    (state / "journal.json").write_text(json.dumps({"version": 1, "entries": journal}, indent=1))
    ledger = [
        {"v": 1, "entry": f"e{n}", "time": now - 60, "status": "done" if fp != killed_fp else "queued", "max_images": 3,
         "estimate_usd": 0.09, "cost_usd": 0.09 if fp != killed_fp else None, "request_id": rid, "fingerprint": fp,
         "prompt": "Generate 3 images", "pid": 1, "host": "elsewhere", "updated": now - 50}
        for n, (fp, (rid, _)) in enumerate(rows.items())
    ]  # fmt: skip
    ledger.append({"v": 1, "entry": "yesterday", "time": local_day_start(now) - 3600, "status": "done", "max_images": 1,
                   "estimate_usd": 5.0, "cost_usd": 5.0, "request_id": "r-old"})  # fmt: skip
    # A byte-order mark (some Windows editors save one) and a damaged line do not hide today's spending (R12).
    text = "\ufeff" + "\n".join(json.dumps(line) for line in ledger) + "\nnot json at all\n"
    (state / "ledger.jsonl").write_text(text, encoding="utf-8")
    for fingerprint, folder, request_id, urls in saved:
        old = state / "results" / fingerprint
        (state / "results" / folder).rename(old)
        names = sorted(p.name for p in old.iterdir())
        (old / "meta.json").write_text(json.dumps({"request_id": request_id, "urls": json.loads(urls), "cost_usd": 0.09, "files": names}))
    (state / "last_price.json").write_text(json.dumps({fake.base_url.rstrip("/"): {"usd_per_image": 0.03, "seen": now}}))

    monkeypatch.setenv("RUNCOMFY_SEEDREAM_MAX_USD_PER_DAY", "0.30")  # $0.27 today: room for no new 3-image job
    collected = {run_node(**node_inputs(seed=seed))[3] for seed in (1, 2, 3)}
    assert collected == {rid for rid, _ in rows.values()} and fake.submits == 3  # the three of the first version: nothing paid again
    texts = comfy.progress_texts()
    assert sum("request resumed" in t for t in texts if t.startswith("Done")) == 1
    assert sum("saved result reused" in t for t in texts if t.startswith("Done")) == 2
    records = Records(state)
    assert records.today().usd == pytest.approx(0.27) and records.today().jobs == 3
    with pytest.raises(SpendingLimitError):
        run_node(**node_inputs(seed=4))
    assert fake.submits == 3
    assert sorted(p.name for p in state.iterdir() if p.name.endswith(".imported")) == [
        "journal.json.imported", "last_price.json.imported", "ledger.jsonl.imported"
    ]  # fmt: skip


# --- rules ------------------------------------------------------------------------------------------------------


def test_no_call_whose_meaning_depends_on_the_os():
    """No `fcntl`, no `os.kill` (it terminates the process on Windows), no user ids, no fork, no POSIX signals."""
    banned = re.compile(r"\bimport fcntl\b|\bfcntl\.|\bos\.kill\(|\bos\.getuid|\bos\.geteuid|\bos\.fork|\bsignal\.SIG(KILL|USR|CHLD)")
    found = [f"{p.name}:{n}" for p in PACK_SOURCES for n, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert found == []


def test_what_a_job_may_have_cost():
    assert plausible_cost(None, 3) and plausible_cost(0.09, 3) and plausible_cost(15.0, 15)
    assert not plausible_cost(2_000_000, 3) and not plausible_cost(3.01, 3)
    assert plausible_cost(1.0, 0) and not plausible_cost(1.5, 0)  # a count that is unknown is at least one image


def test_hand_edits_that_make_no_sense_are_refused_by_the_records(tmp_path):
    Records(tmp_path)
    with sqlite3.connect(tmp_path / "records.db") as shell:
        shell.execute("INSERT INTO jobs (id, fingerprint, state, created, updated) VALUES ('a', 'f', 'done', 1, 1)")
        for edit in (
            "UPDATE jobs SET cost_usd = -5",
            "UPDATE jobs SET cost_usd = 2e9",
            "UPDATE jobs SET cost_usd = 'lots'",
            "UPDATE jobs SET state = 'paid'",
            "UPDATE jobs SET created = 1e300",
            "UPDATE jobs SET hold = 7",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                shell.execute(edit)


def test_a_damaged_database_is_set_aside_and_under_a_daily_limit_today_is_refused(tmp_path):
    (tmp_path / "records.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    records = Records(tmp_path)
    (aside,) = tmp_path.glob("records.db.damaged-*")
    assert aside.name in records.trouble and "set aside" in records.trouble
    spending = Spending(SpendingLimits(per_day_usd=5.0), records, service="s", owner="o")

    async def price():
        return 0.03

    import asyncio

    with pytest.raises(SpendingLimitError) as refused:
        asyncio.run(spending.admit([JobPlan("f", 2, "p")], price))
    assert aside.name in str(refused.value) and "Clear the daily limit until tomorrow" in str(refused.value)
    assert records.jobs() == []


def test_the_records_keep_their_newest_rows_and_every_job_that_holds_its_inputs(tmp_path, monkeypatch):
    from runcomfy_seedream.api import records as records_module

    monkeypatch.setattr(records_module, "MAX_ROWS", 5)
    records = Records(tmp_path)
    with sqlite3.connect(tmp_path / "records.db") as shell:
        for n in range(12):
            held = 1 if n == 0 else 0
            shell.execute(
                "INSERT INTO jobs (id, fingerprint, state, hold, request_id, created, updated) VALUES (?, ?, 'done', ?, ?, ?, ?)",
                (f"j{n}", f"f{n}", held, f"r{n}", 1000.0 + n, 1000.0 + n),
            )
    records.tidy()
    assert sorted(job.id for job in records.jobs()) == ["j0", "j10", "j11", "j7", "j8", "j9"]


def test_a_list_of_twelve_with_one_repeated_item_limits_and_shares_in_one_transaction(fake, comfy, tmp_path):
    """Rows and totals agree after a list: one row per distinct job, none left reserved."""
    from helpers import run_list

    items = [node_inputs(seed=n % 11) for n in range(12)]
    run_list(items)
    assert fake.submits == 11
    states = [state for (state,) in job_rows(tmp_path, "state")]
    assert states == ["done"] * 11
    assert Limits().cache_max_entries >= 11 and len(list((state_dir(tmp_path) / "results").iterdir())) == 11


def test_a_damaged_limits_file_is_said_once(tmp_path):
    """R11: one damaged file, one sentence (it used to be said once for each limit)."""
    saved = tmp_path / "spending_limits.json"
    saved.write_text("{damaged")
    problem = SpendingLimits.resolve(saved, env={}).problem
    assert problem.count("cannot be read") == 1 and str(saved) in problem


# --- what a hostile pass over the records found ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGSTOP"), reason="stops a process the POSIX way")
def test_a_run_paused_past_its_lease_sends_nothing_once_another_took_its_inputs_over(fake, tmp_path, no_fcntl=True):
    """A laptop asleep mid-upload: its lease ends, an identical run takes the inputs over and pays; when the first
    wakes up it must not pay again."""
    import signal

    first = start(fake, tmp_path, lease_s=0.5, pause_at="Encoding references", no_fcntl=no_fcntl)
    go(first)
    assert first.stdout.readline().strip() == "paused"
    second = start(fake, tmp_path, lease_s=0.5, no_fcntl=no_fcntl)
    go(second)
    took_over = answer(second)
    assert took_over["images"] == 2 and fake.submits == 1
    first.send_signal(signal.SIGCONT)
    woke = answer(first)
    assert woke["error"] == "RecordsError" and "took them over" in woke["message"] and fake.submits == 1


def test_records_held_by_another_program_are_never_read_as_nothing_paid(fake, comfy, tmp_path):
    """A database tool holding the records while a paid job's inputs run again: the run never submits a second job."""
    from runcomfy_seedream.api.errors import DeadlineExceededError, RecordsError

    fake.behaviour.run_s = 1.2
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs())
    fake.behaviour.run_s = 0.1
    holder = sqlite3.connect(state_dir(tmp_path) / "records.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        outcome = run_node(timing=quick_timing(records_wait_s=0.3), **node_inputs())
    except RecordsError as refused:
        outcome = refused
    finally:
        holder.close()
    assert fake.submits == 1
    if isinstance(outcome, RecordsError):
        assert "held by another program" in str(outcome) and "nothing was sent" in str(outcome)
    else:  # the records moved to memory with what could be read, and the paid job was collected
        assert outcome[3] == next(iter(fake.jobs)) and "kept in memory only" in comfy.progress_texts()[-1]


def test_damaged_records_keep_every_job_that_can_still_be_read(fake, comfy, tmp_path):
    """A damaged page loses what was on it, not every job: a paid job still held is collected, not paid again."""
    from runcomfy_seedream.api import shared
    from runcomfy_seedream.api.errors import DeadlineExceededError

    fake.behaviour.run_s = 1.2
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs(seed=1))
    fake.behaviour.run_s = 0.05
    state = state_dir(tmp_path)
    with sqlite3.connect(state / "records.db") as shell:  # many later jobs, on later pages
        shell.executemany(
            "INSERT INTO jobs (id, fingerprint, state, created, updated, prompt) VALUES (?, ?, 'done', ?, ?, ?)",
            [(f"later{n}", f"{n:064x}", time.time(), time.time(), "x" * 60) for n in range(600)],
        )
    shared.reset_all()  # a new ComfyUI process finds its last pages overwritten (a torn write, a failing disk)
    size = (state / "records.db").stat().st_size
    with open(state / "records.db", "r+b") as damaged:
        damaged.seek(size - 8 * 4096)
        damaged.write(b"\xa5" * 8 * 4096)
    images, _, _, request_id = run_node(**node_inputs(seed=1))
    assert request_id == next(iter(fake.jobs)) and fake.submits == 1
    shown = comfy.progress_texts()[-1]
    assert "request resumed" in shown and ("damaged" in shown or "kept in memory only" in shown)


def test_records_a_newer_version_wrote_make_this_one_send_nothing(fake, comfy, tmp_path):
    from runcomfy_seedream.api import shared
    from runcomfy_seedream.api.errors import RecordsError

    run_node(**node_inputs(seed=1))
    with sqlite3.connect(state_dir(tmp_path) / "records.db") as shell:
        shell.execute("PRAGMA user_version = 7")
    shared.reset_all()
    with pytest.raises(RecordsError) as refused:
        run_node(**node_inputs(seed=2))
    assert "newer version of this pack" in str(refused.value) and "Update the pack" in str(refused.value)
    assert fake.submits == 1


def test_an_earlier_versions_files_written_after_the_upgrade_are_imported_too(fake, comfy, tmp_path):
    """A downgrade and back: the journal the older version wrote meanwhile is read, and its job collected."""
    from runcomfy_seedream.api import shared
    from runcomfy_seedream.api.errors import DeadlineExceededError

    run_node(**node_inputs(seed=9))  # the records exist
    fake.behaviour.run_s = 1.2
    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.5), **node_inputs(seed=1))
    ((fingerprint, request_id),) = job_rows(tmp_path, "fingerprint", "request_id")[1:]
    state = state_dir(tmp_path)
    with sqlite3.connect(state / "records.db") as shell:  # as if the older version had made this job instead
        shell.execute("DELETE FROM jobs WHERE request_id = ?", (request_id,))
    journal = {fingerprint: {"state": "submitted", "request_id": request_id, "at": time.time()}}
    (state / "journal.json").write_text(json.dumps({"version": 1, "entries": journal}))
    shared.reset_all()
    fake.behaviour.run_s = 0.05
    assert run_node(**node_inputs(seed=1))[3] == request_id and fake.submits == 2
    assert (state / "journal.json.imported").exists()


def test_a_job_dated_after_a_clock_set_back_still_holds_its_inputs(tmp_path):
    records = Records(tmp_path)
    later = time.time() + 3 * 86400
    with sqlite3.connect(tmp_path / "records.db") as shell:
        shell.execute(
            "INSERT INTO jobs (id, fingerprint, state, hold, request_id, created, updated) VALUES ('j', 'f', 'queued', 1, 'r', ?, ?)",
            (later, later),
        )
    assert records.held("f").request_id == "r"


def test_result_files_a_killed_process_left_half_saved_are_tidied(tmp_path):
    left = tmp_path / "results" / ".incoming-abc"
    left.mkdir(parents=True)
    (left / "00.img").write_bytes(b"x" * 1000)
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / "results" / ".incoming-now"
    fresh.mkdir()
    Records(tmp_path)
    assert not left.exists() and fresh.exists()  # another process may be saving into the fresh one


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGSTOP"), reason="stops a process the POSIX way")
def test_a_run_paused_past_its_lease_checks_the_daily_limit_again_before_it_pays(fake, tmp_path):
    """Its reservation stopped counting when its lease ran out, and another run spent the day's room meanwhile: waking
    up, it must not pay on its old reservation (its lease is not revived by its own keep-alive)."""
    import signal

    fake.behaviour.price_per_image_usd = 0.03
    first = start(fake, tmp_path, seed=1, lease_s=0.5, per_day="0.06", pause_at="Encoding references")
    go(first)
    assert first.stdout.readline().strip() == "paused"
    records = Records(tmp_path)
    until(lambda: not records.jobs()[0].alive, "the paused run's lease run out")
    second = start(fake, tmp_path, seed=2, per_day="0.06")
    go(second)
    assert answer(second)["images"] == 2 and fake.submits == 1
    first.send_signal(signal.SIGCONT)
    woke = answer(first)
    assert woke["error"] == "SpendingLimitError" and "While this run was held up" in woke["message"]
    assert fake.submits == 1 and records.today().usd == pytest.approx(0.06)
