"""The server routes behind the RunComfy jobs panel (ComfyUI's sidebar) and the "Spending limit" setting.

GET  /runcomfy/seedream/jobs                      -> today's and this month's totals, the balance, the limits, the newest jobs
GET  /runcomfy/seedream/jobs/{request_id}/thumbnail -> a small PNG of the job's first saved image
POST /runcomfy/seedream/jobs/{request_id}/cancel  -> cancel a queued job of the records, worded as the node words it
GET  /runcomfy/seedream/spending                  -> the limits in effect, the saved setting, which variables win
POST /runcomfy/seedream/spending {"per_run_usd": 2, "per_day_usd": null} -> save the setting

They keep the token route's rules (`token_route.refusal`): answered only for a host this ComfyUI can be reached
under and a same-origin request, writes only as capped JSON, and no answer holds the token. The records hold no
token, and the cancel reads it on the server.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..api.balance import panel_reading
from ..api.client import RunComfyClient
from ..api.config import find_credentials, resolve_base_url, resolve_credentials
from ..api.downloads import MAX_OUTPUT_PIXELS
from ..api.errors import RunComfyError
from ..api.job import Job, check_request_id
from ..api.records import Busy, Records
from ..api.records import Job as JobRecord
from ..api.shared import LIVE
from ..api.spending import PER_DAY_ENV, PER_RUN_ENV, SpendingLimits, limit_value, read_saved, save_limits
from .token_route import MAX_BODY_BYTES, read_capped, refusal, refuse

JOBS_ROUTE = "/runcomfy/seedream/jobs"
SPENDING_ROUTE = "/runcomfy/seedream/spending"
ROUTES = (JOBS_ROUTE, f"{JOBS_ROUTE}/{{request_id}}/thumbnail", f"{JOBS_ROUTE}/{{request_id}}/cancel", SPENDING_ROUTE)
JOBS_SHOWN = 100
BUSY = "The job records are held by another program for the moment (another ComfyUI, or a database tool); try again."
JOBS_SHOWN_WHERE = "jobs.state != 'dropped'"
THUMBNAIL_PX = 128
CANCEL_TIMEOUT_S = 30.0
_DECODING = threading.Lock()  # one thumbnail decode at a time in the process, whatever the panel asks for at once
_RESIZABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
_DECODE_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def url_request_id(request_id: str | None) -> str | None:
    """`request_id` as one segment of a route's path, or None when it cannot be one: an id that is no RunComfy
    request id (hand-edited records: "a/b", "x y", or "." and "..", which a browser resolves however encoded, so a
    thumbnail or a cancel would reach another route). "?", "#" and "%" are encoded, so they stay in the segment."""
    if request_id is None:
        return None
    try:
        checked = check_request_id(request_id)
    except RunComfyError:
        return None
    return quote(checked, safe="") if checked == request_id else None


def job_row(entry: JobRecord, has_thumbnail: bool) -> dict[str, Any]:
    """One job as the panel shows it; a job in flight here carries its live state and queue position."""
    status, position = entry.shown_state, None
    in_url = url_request_id(entry.request_id)
    live = LIVE.get(entry.request_id or "")
    if live is not None and entry.state in ("queued", "generating"):
        status, position = live
    return {
        "entry": entry.id,
        "request_id": entry.request_id,
        "status": status,
        "queue_position": position,
        "time": entry.created,
        "images": entry.images,
        "max_images": entry.max_images,
        "estimate_usd": entry.estimate_usd,
        "cost_usd": entry.cost_usd,
        "prompt": entry.prompt,
        "node_id": entry.node_id,
        "prompt_id": entry.prompt_id,
        "thumbnail": f"{JOBS_ROUTE}/{in_url}/thumbnail" if has_thumbnail and in_url else None,
        "cancellable": status == "queued" and in_url is not None,
        "detail": entry.detail,
    }


def jobs_answer(state_dir: Path, spending_file: Path) -> dict[str, Any]:
    """Blocking: what GET /jobs answers."""
    records = Records.at(state_dir)
    now = time.time()
    today, month = records.today(), records.month()
    limits = SpendingLimits.resolve(spending_file)
    shown = [job for job in records.jobs(JOBS_SHOWN_WHERE, limit=JOBS_SHOWN) if job.shown_state != "dropped"]
    saved = records.has_saved([job.fingerprint for job in shown if job.state == "done"])
    return {
        "ok": True,
        "today": {"usd": round(today.usd, 4), "jobs": today.jobs, "day": time.strftime("%Y-%m-%d", time.localtime(now))},
        "month": {"usd": round(month.usd, 4), "jobs": month.jobs, "month": time.strftime("%Y-%m", time.localtime(now))},
        "limits": {"per_run_usd": limits.per_run_usd, "per_day_usd": limits.per_day_usd} if not limits.problem else None,
        "warning": "; ".join(filter(None, (records.trouble, limits.problem))) or None,
        "jobs": [job_row(job, job.state == "done" and job.fingerprint in saved) for job in shown],
    }


async def thumbnail(state_dir: Path, request_id: str) -> bytes | None:
    """A PNG of at most THUMBNAIL_PX of the job's first saved image, or None."""

    def first_file() -> bytes | None:
        records = Records.at(state_dir)
        entry = records.by_request(request_id)
        try:  # looking never sets a damaged result aside: the next run of these inputs does that
            cached = records.saved(entry.fingerprint) if entry is not None else None
        except ValueError:
            return None
        return cached.files[0] if cached is not None and cached.files else None

    # One at a time, queued on the loop (not in threads): reading the saved files (every one of the result) and decoding
    # the first, so that the panel asking for many at once holds one result's files and one decode in memory.
    async with _DECODE_TURNS.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
        file = await asyncio.to_thread(first_file)
        return await asyncio.to_thread(small_png, file) if file is not None else None


def small_png(file: bytes) -> bytes | None:
    """Blocking: `file` as a PNG of at most THUMBNAIL_PX a side; None when no image can come from it.

    A saved file is judged by its header first, with the pipeline's pixel cap: past it (a file planted in the user
    folder), nothing is decoded. Within it, one thumbnail is decoded at a time in the whole process, a JPEG at the
    scale a thumbnail needs (`draft`), any other reduced before it is converted: the panel asking for many at once
    costs one decode's memory, not many."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(file)) as image:
                width, height = image.size
                if width * height > MAX_OUTPUT_PIXELS:
                    return None
                with _DECODING:
                    image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
                    # reduced in its own mode first; a mode PIL cannot resize (16-bit, float) is converted first
                    shrinking = image if image.mode in _RESIZABLE_MODES else image.convert("RGB")
                    shrinking.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), reducing_gap=2.0)
                    small = shrinking.convert("RGB")
        out = io.BytesIO()
        small.save(out, format="PNG")
        return out.getvalue()
    except Exception:  # noqa: BLE001 - a file no thumbnail can come from has none
        return None


async def balance_answer(token_file: Path) -> dict[str, Any]:
    """The account's balance beside today's total: {"usd", "read_at", "problem"}; "usd" None when it cannot be read
    (kept `balance.BALANCE_TTL_S`, so the panel's polls read it at most that often)."""
    try:
        credentials = await asyncio.to_thread(find_credentials, settings_file=token_file)
        base_url = resolve_base_url()
    except RunComfyError:  # a token or address that cannot be used: the node says why when it runs
        return {"usd": None, "read_at": None, "problem": "the RunComfy token or address cannot be used"}
    return await panel_reading(credentials, base_url)


def spending_answer(spending_file: Path) -> dict[str, Any]:
    limits = SpendingLimits.resolve(spending_file)
    effective: dict[str, Any] = {"per_run_usd": limits.per_run_usd, "per_day_usd": limits.per_day_usd}
    env = {
        "per_run_usd": PER_RUN_ENV if (os.environ.get(PER_RUN_ENV) or "").strip() else None,
        "per_day_usd": PER_DAY_ENV if (os.environ.get(PER_DAY_ENV) or "").strip() else None,
    }
    return {"ok": True, **effective, "saved": read_saved(spending_file)[0], "env": env, "error": limits.problem}


async def cancel_queued(state_dir: Path, token_file: Path, request_id: str) -> tuple[int, dict[str, Any]]:
    """Cancel a queued job of the records at RunComfy, as Stop does; the records learn the outcome."""
    records = await asyncio.to_thread(Records.at, state_dir)
    entry = await asyncio.to_thread(records.by_request, request_id)
    if entry is None:
        return 404, {"ok": False, "error": f"Request {request_id} is not in this ComfyUI's job records."}
    if entry.state not in ("queued", "unknown"):
        return 409, {"ok": False, "error": f"Request {request_id} is {entry.shown_state}, not queued: there is nothing to cancel."}
    try:
        credentials, base_url = resolve_credentials(settings_file=token_file), resolve_base_url()
        client = RunComfyClient(credentials, base_url)
    except RunComfyError as unusable:  # no token, a RUNCOMFY_MODEL_API_BASE that is no https URL, a proxy it cannot use
        return 400, {"ok": False, "error": str(unusable)}
    async with client:
        handle = Job.resume(client, request_id)
        try:
            cancelled, message = await asyncio.wait_for(handle.cancel_queued(), CANCEL_TIMEOUT_S)
        except asyncio.TimeoutError:
            cancelled = None
            message = f"Cancelling request {request_id} is unconfirmed (no answer in time); it may still run and be charged."
    if cancelled or handle.state == "gone":
        state, detail = ("cancelled", "cancelled from the jobs panel") if cancelled else ("gone", "RunComfy no longer knows this request")
        await asyncio.to_thread(records.change, entry.id, state=state, detail=detail, hold=0)
    return 200, {"ok": True, "cancelled": bool(cancelled), "message": message}


def limits_in(raw: bytes) -> tuple[float | None, float | None]:
    """The per-run and per-day limits a POST of the setting asks for; ValueError says what to send instead."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("Send the limits as JSON.") from None
    if not isinstance(body, dict):
        raise ValueError('Send an object: {"per_run_usd": 2.0, "per_day_usd": null}')
    return limit_value("per_run_usd", body.get("per_run_usd")), limit_value("per_day_usd", body.get("per_day_usd"))


def save_setting(spending_file: Path, per_run: float | None, per_day: float | None) -> tuple[int, dict[str, Any]]:
    """Save the setting and answer with the limits now in effect, or a 500 that says nothing changed."""
    try:
        save_limits(spending_file, per_run, per_day)
    except OSError as refused:  # the user folder is a file, read-only or full
        reason = refused.strerror or type(refused).__name__
        error = f"The spending limit could not be saved in {spending_file} ({reason}); the limits in effect are unchanged."
        return 500, {"ok": False, "error": error}
    return 200, spending_answer(spending_file)


def guarded(handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """`handler` behind the token route's guard: refused for a host or origin that is not this ComfyUI's own, and
    answered in words (503) while another program holds the job records."""

    async def answer(request: Any) -> Any:
        refused = refusal(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except Busy:
            return refuse(503, BUSY)

    return answer


def request_id_of(request: Any) -> str | None:
    """The route's request id, or None when it cannot be one segment of a path (see `url_request_id`)."""
    request_id = request.match_info["request_id"]
    return request_id if url_request_id(request_id) is not None else None


def register(routes: Any, state_dir: Callable[[], Path], token_file: Callable[[], Path], spending_file: Callable[[], Path]) -> None:
    """Add the panel's and the setting's routes to ComfyUI's aiohttp route table."""
    from aiohttp import web

    @routes.get(JOBS_ROUTE)
    @guarded
    async def list_jobs(request: web.Request) -> web.Response:
        answer, balance = await asyncio.gather(asyncio.to_thread(jobs_answer, state_dir(), spending_file()), balance_answer(token_file()))
        return web.json_response({**answer, "balance": balance})

    @routes.get(ROUTES[1])
    @guarded
    async def job_thumbnail(request: web.Request) -> web.Response:
        request_id = request_id_of(request)
        png = await thumbnail(state_dir(), request_id) if request_id else None
        if png is None:
            return refuse(404, "No saved image for this job.")
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @routes.post(ROUTES[2])
    @guarded
    async def cancel_job(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return refuse(415, "Send the request as JSON.")
        if len(await read_capped(request.content, MAX_BODY_BYTES)) > MAX_BODY_BYTES:
            return refuse(413, "Request too large.")
        request_id = request_id_of(request)
        if request_id is None:
            return refuse(400, "That is not a RunComfy request id.")
        status, answer = await cancel_queued(state_dir(), token_file(), request_id)
        return web.json_response(answer, status=status)

    @routes.get(SPENDING_ROUTE)
    @guarded
    async def get_spending(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(spending_answer, spending_file()))

    @routes.post(SPENDING_ROUTE)
    @guarded
    async def set_spending(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return refuse(415, "Send the limits as JSON.")
        raw = await read_capped(request.content, MAX_BODY_BYTES)
        if len(raw) > MAX_BODY_BYTES:
            return refuse(413, "Request too large.")
        try:
            per_run, per_day = limits_in(raw)
        except ValueError as bad:
            return refuse(400, str(bad))
        status, answer = await asyncio.to_thread(save_setting, spending_file(), per_run, per_day)
        return web.json_response(answer, status=status)
