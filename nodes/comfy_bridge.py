"""What every RunComfy node does inside ComfyUI around its one call (`node_run`), the few ComfyUI services it uses,
looked up at call time with quiet fallbacks, and the manners of a guest in a long-running ComfyUI process.

The pack imports and runs without ComfyUI (scripts, tests); inside ComfyUI these reach
its progress text, progress bar and Stop button. Three things keep the process healthy:
httpx logs every request at INFO and a long job is polled hundreds of times, so successful
status polls of our API base are dropped from that log (every other request, ours and other
packs', is logged as before); httpx logs each request's whole URL, and a result link can carry
a user name and password or a signed query, so no URL in httpx's lines keeps a user name or
password, and our own requests show "?…" for their query; and freed memory is handed back to
the OS between the phases of a run, since glibc keeps freed heap pages mapped and the process
would otherwise look as big as its largest past phase for as long as ComfyUI runs.

And ComfyUI's IMAGE tensors to and from the numpy frames the api works on (`reference_frames`,
`output_tensors`). torch is imported when a tensor is converted, not when the pack is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..api.config import Limits, default_state_dir, resolve_base_url, resolve_credentials
from ..api.downloads import ImageBatch
from ..api.errors import InputError, RunComfyError, StopRequested
from ..api.pipeline import GenerationResult, Reference, Session
from ..api.spending import SpendingLimits

if TYPE_CHECKING:
    import torch

log = logging.getLogger("runcomfy.seedream")
PROGRESS_STEPS = 100
FINAL_LINE = "runcomfy_line"  # the `ui` entry with the run's final line, shown under the node by web/js/runcomfy_final_line.js
# What every RunComfy Seedream node returns, and what ComfyUI's node search also finds them by
RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "STRING")
RETURN_NAMES = ("images", "image_list", "urls", "request_id")
SEARCH_ALIASES = ("seedream", "bytedance", "runcomfy", "sequential", "storyboard", "character sheet", "image set")


@dataclass
class NodeRun:
    """One execution of a RunComfy node: its inputs as lists (`INPUT_IS_LIST`), its `Session`, and its line and bar."""

    values: dict[str, list]
    node_id: str | None
    bar: ProgressBar
    session: Session | None = None
    shown: list[str] = field(default_factory=list)

    def show(self, text: str, fraction: float) -> None:
        """`text` under the node, and the bar at `fraction`."""
        self.shown.append(text)
        send_progress_text(text, self.node_id)
        self.bar.set(round(fraction * PROGRESS_STEPS))

    def outputs(self, results: list[GenerationResult]) -> dict[str, Any]:
        """What the node returns to ComfyUI: its four output lists (identical items share one result, and so one tensor)
        and, as its `ui`, the last text shown: the run's final line, which ComfyUI also keeps in its history and the
        pack's frontend extension keeps under the node after the run (the current frontend removes progress text)."""
        images, image_list, urls, request_ids = [], [], [], []
        converted: dict[int, tuple] = {}
        for result in results:
            if id(result) not in converted:
                converted[id(result)] = output_tensors(result.images)
            batch, singles = converted[id(result)]
            images.append(batch)
            image_list.extend(singles)
            urls.append("\n".join(result.urls))
            request_ids.append(result.request_id)
        return {"ui": {FINAL_LINE: self.shown[-1:]}, "result": (images, image_list, urls, request_ids)}


@contextlib.asynccontextmanager
async def node_run(node: Any, inputs: dict[str, Any]) -> AsyncIterator[NodeRun]:
    """What each of the pack's RunComfy nodes does around its one call, as ComfyUI calls it: every input a list, an
    unknown input refused, the token and spending limits first (a clear error, no work), ComfyUI's progress text, bar
    and Stop (which latches in the Session, and ends the node as ComfyUI's own interruption). A run that fails shows
    what went wrong as its last text, also when it fails before any work (a missing token), so that line is kept."""
    values = list_values(inputs)
    node_id = next((str(v) for v in values.pop("unique_id", []) if v is not None), None)
    run = NodeRun(values, node_id, ProgressBar(PROGRESS_STEPS, node_id))
    try:
        declared = node.INPUT_TYPES()
        unknown = sorted(set(values) - set(declared["required"]) - set(declared.get("optional", {})))
        if unknown:
            raise InputError(unknown[0], "is not an input of this node.")
        credentials = resolve_credentials(settings_file=token_file())  # first: a clear error, no work
        base_url = resolve_base_url()
        spending_limits = SpendingLimits.resolve(spending_file())
        quiet_status_polls(base_url)
        async with Session.open(
            credentials=credentials,
            base_url=base_url,
            should_stop=processing_interrupted,
            timing=node.timing,
            limits=node.limits or Limits.from_env(),
            state_dir=state_directory(),
            after_submit=release_free_memory,
            spending_limits=spending_limits,
            node_id=node_id,
            prompt_id=prompt_id(),
        ) as run.session:
            try:
                yield run
            except StopRequested as stopped:
                raise interruption(str(stopped)) from None
    except RunComfyError as failure:
        if not run.shown or not run.shown[-1].startswith(str(failure)):  # a failure before any work said nothing yet
            send_progress_text(str(failure), node_id)
        raise


def list_values(inputs: dict[str, Any]) -> dict[str, list]:
    """Every input as a list, as ComfyUI passes them to a node with `INPUT_IS_LIST`; a value that is not a list (a
    script calling the node directly) is a list of one."""
    values = {name: value if isinstance(value, list) else [value] for name, value in inputs.items()}
    for name, value in values.items():
        if not value:
            raise InputError(name, "received an empty list. Connect a node that outputs at least one value.")
    return values


def list_items(values: dict[str, list]) -> list[dict[str, Any]]:
    """One item per element of the longest list; a shorter list repeats its last element, as ComfyUI does."""
    count = max((len(value) for value in values.values()), default=1)
    return [{name: value[min(index, len(value) - 1)] for name, value in values.items()} for index in range(count)]


def _module(name: str) -> ModuleType | None:
    """ComfyUI's module `name`, as ComfyUI imported it before any node runs; None outside ComfyUI. Looked up, never
    imported: outside ComfyUI a failed import would search the whole path again at every progress text."""
    return sys.modules.get(name)


def send_progress_text(text: str, node_id: str | None) -> None:
    """Text under the node in ComfyUI's canvas (and in the log when ComfyUI is absent)."""
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is not None and node_id is not None and hasattr(instance, "send_progress_text"):
        try:
            instance.send_progress_text(text, node_id)
            return
        except Exception:  # noqa: BLE001 - progress must never break a paid run
            log.debug("send_progress_text failed", exc_info=True)
    log.info("%s", text)


class ProgressBar:
    """comfy.utils.ProgressBar when available, otherwise nothing.

    ComfyUI's progress hook raises InterruptProcessingException when Stop was pressed, clearing the Stop flag
    as it does. The exception does not escape mid-job (the job must still be cancelled remotely): the flag is
    put back, as ComfyUI's own API nodes do, so the run's one Stop check (`processing_interrupted`) sees it.
    """

    def __init__(self, total: int, node_id: str | None) -> None:
        self.total = total
        utils = _module("comfy.utils")
        self._bar: Any = None
        if utils is not None and hasattr(utils, "ProgressBar"):
            try:
                self._bar = utils.ProgressBar(total, node_id=node_id)
            except TypeError:  # older ComfyUI without node_id
                self._bar = utils.ProgressBar(total)
            except Exception:  # noqa: BLE001
                self._bar = None

    def set(self, value: int) -> None:
        if self._bar is None:
            return
        try:
            self._bar.update_absolute(value, self.total)
        except Exception as exc:  # noqa: BLE001 - progress must never break a paid run
            if isinstance(exc, _interrupt_type()):
                _put_stop_back()
            else:
                log.debug("progress bar update failed", exc_info=True)


def _interrupt_type() -> type[BaseException] | tuple[()]:
    exc_type = getattr(_module("comfy.model_management"), "InterruptProcessingException", None)
    return exc_type if isinstance(exc_type, type) and issubclass(exc_type, BaseException) else ()


def _put_stop_back(value: bool = True) -> None:
    restore = getattr(_module("comfy.model_management"), "interrupt_current_processing", None)
    if callable(restore):
        restore(value)


def processing_interrupted() -> bool:
    """True once the user pressed Stop (or ComfyUI is cancelling the prompt)."""
    mm = _module("comfy.model_management")
    check = getattr(mm, "processing_interrupted", None)
    return bool(check()) if callable(check) else False


def interruption(message: str) -> BaseException:
    """ComfyUI's InterruptProcessingException (a clean "interrupted" in the UI), else a RuntimeError. The Stop flag
    is cleared as this is raised, as ComfyUI's own check clears it when it raises."""
    _put_stop_back(False)
    exc_type = _interrupt_type()
    return exc_type(message) if exc_type else RuntimeError(message)


def state_directory() -> Path:
    """Where the job records and saved results live: ComfyUI's user directory, else a per-user cache folder."""
    folder_paths = _module("folder_paths")
    user_dir = getattr(folder_paths, "get_user_directory", None)
    if callable(user_dir):
        try:
            return Path(user_dir()) / "runcomfy_seedream"
        except Exception:  # noqa: BLE001
            log.debug("no ComfyUI user directory", exc_info=True)
    return default_state_dir()


def spending_file() -> Path:
    """Where the spending limits set in ComfyUI's settings are kept."""
    return state_directory() / "spending_limits.json"


def prompt_id() -> str | None:
    """The id of the prompt ComfyUI is executing, for the job records; None outside ComfyUI."""
    server = _module("server")
    value = getattr(getattr(getattr(server, "PromptServer", None), "instance", None), "last_prompt_id", None)
    return value if isinstance(value, str) else None


def token_file() -> Path:
    """Where a token entered in ComfyUI's settings dialog is kept (owner-only)."""
    return state_directory() / "secrets" / "api_token.json"


class _DropSuccessfulStatusPolls(logging.Filter):
    """Drops httpx's INFO line of each successful status poll under one API base."""

    def __init__(self, prefix: str) -> None:
        super().__init__(name=f"runcomfy-quiet-polls {prefix}")  # the logger's own list tells whether it is there
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 4 and args[0] == "GET" and args[3] == 200:
            url = str(args[1])
            if url.endswith("/status") and url.startswith(self.prefix):
                return False
        return True


_PACKAGE = __name__.rsplit(".nodes.", 1)[0]  # this copy's package: ComfyUI names it after its folder
_HIDE_URL_SECRETS = "runcomfy-hide-url-secrets"


class _HideUrlSecrets(logging.Filter):
    """Rewrites the URLs in httpx's lines: no user name or password in any of them, and "?…" for the query of
    our own requests (result links are signed in their query: X-Amz-Signature=…). Other packs' queries are
    theirs and stay as they are. A request is ours when one of the calling frames belongs to a copy of this
    pack; one filter serves every copy, which adds its package to `packages`."""

    def __init__(self) -> None:
        super().__init__(name=_HIDE_URL_SECRETS)  # the logger's own list tells whether it is there
        self.packages: tuple[str, ...] = ()  # replaced whole, never changed in place: read from any thread

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple) or not record.args:
            return True
        try:
            args = tuple(self._shown(arg) for arg in record.args)
        except Exception:  # noqa: BLE001 - a log filter must never break a request; a line not shown is no leak
            return False
        if args != record.args:
            record.args = args
        return True

    def _shown(self, arg: Any) -> Any:
        if not isinstance(arg, str) and type(arg).__name__ != "URL":  # httpx.URL, or a URL already made text
            return arg
        text = str(arg)
        if "://" not in text or ("@" not in text and "?" not in text):
            return arg
        parts = urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
        if parts.query and self._ours():
            return f"{parts.scheme}://{host}{parts.path}?…"
        if host == parts.netloc:
            return arg
        return f"{parts.scheme}://{host}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    def _ours(self) -> bool:
        """True when the line is logged by a request one of this pack's copies made (its frames are in the stack;
        an awaiting coroutine's frame is, too). The filter's own frames, in this module, do not count."""
        packages, mine = self.packages, globals()
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals is not mine:
                name = frame.f_globals.get("__name__") or ""
                if any(name == package or name.startswith(package + ".") for package in packages):
                    return True
            frame = frame.f_back
        return False


def hide_url_secrets() -> None:
    """Install `_HideUrlSecrets` on httpx's logger, once per process whatever the number of copies of this pack."""
    logger = logging.getLogger("httpx")
    guard = next((known for known in logger.filters if getattr(known, "name", None) == _HIDE_URL_SECRETS), None)
    if guard is None:
        guard = _HideUrlSecrets()
        logger.addFilter(guard)
    packages = getattr(guard, "packages", None)
    if isinstance(packages, tuple) and _PACKAGE not in packages:
        guard.packages = (*packages, _PACKAGE)


def quiet_status_polls(base_url: str) -> None:
    """Drop httpx's INFO line for each successful status poll under `base_url` (once per base, per process),
    and keep credentials out of the URLs in its other lines (`hide_url_secrets`)."""
    hide_url_secrets()
    quiet = _DropSuccessfulStatusPolls(base_url.rstrip("/") + "/requests/")
    logger = logging.getLogger("httpx")
    if not any(getattr(known, "name", None) == quiet.name for known in logger.filters):
        logger.addFilter(quiet)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def release_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def reference_frames(inputs: Sequence[tuple[str, object]]) -> list[Reference]:
    """Every frame of every connected IMAGE input, in socket order then batch order.

    An IMAGE is a float tensor [B, H, W, C]; frames stay views (no copy) until encoding.
    """
    import torch

    frames: list[Reference] = []
    for name, tensor in inputs:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise InputError(name, f"is a {type(tensor).__name__}, not an IMAGE. Connect an IMAGE output to it.")
        if tensor.ndim != 4 or tensor.shape[-1] not in (1, 2, 3, 4):
            raise InputError(
                name,
                f"has shape {tuple(tensor.shape)}; an IMAGE must be [batch, height, width, channels]. "
                "Connect an IMAGE output (e.g. from Load Image) to it.",
            )
        if not tensor.is_floating_point():
            raise InputError(name, f"has dtype {tensor.dtype}; an IMAGE holds floats in 0..1.")
        try:
            array = tensor.detach().to("cpu", copy=False)
            pixels = (array if array.dtype == torch.float32 else array.float()).numpy()
        except Exception as unreadable:  # noqa: BLE001 - a tensor without data here (a meta tensor, a broken device)
            raise InputError(name, f"could not be read ({type(unreadable).__name__}). Connect an ordinary IMAGE output to it.") from None
        batch = pixels.shape[0]
        for index in range(batch):
            label = name if batch == 1 else f"{name} frame {index + 1}"
            frames.append(Reference(label, pixels[index]))
    return frames


def output_tensors(images: ImageBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The assembled results as ComfyUI IMAGEs, without copying: the batch [B, H, W, 3] shares the
    assembler's memory, and each list item is [1, h, w, 3] at its native size (a view of the batch
    unless sizes differ or the batch was scaled down, then the native copy the assembler kept)."""
    import torch

    batch = torch.from_numpy(images.array())
    if not images.keeps_natives:
        return batch, [batch[i : i + 1] for i in range(images.count)]
    return batch, [torch.from_numpy(np.ascontiguousarray(images.native(i))).unsqueeze(0) for i in range(images.count)]
