"""One exception family for everything the RunComfy client can report.

Every message is written for the person at the ComfyUI canvas: it names the
field or the situation, the limit, and what to change. Messages never contain
the API token, and no exception raised here carries a library exception (which
could hold the request and its headers) as its cause or context.

    RunComfyError
    ├── InputError ............ a value breaks the schema; nothing was sent
    ├── ConfigurationError .... token or base URL missing or unusable; nothing was sent
    ├── SpendingLimitError .... the run would break a spending limit, or the limit cannot be checked; nothing was sent
    ├── RecordsError .......... the job records cannot tell whether these inputs were paid for; nothing was sent
    ├── ServiceError .......... the service answered with an error (http_status, error_code)
    │   ├── AuthenticationError
    │   ├── InsufficientBalanceError
    │   ├── RequestNotFoundError
    │   └── JobFailedError
    ├── OutcomeUnknownError ... the submit may have arrived and no answer came back: may be charged
    ├── JobCancelledError
    ├── DeadlineExceededError . the node stopped waiting (`cancelled`: it cancelled the queued job)
    ├── StopRequested ......... the user pressed Stop (`cancelled`: the queued job was cancelled;
    │                           `finished`: the job was done, running again collects it)
    ├── DownloadError ......... a result file could not be fetched or used (`transient`: try again;
    │                           `collectable`: running again collects the paid job)
    └── BatchError ............ items of a list failed (`failures`: item number, request id, error each)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RunComfyError(Exception):
    """Base of every error this pack raises on purpose."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __str__(self) -> str:  # keep the request id visible wherever the error is shown
        text = super().__str__()
        if self.request_id and self.request_id not in text:
            text = f"{text} (request id {self.request_id})"
        return text


class InputError(RunComfyError):
    """A value the user chose breaks a rule of the model's schema. Nothing was sent."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConfigurationError(RunComfyError):
    """The token or base URL is missing or unusable. Nothing was sent."""


class SpendingLimitError(RunComfyError):
    """The run would spend more than a limit allows, or a limit cannot be checked. Nothing was sent."""


class RecordsError(RunComfyError):
    """The job records cannot be read, or another run took these inputs over: to never pay twice, nothing was sent."""


class ServiceError(RunComfyError):
    """The service answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.http_status = http_status
        self.error_code = error_code


class AuthenticationError(ServiceError):
    """The token was refused (401/403/400004)."""


class InsufficientBalanceError(ServiceError):
    """The account has no credit left (HTTP 402, or 400002)."""


class RequestNotFoundError(ServiceError):
    """The request id is unknown or expired (404001)."""


class JobFailedError(ServiceError):
    """The job ran and the service reports it failed (`reason`: what went wrong, in the service's words or ours)."""

    def __init__(self, message: str, *, reason: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.reason = reason


class JobCancelledError(RunComfyError):
    """The job was cancelled (by us on Stop, or elsewhere)."""


class OutcomeUnknownError(RunComfyError):
    """The submit may have reached the service but no answer came back.

    It must not be sent again automatically: it may already be running and charged.
    """


class DeadlineExceededError(RunComfyError):
    """The job did not finish within the time the node waits for it."""

    def __init__(self, message: str, *, request_id: str | None = None, cancelled: bool = False) -> None:
        super().__init__(message, request_id=request_id)
        self.cancelled = cancelled  # the node cancelled it while still queued: nothing to collect later


class StopRequested(RunComfyError):
    """The user pressed Stop; the message says what happened to the remote job."""

    def __init__(self, message: str, *, request_id: str | None = None, cancelled: bool = False, finished: bool = False) -> None:
        super().__init__(message, request_id=request_id)
        self.cancelled = cancelled  # the queued job was cancelled at RunComfy: nothing to collect later
        self.finished = finished  # the job had finished (and is charged): running again collects it for free


class DownloadError(RunComfyError):
    """A result file could not be fetched or is not a usable image."""

    def __init__(self, message: str, *, request_id: str | None = None, transient: bool = False, collectable: bool = False) -> None:
        super().__init__(message, request_id=request_id)
        self.transient = transient  # network trouble: trying again (now, or by running again) may work
        self.collectable = collectable or transient  # the paid job stays on record: running again collects it


class BatchError(RunComfyError):
    """Some items of a list failed; the others finished and are saved."""

    def __init__(self, message: str, *, failures: list[tuple[int, str | None, RunComfyError]]) -> None:
        super().__init__(message)
        self.failures = failures


_CODE_MESSAGES: dict[str, tuple[type[ServiceError], str]] = {
    "400001": (ServiceError, "The service does not know this model id. Update the node pack."),
    "400002": (
        InsufficientBalanceError,
        "Your RunComfy balance is too low for this job. Top up your account at runcomfy.com, "
        "or lower max_images (the price scales with it), then run again.",
    ),
    "400004": (
        AuthenticationError,
        "The RunComfy API token is invalid, expired or revoked. Create a new token in your RunComfy "
        "account and put it in RUNCOMFY_API_TOKEN (or ~/.config/runcomfy/token.json).",
    ),
    "403001": (
        AuthenticationError,
        "This request belongs to another RunComfy account. Check that RUNCOMFY_API_TOKEN is the token of the account that submitted it.",
    ),
    "404001": (
        RequestNotFoundError,
        "The service no longer knows this request (it expired or never existed). Run the node again to submit a new job.",
    ),
    "500001": (ServiceError, "RunComfy reported a server error. Wait a moment and run again."),
}


def _first_text(body: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, Mapping):  # e.g. {"error": {"message": ...}}
            nested = _first_text(value, ("message", "error_message", "detail"))
            if nested:
                return nested
    return None


def error_from_response(
    http_status: int, body: Any, *, action: str, request_id: str | None = None, redact: str | None = None
) -> ServiceError:
    """Turn an error answer of the service into a plain-language exception.

    `body` is the decoded JSON (or None when the answer was not JSON); the
    service's own message is appended so nothing it said is lost, with `redact` (the token, should a
    proxy echo it back) replaced.
    """
    payload: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    code_raw = payload.get("error_code")
    if code_raw is None and isinstance(payload.get("error"), Mapping):
        code_raw = payload["error"].get("error_code") or payload["error"].get("code")
    code = str(code_raw) if code_raw is not None else None
    detail = _first_text(payload, ("error_message", "message", "error", "detail"))

    if code in _CODE_MESSAGES:
        cls, sentence = _CODE_MESSAGES[code]
    elif http_status in (401, 403):
        cls, sentence = _CODE_MESSAGES["400004"]
    elif http_status == 429:
        cls, sentence = ServiceError, "RunComfy is rate limiting requests. Wait a minute and run again."
    elif http_status >= 500:
        cls, sentence = _CODE_MESSAGES["500001"]
    elif http_status == 402:  # what RunComfy's own nodes take a 402 to mean
        cls = InsufficientBalanceError
        sentence = (
            "Your RunComfy balance has run out: RunComfy refused it for lack of credit, so no job was created and "
            "nothing was charged. Top up at runcomfy.com, then run again."
        )
    elif http_status == 404:  # without 404001 this may be a proxy's page, not RunComfy's word that the request is gone
        cls, sentence = ServiceError, "The service answered 404 (not found) without saying what was not found."
    else:
        cls, sentence = ServiceError, f"The service refused the request (HTTP {http_status})."

    message = f"{action} failed: {sentence}"
    if detail and redact:
        detail = detail.replace(redact, "<token>")
    if detail and detail not in sentence:
        message += f" Service said: {detail[:300]}"
    if code:
        message += f" [error_code {code}]"
    return cls(message, http_status=http_status, error_code=code, request_id=request_id)
