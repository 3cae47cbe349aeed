"""The jobs panel's and the spending setting's routes, served by a real aiohttp server on 127.0.0.1 over the job
records that real node runs against the fake wrote: what the panel shows, its thumbnails, cancelling a queued job with the
node's own wording, and the same refusals as the token route."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sqlite3
import time

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import as_lists, job_rows, node_inputs, node_object, run_node, state_dir  # noqa: E402
from runcomfy_seedream.api.errors import JobCancelledError  # noqa: E402
from runcomfy_seedream.api.spending import PER_RUN_ENV  # noqa: E402
from runcomfy_seedream.nodes import jobs_route  # noqa: E402

REBINDING = {"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"}


pytestmark = pytest.mark.usefixtures("fresh_process_state")


@pytest.fixture
def folder(tmp_path):
    return state_dir(tmp_path)


def edit_records(folder, statement: str, *rows) -> None:
    """A change to the job records, as a user with the sqlite3 shell would make it."""
    with contextlib.closing(sqlite3.connect(folder / "records.db")) as database, database:
        database.executemany(statement, rows or [()])


def copies_of(folder, job_id: str, changes: list[dict]) -> None:
    """More rows like job `job_id`, each with `changes` to its columns."""
    with contextlib.closing(sqlite3.connect(folder / "records.db")) as database:
        database.row_factory = sqlite3.Row
        (row,) = database.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchall()
    columns = list(row.keys())
    edit_records(
        folder,
        f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        *[tuple((dict(row) | change)[name] for name in columns) for change in changes],
    )


def app_for(folder) -> web.Application:
    routes = web.RouteTableDef()
    jobs_route.register(routes, lambda: folder, lambda: folder / "secrets" / "api_token.json", lambda: folder / "spending_limits.json")
    app = web.Application()
    app.add_routes(routes)
    return app


async def request(client: TestClient, method: str, path: str, *, body=None, headers=None):
    sent = {"Content-Type": "application/json"} if body is not None else {}
    sent.update({name: value.format(port=client.port) for name, value in (headers or {}).items()})
    response = await client.request(method, path, data=json.dumps(body) if body is not None else None, headers=sent)
    raw = await response.read()
    return response.status, response.content_type, raw


def call(folder, method: str, path: str, **options):
    async def go():
        async with TestClient(TestServer(app_for(folder), host="127.0.0.1")) as client:
            return await request(client, method, path, **options)

    return asyncio.run(go())


def test_the_panel_lists_jobs_newest_first_with_totals_thumbnails_and_no_token(fake, comfy, folder):
    first = run_node(**node_inputs(seed=1, prompt="Generate 3 images of a harbour at dawn."))[3]
    second = run_node(**node_inputs(seed=2, max_images=2, prompt="Generate 2 images of a harbour at night."))[3]
    status, kind, raw = call(folder, "GET", "/runcomfy/seedream/jobs")
    answer = json.loads(raw)
    assert status == 200 and fake.behaviour.token not in raw.decode()
    assert [job["request_id"] for job in answer["jobs"]] == [second, first]
    assert answer["today"]["usd"] == pytest.approx(0.15) and answer["today"]["jobs"] == 2
    assert answer["month"]["usd"] == pytest.approx(0.15) and answer["today"]["day"] == time.strftime("%Y-%m-%d")
    newest = answer["jobs"][0]
    assert newest["status"] == "done" and newest["cost_usd"] == pytest.approx(0.06) and newest["images"] == 2
    assert newest["prompt"] == "Generate 2 images of a harbour at night." and newest["cancellable"] is False
    status, kind, png = call(folder, "GET", newest["thumbnail"])
    assert status == 200 and kind == "image/png"
    with Image.open(io.BytesIO(png)) as image:
        assert max(image.size) <= jobs_route.THUMBNAIL_PX
    assert call(folder, "GET", "/runcomfy/seedream/jobs/no-such-request/thumbnail")[0] == 404


def test_a_request_id_stays_one_segment_of_the_thumbnail_and_cancel_paths(fake, comfy, folder):
    run_node(**node_inputs(seed=3, prompt="Generate 3 images of a harbour at noon."))
    ((done_id, done_request),) = job_rows(folder, "id", "request_id")
    odd = ["a?b#c%2F", "..", ".", "a/b", "../../x", "a b"]
    copies_of(
        folder,
        done_id,
        [{"id": f"done{n}", "request_id": rid} for n, rid in enumerate(odd)]
        + [{"id": f"queued{n}", "state": "queued", "request_id": rid} for n, rid in enumerate(odd)],
    )
    jobs = json.loads(call(folder, "GET", "/runcomfy/seedream/jobs")[2])["jobs"]
    rows = {(job["entry"][0], job["request_id"]): job for job in jobs if job["entry"] != done_id}
    assert rows[("d", "a?b#c%2F")]["thumbnail"] == "/runcomfy/seedream/jobs/a%3Fb%23c%252F/thumbnail"
    assert rows[("q", "a?b#c%2F")]["cancellable"] is True
    status, kind, _ = call(folder, "GET", rows[("d", "a?b#c%2F")]["thumbnail"])
    assert status == 200 and kind == "image/png"  # the route reads the id back whole
    for rid in odd[1:]:  # a browser resolves "." and ".." (encoded or not) into another route; the others are no ids
        assert rows[("d", rid)]["thumbnail"] is None and rows[("q", rid)]["cancellable"] is False
    (real,) = [job for job in jobs if job["entry"] == done_id]
    assert real["thumbnail"] == f"/runcomfy/seedream/jobs/{done_request}/thumbnail"


def test_a_queued_job_is_cancelled_from_the_panel_and_the_node_says_so(fake, comfy, folder):
    fake.behaviour.queue_s = 30.0

    async def go():
        run = asyncio.ensure_future(node_object().generate(**as_lists(node_inputs())))
        async with TestClient(TestServer(app_for(folder), host="127.0.0.1")) as client:
            while True:  # the panel's view, as it polls
                jobs = json.loads((await request(client, "GET", "/runcomfy/seedream/jobs"))[2])["jobs"]
                if jobs and jobs[0]["status"] == "queued" and jobs[0]["queue_position"] is not None:  # its first poll
                    break
                await asyncio.sleep(0.02)
            (job,) = jobs
            assert job["cancellable"] is True and job["queue_position"] == fake.behaviour.queue_ahead
            cancelled = await request(client, "POST", f"/runcomfy/seedream/jobs/{job['request_id']}/cancel", body={})
            try:
                await run
            except JobCancelledError as ended:
                return job["request_id"], cancelled, ended
            raise AssertionError("the node did not end")

    request_id, (status, _, raw), ended = asyncio.run(go())
    answer = json.loads(raw)
    assert status == 200 and answer["cancelled"] is True
    assert answer["message"] == f"Queued request {request_id} was cancelled at RunComfy before it started generating."
    assert request_id in str(ended) and fake.jobs[request_id].cancelled
    assert job_rows(folder, "state", "request_id") == [("cancelled", request_id)]
    again = json.loads(call(folder, "GET", "/runcomfy/seedream/jobs")[2])
    assert again["today"]["usd"] == 0 and again["jobs"][0]["status"] == "cancelled" and again["jobs"][0]["cancellable"] is False
    status, _, raw = call(folder, "POST", f"/runcomfy/seedream/jobs/{request_id}/cancel", body={})
    assert status == 409 and "not queued" in json.loads(raw)["error"]  # nothing left to cancel
    status, _, raw = call(folder, "POST", "/runcomfy/seedream/jobs/someone-elses-request/cancel", body={})
    assert status == 404 and fake.cancel_calls == 1  # only jobs of these records, and nothing sent for the others


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/runcomfy/seedream/jobs", None),
        ("GET", "/runcomfy/seedream/spending", None),
        ("POST", "/runcomfy/seedream/spending", {"per_run_usd": 100}),
        ("POST", "/runcomfy/seedream/jobs/abc/cancel", {}),
        ("GET", "/runcomfy/seedream/jobs/abc/thumbnail", None),
        ("HEAD", "/runcomfy/seedream/jobs", None),
    ],
)
@pytest.mark.parametrize(
    "headers", [REBINDING, {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}], ids=["rebinding", "cross-site"]
)
def test_requests_another_site_could_make_are_refused(fake, folder, method, path, body, headers):
    status, _, raw = call(folder, method, path, body=body, headers=headers)
    assert status == 403 and (method == "HEAD" or json.loads(raw)["ok"] is False)  # HEAD: the status alone
    assert not (folder / "spending_limits.json").exists() and fake.cancel_calls == 0


def test_a_cancel_with_an_unusable_service_address_answers_in_json_with_what_to_change(fake, comfy, folder, monkeypatch):
    """Before: the ConfigurationError escaped the route, and the panel got aiohttp's bare "500 Internal Server Error"."""
    request_id = run_node(**node_inputs(seed=4))[3]
    edit_records(folder, "UPDATE jobs SET state = 'queued' WHERE request_id = ?", (request_id,))
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", "ftp://model-api.runcomfy.net")
    status, kind, raw = call(folder, "POST", f"/runcomfy/seedream/jobs/{request_id}/cancel", body={})
    assert status == 400 and kind == "application/json"
    assert "RUNCOMFY_MODEL_API_BASE" in json.loads(raw)["error"] and fake.cancel_calls == 0


def test_a_cancel_with_a_proxy_it_cannot_use_answers_in_json_naming_the_variable(fake, comfy, folder, monkeypatch):
    request_id = run_node(**node_inputs(seed=4))[3]
    edit_records(folder, "UPDATE jobs SET state = 'queued' WHERE request_id = ?", (request_id,))
    monkeypatch.setenv("ALL_PROXY", "socks4://vpn:pw-77@127.0.0.1:1080")  # no proxy kind httpx speaks
    status, kind, raw = call(folder, "POST", f"/runcomfy/seedream/jobs/{request_id}/cancel", body={})
    assert status == 400 and kind == "application/json"
    error = json.loads(raw)["error"]
    assert "ALL_PROXY" in error and "pw-77" not in error and fake.cancel_calls == 0


def test_the_spending_setting_is_saved_checked_and_the_environment_wins(fake, folder, monkeypatch):
    status, _, raw = call(folder, "POST", "/runcomfy/seedream/spending", body={"per_run_usd": 2.5, "per_day_usd": None})
    assert status == 200 and json.loads(raw)["per_run_usd"] == 2.5 and json.loads(raw)["per_day_usd"] is None
    status, _, raw = call(folder, "POST", "/runcomfy/seedream/spending", body={"per_run_usd": -1, "per_day_usd": 3})
    assert status == 400 and "per_run_usd" in json.loads(raw)["error"]
    assert json.loads(call(folder, "GET", "/runcomfy/seedream/spending")[2])["saved"] == {"per_run_usd": 2.5, "per_day_usd": None}
    monkeypatch.setenv(PER_RUN_ENV, "0.5")
    answer = json.loads(call(folder, "GET", "/runcomfy/seedream/spending")[2])
    assert answer["per_run_usd"] == 0.5 and answer["saved"]["per_run_usd"] == 2.5 and answer["env"]["per_run_usd"] == PER_RUN_ENV


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"not json", "Send the limits as JSON."),
        (b"[" * 4000 + b"]" * 4000, "Send the limits as JSON."),  # nested past Python's recursion limit
        (b"[1, 2]", 'Send an object: {"per_run_usd": 2.0, "per_day_usd": null}'),
        (b'{"per_run_usd": -1}', "per_run_usd"),
        (b'{"per_day_usd": "lots"}', "per_day_usd"),
    ],
)
def test_a_setting_that_is_not_two_limits_is_refused_with_what_to_send(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jobs_route.limits_in(raw)


def test_the_setting_reads_two_limits_or_none():
    assert jobs_route.limits_in(b'{"per_run_usd": 2.5, "per_day_usd": null}') == (2.5, None)
    assert jobs_route.limits_in(b"{}") == (None, None)


def huge_png(width: int = 7000, height: int = 6000) -> bytes:
    """A PNG past the pipeline's pixel cap that is small on disk (one bit a pixel, all black): 42 MP, 126 MB as RGB."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thumbnail_is_never_decoded_from_an_image_past_the_pixel_cap(fake, comfy, folder):
    """Before: a huge PNG planted in a saved result was decoded whole (and converted to RGB) for every thumbnail asked
    for, six at once: ComfyUI was killed for memory."""
    request_id = run_node(**node_inputs(seed=1))[3]
    (saved,) = [path for path in (folder / "results").iterdir() if not path.name.startswith(".")]
    (saved / "00.img").write_bytes(huge_png())
    path = f"/runcomfy/seedream/jobs/{request_id}/thumbnail"

    async def six_at_once():
        async with TestClient(TestServer(app_for(folder), host="127.0.0.1")) as client:
            return await asyncio.gather(*(request(client, "GET", path) for _ in range(6)))

    assert [status for status, _, _ in asyncio.run(six_at_once())] == [404] * 6
    assert jobs_route.small_png(huge_png()) is None


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "CMYK"])
def test_a_thumbnail_comes_from_any_mode_a_saved_image_may_have(mode):
    buffer = io.BytesIO()
    Image.new(mode, (640, 480)).save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    with Image.open(io.BytesIO(jobs_route.small_png(buffer.getvalue()))) as image:
        assert image.size == (128, 96) and image.mode == "RGB"


def test_a_thumbnail_of_a_large_image_within_the_cap_is_small(fake, comfy, folder):
    buffer = io.BytesIO()
    Image.new("RGB", (4096, 3072), (10, 200, 30)).save(buffer, format="PNG")
    png = jobs_route.small_png(buffer.getvalue())
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (128, 96) and image.mode == "RGB" and image.getpixel((5, 5)) == (10, 200, 30)


def test_the_panel_answers_in_words_while_another_program_holds_the_records(fake, comfy, folder):
    """A database tool left open on the records: the panel says so (503, JSON), never a raw error or a hang."""
    from runcomfy_seedream.api.records import Records

    request_id = run_node(**node_inputs(seed=1))[3]
    Records.at(folder, wait_s=0.2)  # how long this process waits for another's hold, from now on
    holder = sqlite3.connect(folder / "records.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        answers = [call(folder, "GET", path) for path in ("/runcomfy/seedream/jobs", f"/runcomfy/seedream/jobs/{request_id}/thumbnail")]
    finally:
        holder.close()
    for status, kind, raw in answers:
        assert (status, kind) == (503, "application/json") and "held by another program" in json.loads(raw)["error"]
    assert call(folder, "GET", "/runcomfy/seedream/jobs")[0] == 200  # and as soon as it lets go, the panel works again
