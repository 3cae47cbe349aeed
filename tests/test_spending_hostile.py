"""Spending limits, the ledger and the jobs panel under attack: hand-edited and hostile ledgers, a full disk, a
FIFO, prices that move, odd limits and panel requests. Real HTTP to the fake, real subprocesses, no sleeps."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from helpers import node_inputs, run_list, run_node  # noqa: E402
from runcomfy_seedream.api import shared  # noqa: E402
from runcomfy_seedream.api.errors import SpendingLimitError  # noqa: E402
from runcomfy_seedream.api.ledger import LEDGER_NAME, parse, today_totals  # noqa: E402
from runcomfy_seedream.api.spending import PER_DAY_ENV  # noqa: E402
from runcomfy_seedream.nodes import jobs_route  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_process_state():
    shared.reset_all()
    yield
    shared.reset_all()


def state_dir(home: Path) -> Path:
    return home / ".cache" / "runcomfy-seedream"


def hand_line(**fields) -> str:
    line = {"v": 1, "entry": "hand", "time": time.time(), "status": "done", "max_images": 1, "cost_usd": 0.03}
    line.update(fields)
    return json.dumps(line)


def append(path: Path, *lines: str) -> None:
    path.write_text(path.read_text() + "".join(line + "\n" for line in lines))


def app_for(folder: Path) -> web.Application:
    routes = web.RouteTableDef()
    jobs_route.register(routes, lambda: folder, lambda: folder / "secrets" / "api_token.json", lambda: folder / "spending_limits.json")
    app = web.Application()
    app.add_routes(routes)
    return app


def call(folder: Path, method: str, path: str, *, body=None) -> tuple[int, bytes]:
    async def go():
        async with TestClient(TestServer(app_for(folder), host="127.0.0.1")) as client:
            response = await client.request(method, path, json=body)
            return response.status, await response.read()

    return asyncio.run(go())


# --- a ledger edited by hand ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "odd",
    [
        {"time": 1e12},  # year 33658: finite, but no calendar day
        {"time": -1e20},
        {"time": 253402300800},  # the first second of year 10000
        {"updated": float("nan")},  # written by json as the NaN token
        {"updated": 1e300},
    ],
    ids=["year-33658", "far-past", "year-10000", "updated-NaN", "updated-1e300"],
)
def test_a_hand_edited_date_no_calendar_holds_is_damage_and_never_a_crash(odd):
    view_lines = [hand_line(entry="good", request_id="r1"), hand_line(entry="odd", request_id="r2", **odd)]
    entries, damaged, _ = parse("\n".join(view_lines).encode())
    assert list(entries) == ["good"] and damaged == [2]
    assert today_totals(entries.values()).usd == pytest.approx(0.03)


def test_a_ledger_line_dated_past_year_9999_lets_paid_work_go_on_and_the_panel_answer(fake, comfy, monkeypatch, tmp_path):
    """Before: every run (even one reusing its saved images) and the panel died on ValueError('year … is out of range')."""
    run_node(**node_inputs(seed=1))
    path = state_dir(tmp_path) / LEDGER_NAME
    append(path, hand_line(time=1e12))
    reused = run_list([node_inputs(seed=1)])  # the saved images: nothing sent
    assert isinstance(reused, list) and fake.submits == 1 and "(nothing charged now)" in comfy.progress_texts()[-1]
    fresh = run_list([node_inputs(seed=2)])  # no limit: one warning line, and the run goes on
    assert isinstance(fresh, list) and fake.submits == 2
    warning = comfy.progress_texts()[-1].splitlines()[-1]
    assert warning.startswith("Warning: 1 line of the spending ledger") and "cannot be read (line " in warning
    monkeypatch.setenv(PER_DAY_ENV, "10")
    refusal = run_list([node_inputs(seed=3)])
    assert isinstance(refusal, SpendingLimitError) and "daily spending limit cannot be checked" in str(refusal)
    assert "Repair or delete the unreadable lines" in str(refusal) and fake.submits == 2
    status, raw = call(state_dir(tmp_path), "GET", "/runcomfy/seedream/jobs")
    assert status == 200 and "cannot be read" in json.loads(raw)["warning"]


def test_hand_edited_huge_costs_are_damage_and_the_panel_answer_stays_json(fake, tmp_path):
    """Before: two entries of $1e308 each added up to inf, and the panel's answer held `Infinity`, which no browser
    parses as JSON."""
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / LEDGER_NAME).write_text(hand_line(entry="a", cost_usd=1e308) + "\n" + hand_line(entry="b", cost_usd=1e308) + "\n")
    status, raw = call(folder, "GET", "/runcomfy/seedream/jobs")
    assert status == 200
    answer = json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in the panel's JSON"))
    assert answer["today"]["usd"] == 0 and "2 lines of the spending ledger" in answer["warning"]
