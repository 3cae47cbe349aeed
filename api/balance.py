"""The RunComfy balance, read before the money is spent: a run the account cannot pay for is never started.

    balance = Balance(credentials, model_base=base_url, wait_s=1.0, stop=latch)   # one per `pipeline.Session`
    balance.start()                                  # the read begins, beside the catalog price lookup
    await balance.admit(jobs, price)                 # every distinct item that would pay, or `BalanceTooLowError`
    await balance.ticket(job, price)                 # just before encoding: admitted above, or checked now
    balance.check_not_run_out()                      # a list whose balance ran out sends nothing more
    balance.submitted(job) / balance.refused(job) / balance.ran_out(job)

What RunComfy's own clients do: its CLI reads `GET {serverless base}/balance` with the same bearer token and gets
`{"balance_usd": 12.34, "currency": "USD"}`. The serverless base is `https://api.runcomfy.net/prod/v2`, or
RUNCOMFY_SERVERLESS_API_BASE when set (as RUNCOMFY_MODEL_API_BASE moves the Model API). While the Model API is moved
elsewhere and the serverless base is not, the balance is not read: the token goes only where the user pointed it.

Decisions:
- The reading is kept for `BALANCE_TTL_S` per service and account (the account is a keyed digest of the token
  with a key that never leaves this process, never the token), and lowered by the estimate of every job this
  process submitted since it was read. A read that failed is not tried again for `BALANCE_TTL_S` either.
- A run waits for the reading at most `wait_s` from when the read began, beside the price lookup (the catalog
  price gets the same half second), watching Stop; the read itself gives up after `READ_TIMEOUT_S` and fills
  the cache for later runs (and the jobs panel's reads fill it too).
- A balance that cannot be read (no route, an error, a timeout, an odd answer, no network to that host, no price
  to estimate with) never blocks a run: the spending limits stay the hard gate, and the run says so once.
- The estimate is the spending limits' own: the catalog price × `max_images` of each distinct item, once.
- A submit RunComfy refuses for lack of credit (`InsufficientBalanceError`, HTTP 402 or 400002) ends the
  list: the items not sent yet are not sent (`BalanceRanOutError`), and the reading is forgotten.
- Collecting paid work (a saved result, a resumed request, a request collected by its id) never gets here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .config import DEFAULT_BASE_URL, Credentials, unusable_proxy
from .errors import InsufficientBalanceError, StopRequested
from .events import StopCheck, Waited, never_stop, wait_watching
from .shared import LOOP_STATE, tls_context
from .spending import JobPlan, describe

SERVERLESS_BASE_ENV = "RUNCOMFY_SERVERLESS_API_BASE"
DEFAULT_SERVERLESS_BASE = "https://api.runcomfy.net/prod/v2"
BALANCE_PATH = "balance"
BALANCE_TTL_S = 30.0  # a reading (or a failed read) is kept this long
READ_TIMEOUT_S = 5.0  # the read in the background gives up after this
DEFAULT_WAIT_S = 0.5  # how long a run waits for the reading, from when it began (beside the price), before it goes on without
MAX_ANSWER_BYTES = 64 * 1024  # a balance is a few dozen bytes
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_PROCESS_KEY = secrets.token_bytes(32)  # the account digest means nothing outside this process

PriceLookup = Callable[[], Awaitable[float | None]]
log = logging.getLogger("runcomfy.seedream")


class BalanceTooLowError(InsufficientBalanceError):
    """The balance read before sending is below the run's estimate. Nothing was sent."""


class BalanceRanOutError(InsufficientBalanceError):
    """RunComfy refused another item of this list for lack of credit, so this one was not sent."""


def serverless_base(model_base: str | None = None, env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(the serverless base without a trailing slash, None), or (None, why the balance is not read there)."""
    env = os.environ if env is None else env
    base = (env.get(SERVERLESS_BASE_ENV) or "").strip()
    if not base:
        if model_base is not None and model_base.rstrip("/") != DEFAULT_BASE_URL:
            return None, f"RUNCOMFY_MODEL_API_BASE points elsewhere and {SERVERLESS_BASE_ENV} is not set"
        return DEFAULT_SERVERLESS_BASE, None
    host = (urlsplit(base).hostname or "").lower()
    if not base.startswith(("https://", "http://")) or (base.startswith("http://") and host not in _LOOPBACK_HOSTS):
        return None, f"{SERVERLESS_BASE_ENV} is not an https URL (plain http only for 127.0.0.1)"
    return base.rstrip("/"), None


def balance_in(body: Any) -> float | None:
    """The balance in USD of an answer `{"balance_usd": 12.34, "currency": "USD"}`; None when it holds none."""
    if not isinstance(body, Mapping):
        return None
    value, currency = body.get("balance_usd"), body.get("currency", "USD")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not isinstance(currency, str):
        return None
    try:
        usd = float(value)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(usd) or abs(usd) > 1e9 or currency.strip().upper() != "USD":
        return None
    return usd + 0.0


@dataclass(frozen=True)
class Reading:
    """What one read came to: the balance in USD, or why there is none."""

    usd: float | None
    at: float  # time.monotonic() of the answer
    wall: float  # time.time() of the answer, for people
    problem: str | None = None


async def read_balance(credentials: Credentials, base: str, timeout_s: float = READ_TIMEOUT_S) -> Reading:
    """One `GET {base}/balance`, never retried; every failure is a `Reading` with a problem that holds neither
    the request nor the token."""
    problem: str | None
    usd: float | None = None
    if unusable_proxy() is not None:  # httpx would refuse to build its pool (ImportError, ValueError); the run says why
        return Reading(None, time.monotonic(), time.time(), "the proxy set for ComfyUI cannot be used")

    async def fetch() -> tuple[int, bytes]:
        async with httpx.AsyncClient(
            base_url=base + "/",
            headers={"Authorization": f"Bearer {credentials.token}", "Accept": "application/json"},
            timeout=timeout_s,
            follow_redirects=False,
            verify=tls_context(),
        ) as http:
            async with http.stream("GET", BALANCE_PATH) as response:
                data = b""
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        break
                return response.status_code, data

    try:
        status, data = await asyncio.wait_for(fetch(), timeout_s)  # the whole read, however the answer trickles in
        if status != 200:
            problem = f"RunComfy answered HTTP {status}"
        elif len(data) > MAX_ANSWER_BYTES:
            problem = "the answer was too large"
        else:
            try:
                usd = balance_in(json.loads(data))
            except (ValueError, RecursionError):
                usd = None
            problem = None if usd is not None else "the answer held no balance in USD"
    except (asyncio.TimeoutError, httpx.TimeoutException):
        problem = f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as failure:
        problem = f"not reachable ({type(failure).__name__})"
    except (OSError, ValueError) as failure:  # an address httpx cannot use
        problem = f"not reachable ({type(failure).__name__})"
    return Reading(usd, time.monotonic(), time.time(), problem)


@dataclass
class _Account:
    """What this process knows of one account's balance at one service."""

    reading: Reading | None = None
    spent: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, estimate USD) of jobs submitted here

    def fresh(self, now: float) -> bool:
        return self.reading is not None and now - self.reading.at < BALANCE_TTL_S

    def available(self) -> float | None:
        """The balance as read, less the estimates of the jobs this process submitted since."""
        if self.reading is None or self.reading.usd is None:
            return None
        return self.reading.usd - self.spent_since_read()

    def spent_since_read(self) -> float:
        at = self.reading.at if self.reading is not None else 0.0
        return sum(usd for when, usd in self.spent if when >= at)


class _Accounts:
    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], _Account] = {}

    def get(self, key: tuple[str, str]) -> _Account:
        return self._accounts.setdefault(key, _Account())

    def reset(self) -> None:
        self._accounts.clear()


ACCOUNTS = _Accounts()


def account_key(base: str, credentials: Credentials) -> tuple[str, str]:
    """(service, account): the account a keyed digest of the token, whose key never leaves this process."""
    return base, hmac.new(_PROCESS_KEY, credentials.token.encode(), hashlib.sha256).hexdigest()[:32]


async def _refresh(credentials: Credentials, base: str, key: tuple[str, str], timeout_s: float) -> Reading:
    reading = await read_balance(credentials, base, timeout_s)
    account = ACCOUNTS.get(key)
    account.reading = reading
    account.spent = [(when, usd) for when, usd in account.spent if when >= reading.at - BALANCE_TTL_S]
    if reading.problem:
        log.info("RunComfy Seedream: the RunComfy balance could not be read (%s)", reading.problem)
    return reading


def money(usd: float) -> str:
    return f"-${-usd:.2f}" if usd < -0.004 else f"${max(usd, 0.0):.2f}"


class Balance:
    """One run's view of the account's balance (one execution of a node)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        model_base: str | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        timeout_s: float = READ_TIMEOUT_S,
        stop: StopCheck = never_stop,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base, self.not_read = serverless_base(model_base, env)
        self._credentials = credentials
        self._key = account_key(self.base, credentials) if self.base else None
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self.stop = stop
        self.unchecked: str | None = None  # why the balance was not checked, said once
        self.run_out = False  # RunComfy refused a submit of this run for lack of credit
        self._admitted: dict[str, float] = {}  # fingerprint -> estimate, admitted and not sent yet
        self._usd_per_image: float | None = None
        self._lookup: asyncio.Future | None = None
        self._started = 0.0  # loop time this run began waiting for the read

    # --- the reading ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin reading the balance in the background, unless a reading (or a failure) is fresh."""
        if self._key is None or self._lookup is not None:
            return
        account = ACCOUNTS.get(self._key)
        if account.fresh(time.monotonic()):
            return
        key, credentials, base, timeout_s = self._key, self._credentials, self.base, self.timeout_s
        self._started = asyncio.get_running_loop().time()
        self._lookup = LOOP_STATE.lookup(("balance", key), lambda: _refresh(credentials, base, key, timeout_s))

    async def current(self) -> tuple[float | None, Reading | None, str | None]:
        """(what the account can still spend, the reading, why it is unknown), waiting at most `wait_s`."""
        if self._key is None:
            return None, None, self.not_read
        self.start()
        if self._lookup is not None and not self._lookup.done():
            waiting = asyncio.ensure_future(asyncio.shield(self._lookup))
            try:
                waited = await wait_watching(waiting, self.stop, deadline=self._started + self.wait_s)  # from the read's start
            finally:
                waiting.cancel()
            if waited is Waited.STOP:
                raise StopRequested("Stopped while reading the RunComfy balance: nothing was sent and nothing is charged.")
            if waited is Waited.DEADLINE:
                return None, None, f"no answer within {self.wait_s:g} s"
        account = ACCOUNTS.get(self._key)
        reading = account.reading
        if reading is None or reading.usd is None:
            return None, reading, reading.problem if reading is not None else "no reading"
        return account.available(), reading, None

    # --- the gate ------------------------------------------------------------------------------

    async def admit(self, jobs: Sequence[JobPlan], price: PriceLookup) -> None:
        """Every distinct job that would pay fits the balance, or `BalanceTooLowError` and nothing is sent. A balance
        that cannot be read lets them all through (said once, in `unchecked`)."""
        jobs = [job for job in {job.fingerprint: job for job in jobs}.values() if job.fingerprint not in self._admitted]
        if not jobs:
            return
        self.start()
        usd_per_image = await price()
        available, reading, problem = await self.current()
        if usd_per_image is not None:
            self._usd_per_image = usd_per_image
        if usd_per_image is None or available is None:
            self._note_unchecked(problem or "no price to estimate the run with")
        else:
            held = sum(self._admitted.values())
            need = sum(job.max_images for job in jobs) * usd_per_image
            if need + held > available + 1e-9:
                raise BalanceTooLowError(self._refusal(jobs, usd_per_image, available, held, reading))
        for job in jobs:
            self._admitted[job.fingerprint] = job.max_images * (usd_per_image or 0.0)

    async def ticket(self, job: JobPlan, price: PriceLookup) -> None:
        """Just before anything is encoded: the job was admitted with its list, or it is checked now."""
        self.check_not_run_out()
        if job.fingerprint not in self._admitted:
            await self.admit([job], price)

    def check_not_run_out(self) -> None:
        if self.run_out:
            raise BalanceRanOutError(
                "not sent: the balance ran out (RunComfy refused an earlier item of this list for lack of credit). "
                "Nothing was charged for it."
            )

    def submitted(self, job: JobPlan) -> None:
        """A job of this run was submitted (or may have been): its estimate lowers the balance this process knows."""
        estimate = self._admitted.pop(job.fingerprint, None)
        if estimate is None and self._usd_per_image is not None:
            estimate = job.max_images * self._usd_per_image
        if self._key is not None and estimate:
            ACCOUNTS.get(self._key).spent.append((time.monotonic(), estimate))

    def refused(self, job: JobPlan) -> None:
        """A job of this run was not sent, or RunComfy created none."""
        self._admitted.pop(job.fingerprint, None)

    def ran_out(self, job: JobPlan) -> None:
        """RunComfy refused a submit for lack of credit: nothing more of this run is sent, and the reading is forgotten."""
        self.refused(job)
        self.run_out = True
        if self._key is not None:
            ACCOUNTS.get(self._key).reading = None

    # --- words ---------------------------------------------------------------------------------

    def _note_unchecked(self, problem: str) -> None:
        if self.unchecked is None:
            self.unchecked = f"RunComfy balance not checked ({problem}); the spending limits still apply"

    def _refusal(self, jobs: Sequence[JobPlan], usd_per_image: float, available: float, held: float, reading: Reading | None) -> str:
        spent = ACCOUNTS.get(self._key).spent_since_read() if self._key is not None else 0.0
        shown = money(available)
        if spent > 0.004 and reading is not None and reading.usd is not None:
            shown = f"about {money(available)} ({money(reading.usd)} when read, less up to ${spent:.2f} this ComfyUI has submitted since)"
        before = f" on top of ${held:.2f} this run already set aside" if held > 0.004 else ""
        return (
            f"Your RunComfy balance is {shown}; this run may cost up to {describe(jobs, usd_per_image)}{before}. "
            "Top up at runcomfy.com, lower max_images, or split the list. Nothing was sent."
        )

    def quietly(self, line: str) -> str:
        """`line` with, once, why the balance was not checked."""
        if self.unchecked is None or self.unchecked in line:
            return line
        return f"{line}\n{self.unchecked}."


async def panel_reading(credentials: Credentials | None, model_base: str | None, *, wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """The balance as the jobs panel shows it: {"usd": …, "read_at": epoch seconds, "problem": …}."""
    if credentials is None:
        return {"usd": None, "read_at": None, "problem": "no RunComfy API token"}
    balance = Balance(credentials, model_base=model_base, wait_s=wait_s)
    available, reading, problem = await balance.current()
    if available is None:
        return {"usd": None, "read_at": reading.wall if reading is not None else None, "problem": problem}
    return {"usd": round(available, 4), "read_at": reading.wall if reading is not None else None, "problem": None}
