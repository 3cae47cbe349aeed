"""RunComfy Model API client and the Seedream 4.0 edit-sequential schema. No ComfyUI or torch needed."""

from .client import CancelResult, JobResult, JobStatus, RunComfyClient, Submission, Timeouts
from .config import DEFAULT_BASE_URL, Credentials, Limits, resolve_base_url, resolve_credentials
from .errors import (
    AuthenticationError,
    ConfigurationError,
    DeadlineExceededError,
    DownloadError,
    InputError,
    InsufficientBalanceError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RequestNotFoundError,
    RunComfyError,
    ServiceError,
    StopRequested,
)
from .job import JobEvent, run_job, wait_for_job
from .pipeline import GenerationResult, GenerationSettings, Reference, Timing, generate, parse_url_lines
from .progress import Progress
from .retry import RetryPolicy
from .schema import IMAGE_SIZES, MODEL_ID, EditSequentialRequest

__all__ = [
    "AuthenticationError",
    "CancelResult",
    "ConfigurationError",
    "Credentials",
    "DEFAULT_BASE_URL",
    "DeadlineExceededError",
    "DownloadError",
    "EditSequentialRequest",
    "GenerationResult",
    "GenerationSettings",
    "IMAGE_SIZES",
    "InputError",
    "InsufficientBalanceError",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobResult",
    "JobStatus",
    "Limits",
    "MODEL_ID",
    "OutcomeUnknownError",
    "Progress",
    "Reference",
    "RequestNotFoundError",
    "RetryPolicy",
    "RunComfyClient",
    "RunComfyError",
    "ServiceError",
    "StopRequested",
    "Submission",
    "Timeouts",
    "Timing",
    "generate",
    "parse_url_lines",
    "resolve_base_url",
    "resolve_credentials",
    "run_job",
    "wait_for_job",
]
