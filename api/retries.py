"""One retry loop for every request this pack makes: the API calls (`client`) and the result files (`downloads`).

    outcome = await attempt()              # one send; what came of it, as plain data (never an exception)
    verdict = classify(outcome, tries)     # a pure function: the rules live there, not in the loop
      Done(value)  -> returned
      Fail(error)  -> raised
      Retry(…)     -> wait `policy.delay(tries, retry_after)` and try again; when `policy.gives_up`,
                      `retry.exhausted` is raised instead

Invariants this module owns:

- `RetryPolicy` bounds every loop by attempts and by time spent waiting. `Retry-After` is a lower
  bound on the next wait, never permission to hammer (`Retry-After: 0` still backs off), and no
  wait exceeds `max_delay_s`.
- Each retry is announced to `on_retry` (with the wait) before the wait begins.
- The loop raises only the errors the classifier made, outside any `except` block: they carry
  no library exception as their cause or context.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, Union

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - what one attempt came to


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time spent waiting.

    `max_attempts=None` and `budget_s=None` retry without limit: for reads of a paid job,
    whose own deadline is what ends the wait.
    """

    max_attempts: int | None = 8
    budget_s: float | None = 180.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number `attempt` (1-based): backoff with +-25% jitter, at least `retry_after`, at most `max_delay_s`."""
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** min(attempt - 1, 30))) * random.uniform(0.75, 1.25)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_delay_s)

    def gives_up(self, attempt: int, waited_s: float, next_delay_s: float) -> bool:
        """True when `attempt` tries were the last, or the next wait would pass the time budget."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return self.budget_s is not None and waited_s + next_delay_s > self.budget_s

    @classmethod
    def until_deadline(cls, *, base_delay_s: float = 0.5, max_delay_s: float = 30.0) -> RetryPolicy:
        """Never give up by itself: the caller's deadline (a paid job's) ends the retries."""
        return cls(max_attempts=None, budget_s=None, base_delay_s=base_delay_s, max_delay_s=max_delay_s)


_PAGE_LOOKS_AT = 4096  # bytes of the body read for its opening: room for a licence comment before the page
_BYTE_ORDER_MARKS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_PAGE_START = re.compile(rb"<!doctype\s*html|<(?:html|head|body|title|meta|script)[\s/>]")  # after what may precede it


def opens_as_html_page(data: bytes) -> bool:
    """Whether an answer's body begins as an HTML document: a login, captive-portal or block page answering in place
    of the API or of a file, whatever its Content-Type. Whitespace, comments and an XML prolog may come first, the
    page may open with its <head> or <body> alone, and it may be UTF-8 or UTF-16 with a byte-order mark. Neither a
    JSON answer nor an image file opens so. Linear in the bytes looked at, however they are crafted."""
    opening = data[:_PAGE_LOOKS_AT]
    for mark, codec in _BYTE_ORDER_MARKS:
        if opening.startswith(mark):
            opening = opening[len(mark) :].decode(codec, "replace").encode("utf-8", "replace")
            break
    opening = opening.lower()
    while True:
        opening = opening.lstrip()
        if opening.startswith(b"<!--"):
            end = opening.find(b"-->", 4)
            opening = opening[end + 3 :] if end >= 0 else b""
        elif opening.startswith(b"<?xml"):
            end = opening.find(b">")
            opening = opening[end + 1 :] if end >= 0 else b""
        else:
            return _PAGE_START.match(opening) is not None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), >= 0; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN, inf
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class Done(Generic[T]):
    """The attempt succeeded: `value` is what the caller gets."""

    value: T


@dataclass(frozen=True)
class Fail:
    """The attempt's outcome is final: `error` is raised, with no retry."""

    error: Exception


@dataclass(frozen=True)
class Retry:
    """Worth another try, after at least `retry_after` seconds (the server's Retry-After, if it gave one).

    `problem` says what went wrong ("HTTP 503", "connection problem (ReadError)"); `condition` how the
    service seems to a user ("busy", "unavailable", "unreachable", "not answering properly"); `rate_limited`
    marks a 429. `exhausted` is raised when the policy allows no more tries.
    """

    problem: str
    exhausted: Exception
    retry_after: float | None = None
    condition: str = "unavailable"
    rate_limited: bool = False


Verdict = Union[Done[T], Retry, Fail]  # noqa: UP007 - a generic alias, subscripted at run time
RetryHeard = Callable[[Retry, float], None]  # (the retry, the wait in seconds before it)


async def with_retries(
    attempt: Callable[[], Awaitable[O]],
    classify: Callable[[O, int], Verdict[T]],
    policy: RetryPolicy,
    *,
    on_retry: RetryHeard | None = None,
) -> T:
    """Attempt, classify (with the number of tries so far), then return, raise, or wait and attempt again."""
    tries = 0
    waited = 0.0
    while True:
        tries += 1
        verdict = classify(await attempt(), tries)
        if isinstance(verdict, Done):
            return verdict.value
        if isinstance(verdict, Fail):
            raise verdict.error
        delay = policy.delay(tries, verdict.retry_after)
        if policy.gives_up(tries, waited, delay):
            raise verdict.exhausted
        if on_retry is not None:
            on_retry(verdict, delay)
        await asyncio.sleep(delay)
        waited += delay
