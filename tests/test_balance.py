"""The RunComfy balance, read before the money is spent, through real HTTP to the fake (which serves
GET /prod/v2/balance, lowers it with every job and answers 402 when a submit's maximum price passes it):
a run or a list the account cannot pay for sends nothing, a balance that cannot be read never blocks, a 402
stops the rest of a list, and collecting paid work is never refused."""

from __future__ import annotations

import json
import logging

import pytest
from test_result_by_id import collect_by_id, submit_elsewhere

from helpers import job_rows, node_inputs, quick_timing, run_list, run_node, state_dir
from runcomfy_seedream.api import Limits
from runcomfy_seedream.api.balance import (
    ACCOUNTS,
    DEFAULT_SERVERLESS_BASE,
    SERVERLESS_BASE_ENV,
    BalanceTooLowError,
    balance_in,
    serverless_base,
)
from runcomfy_seedream.api.config import DEFAULT_BASE_URL
from runcomfy_seedream.api.errors import BatchError, InsufficientBalanceError
from runcomfy_seedream.fake_service import Fault

TWO = "Generate 2 images of this scene at dawn and at night."


def item(seed: int, max_images: int = 2, **changes) -> dict:
    return node_inputs(seed=seed, max_images=max_images, prompt=TWO, **changes)


def balance_reads(fake) -> int:
    return len(fake.requests_to("/prod/v2/balance"))


def low_balance(fake, usd: float) -> None:
    """The account now holds `usd`, and this process has not read it yet."""
    fake.behaviour.balance_usd = usd
    ACCOUNTS.reset()


# --- pure rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "usd"),
    [
        ({"balance_usd": 12.34, "currency": "USD"}, 12.34),
        ({"balance_usd": 0}, 0.0),
        ({"balance_usd": "5.5", "currency": "usd"}, 5.5),
        ({"balance_usd": -1.25, "currency": "USD"}, -1.25),
        ({"balance_usd": 3, "currency": "EUR"}, None),
        ({"balance_usd": True}, None),
        ({"balance_usd": float("nan")}, None),
        ({"balance_usd": None}, None),
        ({"balance": 3}, None),
        ([12.34], None),
        ("12.34", None),
    ],
)
def test_what_counts_as_a_balance(body, usd):
    assert balance_in(body) == usd


def test_where_the_balance_is_read():
    assert serverless_base(DEFAULT_BASE_URL, {}) == (DEFAULT_SERVERLESS_BASE, None)
    assert serverless_base(DEFAULT_BASE_URL, {SERVERLESS_BASE_ENV: "https://example.com/v2/"}) == ("https://example.com/v2", None)
    assert serverless_base("http://127.0.0.1:9/v1", {SERVERLESS_BASE_ENV: "http://127.0.0.1:9/prod/v2"}) == (
        "http://127.0.0.1:9/prod/v2",
        None,
    )
    moved, why = serverless_base("https://proxy.example/v1", {})  # the token goes only where the user pointed it
    assert moved is None and "RUNCOMFY_MODEL_API_BASE points elsewhere" in why
    plain, why = serverless_base(DEFAULT_BASE_URL, {SERVERLESS_BASE_ENV: "http://example.com/prod/v2"})
    assert plain is None and SERVERLESS_BASE_ENV in why


# --- the gate ------------------------------------------------------------------------------------


def test_a_balance_below_one_run_sends_nothing_and_says_what_to_do(fake, comfy):
    low_balance(fake, 0.05)
    with pytest.raises(BalanceTooLowError) as caught:
        run_node(**item(1))
    assert str(caught.value) == (
        "Your RunComfy balance is $0.05; this run may cost up to $0.06 (1 job × up to 2 images × $0.030). "
        "Top up at runcomfy.com, lower max_images, or split the list. Nothing was sent."
    )
    assert fake.submit_attempts == 0 and fake.submits == 0 and balance_reads(fake) == 1
    assert not any(text.startswith("Encoding references") for text in comfy.progress_texts()), "nothing was encoded"


def test_a_list_over_the_balance_sends_nothing(fake, comfy):
    low_balance(fake, 0.10)
    error = run_list([item(seed) for seed in (1, 2, 3, 1)])  # the repeated item is counted once
    assert isinstance(error, BalanceTooLowError)
    assert str(error) == (
        "Your RunComfy balance is $0.10; this run may cost up to $0.18 (3 jobs × up to 2 images × $0.030). "
        "Top up at runcomfy.com, lower max_images, or split the list. Nothing was sent."
    )
    assert fake.submit_attempts == 0 and fake.submits == 0


def test_a_list_within_the_balance_runs(fake, comfy):
    low_balance(fake, 0.18)
    outputs = run_list([item(seed) for seed in (1, 2, 3)])
    assert all(isinstance(output, tuple) for output in outputs) and fake.submits == 3
    assert "balance not checked" not in comfy.progress_texts()[-1]


def test_the_balance_is_lowered_by_what_this_process_submitted_since_it_was_read(fake, comfy):
    low_balance(fake, 0.20)
    run_node(**item(1))  # up to $0.06
    with pytest.raises(BalanceTooLowError) as caught:
        run_node(**item(2, max_images=5))  # up to $0.15, over the $0.14 left
    assert str(caught.value).startswith(
        "Your RunComfy balance is about $0.14 ($0.20 when read, less up to $0.06 this ComfyUI has submitted since); "
        "this run may cost up to $0.15 (1 job × up to 5 images × $0.030)."
    )
    assert balance_reads(fake) == 1 and fake.submits == 1, "read once, kept a short while"


# --- a balance that cannot be read never blocks ----------------------------------------------------


@pytest.mark.parametrize(
    ("trouble", "problem"),
    [
        ("missing", "RunComfy answered HTTP 404"),
        ("5xx", "RunComfy answered HTTP 503"),
        ("odd body", "the answer held no balance in USD"),
        ("html", "the answer held no balance in USD"),
        ("hanging", "no answer within 0.3 s"),
        ("no network", "not reachable (ConnectError)"),
    ],
)
def test_a_balance_that_cannot_be_read_never_blocks_and_is_said_once(fake, comfy, monkeypatch, trouble, problem):
    low_balance(fake, 100.0)
    if trouble == "missing":
        fake.behaviour.serves_balance = False
    elif trouble == "5xx":
        fake.behaviour.inject("balance", Fault("http", status=503))
    elif trouble == "odd body":
        fake.behaviour.inject("balance", Fault("http", status=200, body=b'{"credits": 7}'))
    elif trouble == "html":
        fake.behaviour.inject("balance", Fault("http", status=200, body=b"<html>log in</html>", content_type="text/html"))
    elif trouble == "hanging":
        fake.behaviour.inject("balance", Fault("stall", seconds=3.0))
    else:
        monkeypatch.setenv(SERVERLESS_BASE_ENV, "http://127.0.0.1:9/prod/v2")  # nothing listens there
    outputs = run_list([item(1), item(2)], timing=quick_timing(balance_wait_s=0.3))
    assert all(isinstance(output, tuple) for output in outputs) and fake.submits == 2
    last = comfy.progress_texts()[-1]
    assert last.endswith(f"RunComfy balance not checked ({problem}); the spending limits still apply.")
    assert last.count("balance not checked") == 1


def test_the_spending_limits_stay_the_hard_gate_when_the_balance_cannot_be_read(fake, comfy, monkeypatch):
    fake.behaviour.serves_balance = False
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_MAX_USD_PER_RUN", "0.05")
    error = run_list([item(1)])
    assert "your limit per run is $0.05" in str(error) and fake.submit_attempts == 0


# --- a 402: the money ran out ----------------------------------------------------------------------


def test_a_402_after_the_first_job_sends_nothing_more_and_names_every_other_item(fake, comfy, tmp_path):
    fake.behaviour.serves_balance = False  # unreadable: only RunComfy's 402 can say it
    fake.behaviour.balance_usd = 0.06  # one job of up to 2 images
    items = [item(seed) for seed in range(1, 6)]
    error = run_list(items, limits=Limits(max_uploads=1))
    assert isinstance(error, BatchError)
    assert fake.submits == 1 and fake.submit_attempts == 2, "one job, one 402, no further submit"
    message = str(error)
    assert message.startswith(
        "4 of 5 items failed. The other item is saved. Your RunComfy balance ran out: top it up at runcomfy.com first, "
        "then run the node again (it collects the saved item without paying and sends only these)."
    )
    assert "refused by RunComfy: the balance ran out (no job was created, nothing was charged)" in message
    assert "not sent: the balance ran out" in message
    assert "HTTP 402" not in message and "may be charged" not in message and "may have been charged" not in message
    assert len(error.failures) == 4 and all(isinstance(err, InsufficientBalanceError) for _, _, err in error.failures)
    assert message.count("refused by RunComfy") == 1, "one 402; the three items after it were never sent"
    # A 402 holds nothing: after a top-up, running again collects the saved one and submits the other four.
    held = [request_id for request_id, hold in job_rows(tmp_path, "request_id", "hold") if hold]
    assert held == list(fake.jobs)
    low_balance(fake, 100.0)
    again = run_list(items, limits=Limits(max_uploads=1))
    assert all(isinstance(output, tuple) for output in again) and fake.submits == 5


def test_a_402_on_a_single_run_says_the_money_ran_out_in_plain_words(fake, comfy):
    fake.behaviour.serves_balance = False
    fake.behaviour.balance_usd = 0.05
    with pytest.raises(InsufficientBalanceError) as caught:
        run_node(**item(1))
    assert str(caught.value).startswith(
        "Submitting the job failed: Your RunComfy balance has run out: RunComfy refused it for lack of credit, so no job "
        "was created and nothing was charged. Top up at runcomfy.com, then run again."
    )
    assert fake.submits == 0 and fake.submit_attempts == 1


# --- collecting paid work is never refused --------------------------------------------------------


def test_saved_results_and_resumed_requests_are_never_refused_by_a_low_balance(fake, comfy):
    saved = run_node(**item(1))[3]
    fake.behaviour.run_s = 2.5
    from runcomfy_seedream.api.errors import DeadlineExceededError

    with pytest.raises(DeadlineExceededError):
        run_node(timing=quick_timing(deadline_s=0.8), **item(2))  # paid, recorded, not collected yet
    fake.behaviour.run_s = 0.1
    low_balance(fake, 0.0)
    assert run_node(**item(1))[3] == saved  # the saved result
    resumed = run_node(**item(2))[3]  # the recorded request
    assert resumed in fake.jobs and fake.submits == 2
    with pytest.raises(BalanceTooLowError):
        run_node(**item(3))  # a new job is refused: the low balance was seen
    assert fake.submits == 2


def test_collecting_by_id_is_never_refused_by_a_low_balance(fake, comfy):
    request_id = submit_elsewhere(fake)
    low_balance(fake, 0.0)
    ((images, _, _, collected),) = collect_by_id(request_id)
    assert collected == request_id and images.shape[0] == 2 and fake.submits == 1


# --- the token ------------------------------------------------------------------------------------


def test_the_token_never_appears_in_any_message(fake, comfy, caplog):
    caplog.set_level(logging.DEBUG)
    token = fake.token
    fake.behaviour.inject("balance", Fault("http", status=500, message=f"bad token {token}"))
    run_node(**item(1))
    low_balance(fake, 0.01)
    with pytest.raises(BalanceTooLowError) as refused:
        run_node(**item(2))
    fake.behaviour.serves_balance = False
    ACCOUNTS.reset()
    error = run_list([item(3), item(4)], limits=Limits(max_uploads=1))
    said = [*comfy.progress_texts(), str(refused.value), str(error), caplog.text]
    assert any("balance not checked (RunComfy answered HTTP 500)" in text for text in said)
    assert all(token not in text for text in said)


def test_the_stop_button_is_honoured_while_the_balance_is_read(fake, comfy):
    low_balance(fake, 100.0)
    fake.behaviour.inject("balance", Fault("stall", seconds=3.0))
    comfy.stop_when = lambda text: text.startswith("Preparing references 1/1")
    with pytest.raises(comfy.InterruptProcessingException) as caught:
        run_node(timing=quick_timing(balance_wait_s=30.0), **item(1))
    # the price and the balance are read together: Stop ends the wait for either, before anything is sent
    assert "Stopped while reading RunComfy's price for this model: nothing was sent" in str(caught.value)
    assert fake.submit_attempts == 0


def test_the_stop_button_is_honoured_while_the_balance_is_read_after_the_price(fake):
    """Once the price is known, the wait is for the balance alone: Stop pressed while RunComfy holds the read back
    ends it with the balance named."""
    import asyncio

    from runcomfy_seedream.api import Credentials
    from runcomfy_seedream.api.balance import Balance
    from runcomfy_seedream.api.errors import StopRequested
    from runcomfy_seedream.api.spending import JobPlan

    low_balance(fake, 100.0)
    fake.behaviour.inject("balance", Fault("stall", seconds=3.0))

    async def price():
        return 0.03

    async def admit():
        balance = Balance(Credentials(fake.token), model_base=fake.base_url, wait_s=30.0, stop=lambda: balance_reads(fake) > 0)
        await balance.admit([JobPlan("f" * 64, 2, TWO)], price)

    with pytest.raises(StopRequested) as caught:
        asyncio.run(admit())
    assert str(caught.value) == "Stopped while reading the RunComfy balance: nothing was sent and nothing is charged."
    assert balance_reads(fake) == 1 and fake.submit_attempts == 0


def test_the_balance_is_read_beside_the_price(fake, comfy):
    low_balance(fake, 100.0)
    run_node(**item(1))
    paths = [request.path.split("?")[0] for request in fake.requests]
    first_post = next(i for i, path in enumerate(paths) if path.startswith("/v1/models/") and fake.requests[i].method == "POST")
    assert "/prod/v2/balance" in paths[:first_post] and any(p.startswith("/v1/models/") for p in paths[:first_post])
    balance = next(r for r in fake.requests if r.path == "/prod/v2/balance")
    assert balance.headers.get("Authorization") == f"Bearer {fake.token}"


# --- the jobs panel --------------------------------------------------------------------------------


def test_the_jobs_panel_shows_the_balance_with_the_time_it_was_read_or_unknown(fake, comfy, tmp_path):
    pytest.importorskip("aiohttp")
    from test_jobs_panel import call

    folder = state_dir(tmp_path)
    low_balance(fake, 12.34)
    run_node(**item(1))  # $0.06 of it
    status, _, raw = call(folder, "GET", "/runcomfy/seedream/jobs")
    answer = json.loads(raw)
    assert status == 200 and fake.token not in raw.decode()
    assert answer["balance"]["usd"] == pytest.approx(12.28) and answer["balance"]["problem"] is None
    assert answer["today"]["jobs"] == 1 and isinstance(answer["balance"]["read_at"], float)
    fake.behaviour.serves_balance = False
    ACCOUNTS.reset()
    answer = json.loads(call(folder, "GET", "/runcomfy/seedream/jobs")[2])
    assert answer["balance"] == {"usd": None, "read_at": answer["balance"]["read_at"], "problem": "RunComfy answered HTTP 404"}


def test_the_jobs_panel_answers_with_a_proxy_the_balance_read_cannot_use(fake, comfy, tmp_path, monkeypatch):
    """A SOCKS proxy without socksio made httpx's ImportError escape the balance read and the panel's route; the
    balance is then unknown, saying why, and nothing is sent to the balance route."""
    pytest.importorskip("aiohttp")
    from test_jobs_panel import call

    from runcomfy_seedream.api.config import unusable_proxy

    folder = state_dir(tmp_path)
    run_node(**item(1))
    reads = balance_reads(fake)
    ACCOUNTS.reset()
    monkeypatch.setenv("ALL_PROXY", "socks5://vpn:pw-77@127.0.0.1:1080")
    if unusable_proxy() is None:
        pytest.skip("socksio is installed here: SOCKS proxies work")
    status, _, raw = call(folder, "GET", "/runcomfy/seedream/jobs")
    answer = json.loads(raw)
    assert status == 200 and "pw-77" not in raw.decode()
    assert answer["balance"]["usd"] is None and answer["balance"]["problem"] == "the proxy set for ComfyUI cannot be used"
    assert answer["today"]["jobs"] == 1 and balance_reads(fake) == reads
