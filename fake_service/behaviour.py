"""Knobs of the local fake RunComfy service: timings, outcomes and injected faults."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """One injected misbehaviour, used up by the next matching request.

    kind:
      "http"     answer `status` (with optional Retry-After) without doing the work: `body` as `content_type` when
                 given (a login page, a JSON array), else an error object with `error_code` (500001 for a 5xx unless
                 given) and `message`
      "early"    (submit) answer `status` before reading the body, then close: a proxy that refuses early
      "gateway"  (submit) create the job, then answer `status`: `body` as `content_type` when given, else an error
                 object with `error_code` when given (none by default): a gateway or proxy in front of the service
      "answer_first" (submit) answer `status` at once, then read and drop the body: a proxy that refuses politely
      "undecodable"  answer 200 with `Content-Encoding: gzip` and a body that is not gzip (a submit is created first)
      "inflating"    answer 200 with the true answer behind `size` bytes of JSON whitespace, gzipped `layers` times
                     (`Content-Encoding: gzip`, or `gzip, gzip`): a few KB that decode to `size` (a submit is created first)
      "oversized"    answer 200 with the true answer behind `size` bytes of JSON whitespace, not compressed
                     (a submit is created first)
      "drop"     close the connection without answering (a submit is created first: bytes arrived)
      "garbage"  answer 200 with truncated JSON (a submit is created first)
      "stall"    wait `seconds` before handling the request (a submit is created first)
      "truncate" (files) promise the whole file but send half, then close
      "body"     (files) serve `body` instead of the real file
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    error_code: str | None = None
    body: bytes | None = None
    message: str | None = None  # the error_message of an "http" answer
    content_type: str = "application/json"  # of `body`, for "http" and "gateway"
    size: int = 64 * 2**20  # decoded size of an "inflating" or "oversized" answer
    layers: int = 1  # times an "inflating" answer is gzipped


@dataclass
class FakeBehaviour:
    token: str = "fake-runcomfy-token"
    queue_s: float = 0.3
    run_s: float = 0.5
    queue_ahead: int = 2  # queue position when a job arrives
    images_returned: int | None = None  # None: as many as the prompt asks for, capped by the maximum
    fail_with: str | None = None  # every job fails with this error text
    request_id_prefix: str = ""  # request ids are this plus a UUID (RunComfy's format is not documented)
    output_scale: float = 1.0  # outputs are image_size x scale (small in tests)
    mixed_sizes: bool = False  # every other output comes out at a smaller size
    photographic: bool = False  # noisy outputs that compress like photos (benchmarks)
    balance_usd: float = 100.0  # served at GET /prod/v2/balance; jobs lower it; a submit whose maximum price passes it gets 402
    serves_balance: bool = True  # False: the balance route is missing (404)
    price_per_image_usd: float = 0.03
    upload_bytes_per_s: float | None = None  # simulated uplink for submit bodies
    result_urls: list[str] | None = None  # serve these result URLs instead of the real files
    listed_again: int = 0  # the result lists its first image this many more times (a service listing too many)
    refuse_chunked: bool = False  # answer 411 Length Required to a streamed (chunked) submit
    inspect_pixels: bool = True  # decode every reference to check it (benchmarks turn this off to save CPU)
    reuse_renders: bool = False  # render each output size once and serve it for every job (benchmarks)
    status_fields: dict[str, Any] = field(default_factory=dict)  # replace /status's own while queued: {"queue_position": -5}
    result_fields: dict[str, Any] = field(default_factory=dict)  # replace a successful result's own: {"cost": float("nan")}
    faults: dict[str, list[Fault]] = field(default_factory=dict)  # endpoint -> faults, used in order
    outage: tuple[float, Fault, frozenset[str]] | None = None  # (until, fault, endpoints): every matching request fails
    unanswered: int = 0  # requests answered by an outage (not by an injected fault)

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """endpoint: submit, status, result, cancel, file, catalog, balance."""
        self.faults.setdefault(endpoint, []).extend(faults)

    def start_outage(self, seconds: float, fault: Fault, endpoints: tuple[str, ...] = ("status", "result", "file")) -> None:
        """For the next `seconds`, answer every request to `endpoints` with `fault` (not used up)."""
        self.outage = (time.monotonic() + seconds, fault, frozenset(endpoints))

    def take_fault(self, endpoint: str) -> Fault | None:
        queue = self.faults.get(endpoint)
        if queue:
            return queue.pop(0)
        if self.outage is not None and time.monotonic() < self.outage[0] and endpoint in self.outage[2]:
            self.unanswered += 1
            return self.outage[1]
        return None
