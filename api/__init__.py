"""RunComfy Model API client and the Seedream 4.0 edit-sequential schema. No ComfyUI or torch needed.

    from runcomfy_seedream.api import EditSequentialRequest, RunComfyClient, Credentials

    async with RunComfyClient(Credentials(token)) as client:
        job = await client.submit(EditSequentialRequest("Generate 3 images of …", images=("https://…",)))
        async for event in job.events():
            print(event.message)
        result = await job.result()

`generate()` does a whole run from numpy pixels: checks, encoding, one submit, resume, downloads;
`plan()` and `execute()` are its two halves, and `SeedreamList` runs many items in one `Session`. `collect()` collects
a request made elsewhere by its id (free: never submitted, never cancelled); `CollectList` a list of them. What a run
has to say is handed up as events: listen with `events.heard_by(listener)`, and fold them with `View`.
"""

from .batch import CollectList, Item, SeedreamList
from .client import Price, RetryPolicy, RunComfyClient, Timeouts
from .config import DEFAULT_BASE_URL, Credentials, Limits, resolve_base_url, resolve_credentials
from .downloads import ImageBatch
from .errors import (
    AuthenticationError,
    BatchError,
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
from .events import Event, Phase, Progress, View, heard_by
from .job import CancelResult, Job, JobEvent, JobResult, JobStatus, PollSchedule
from .pipeline import GenerationResult, Plan, Reference, Session, Timing, collect, execute, generate, plan
from .schema import IMAGE_SIZES, MODEL_ID, EditSequentialRequest

__all__ = [
    "AuthenticationError",
    "BatchError",
    "CancelResult",
    "CollectList",
    "ConfigurationError",
    "Credentials",
    "DEFAULT_BASE_URL",
    "DeadlineExceededError",
    "DownloadError",
    "EditSequentialRequest",
    "Event",
    "GenerationResult",
    "IMAGE_SIZES",
    "ImageBatch",
    "InputError",
    "InsufficientBalanceError",
    "Item",
    "Job",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobResult",
    "JobStatus",
    "Limits",
    "MODEL_ID",
    "OutcomeUnknownError",
    "Phase",
    "Plan",
    "PollSchedule",
    "Price",
    "Progress",
    "Reference",
    "RequestNotFoundError",
    "RetryPolicy",
    "RunComfyClient",
    "RunComfyError",
    "SeedreamList",
    "ServiceError",
    "Session",
    "StopRequested",
    "Timeouts",
    "Timing",
    "View",
    "collect",
    "execute",
    "generate",
    "heard_by",
    "plan",
    "resolve_base_url",
    "resolve_credentials",
]
