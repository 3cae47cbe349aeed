"""Each way the service, the network or the local disk can misbehave, with what a user sees and how many jobs were paid.

Every row runs the node end to end against the local fake service. "expected" is the number
of images the node returns, or the error it raises; "paid" is the number of jobs the service
created (each one is charged). A row's `arrange(fake, comfy, state)` sets the trouble up; it
may run the node once itself first (a run that left something behind). Its words must be in
the last text (or the error); an `anywhere(...)` word in some progress text (a retry notice),
a `nowhere(...)` word in no progress text and not in the error.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import node_inputs, quick_timing, run_node
from runcomfy_seedream.api import Limits
from runcomfy_seedream.api.errors import (
    DownloadError,
    JobCancelledError,
    JobFailedError,
    OutcomeUnknownError,
    RecordsError,
    ServiceError,
)
from runcomfy_seedream.fake_service import Fault

TIMING = quick_timing(download_read_timeout_s=0.75, records_wait_s=0.3)
LIMITS = Limits(max_download_bytes=2 * 1024 * 1024)


class anywhere(str):  # noqa: N801 - reads as a word of a row
    """Words that must be in some progress text, not only the last (a retry notice, a queue position)."""


class nowhere(str):  # noqa: N801
    """Words that must be in no progress text and not in the error."""


def bomb_download(fake, comfy, state):
    """The first result file is 144 MP of zeros in a few hundred KB of PNG (made when the row runs, not at import)."""
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG")
    fake.behaviour.inject("file", Fault("body", body=buffer.getvalue()))


def faults(**by_endpoint):
    def arrange(fake, comfy, state):
        for endpoint, injected in by_endpoint.items():
            fake.behaviour.inject(endpoint, *injected)

    return arrange


def behaviour(**changes):
    def arrange(fake, comfy, state):
        for key, value in changes.items():
            setattr(fake.behaviour, key, value)

    return arrange


def result_urls(*urls):
    return behaviour(result_urls=list(urls))


def once_shown(prefix: str, action, **timings):
    """Do `action(fake)` the first time a progress text starts with `prefix` ("Submitted": the paid job exists),
    with the fake's `timings` (queue_s, run_s) long enough for the trouble to land while the job runs."""

    def arrange(fake, comfy, state):
        for key, value in timings.items():
            setattr(fake.behaviour, key, value)
        done = []

        def on_text(text):
            if text.startswith(prefix) and not done:
                done.append(True)
                action(fake)

        comfy.on_text = on_text

    return arrange


def once_submitted(action):
    return once_shown("Submitted", action, run_s=1.2)


def once_queued(action):
    return once_shown("Queued", action, queue_s=1.0)


def state_trouble(make):
    def arrange(fake, comfy, state: Path):
        make(state)

    return arrange


def after_a_first_run(damage):
    """Run once (paid, saved), then damage what was saved: `damage(its folder, the database)`."""

    def arrange(fake, comfy, state: Path):
        run_node(timing=TIMING, limits=LIMITS, **node_inputs())
        (entry,) = (state / "results").iterdir()
        with contextlib.closing(sqlite3.connect(state / "records.db", isolation_level=None)) as database:
            damage(entry, database)

    return arrange


def _records_folder(state: Path) -> None:
    (state / "records.db").mkdir(parents=True)


def _records_garbage(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "records.db").write_bytes(b"\x00\xff not a database" * 100)


def _state_is_a_file(state: Path) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("not a folder")


def _journal_with_string_time(state: Path) -> None:
    state.mkdir(parents=True)
    entry = {"state": "submitted", "request_id": "old", "at": "yesterday"}
    (state / "journal.json").write_text(json.dumps({"version": 1, "entries": {"f" * 64: entry}}))


def _journal_garbage(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "journal.json").write_bytes(b"\x00\xff{not json")


def _results_is_a_file(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "results").write_text("a file where a folder should be")


def _undecodable(entry: Path, database) -> None:
    for image in entry.glob("*.img"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n but not really")


def _pointing_outside(entry: Path, database) -> None:
    database.execute("""UPDATE saved SET files = '["../../records.db"]'""")


def _folder_outside(entry: Path, database) -> None:
    database.execute("UPDATE saved SET folder = '../..'")


def _wrong_types(entry: Path, database) -> None:
    database.execute("UPDATE saved SET urls = '5'")


def _index_garbage(entry: Path, database) -> None:
    database.execute("UPDATE saved SET files = '{not json'")


def _deeply_nested_journal(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "journal.json").write_text("[" * 200_000 + "]" * 200_000)


def _journal_is_a_fifo(state: Path) -> None:
    state.mkdir(parents=True)
    os.mkfifo(state / "journal.json")  # opening it for reading would wait for a writer forever


def _fifo_image(entry: Path, database) -> None:
    (entry / "00.img").unlink()
    os.mkfifo(entry / "00.img")


def _image_links_outside(entry: Path, database) -> None:
    outside = entry.parent.parent / "outside.img"
    outside.write_bytes((entry / "00.img").read_bytes())
    (entry / "00.img").unlink()
    (entry / "00.img").symlink_to(outside)


def _journal_with_huge_time(state: Path) -> None:
    state.mkdir(parents=True)
    entry = {"state": "submitted", "request_id": "old", "at": 10**400}
    (state / "journal.json").write_text(json.dumps({"version": 1, "entries": {"f" * 64: entry}}))


_HELD: list[sqlite3.Connection] = []  # kept open (and locked) until the test process ends, like a suspended ComfyUI


def _records_locked(state: Path) -> None:
    """Another process holds a write transaction on the records and never ends it."""
    state.mkdir(parents=True)
    holder = sqlite3.connect(state / "records.db", isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    _HELD.append(holder)


def _huge_journal(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "journal.json").write_text('{"version": 1, "entries": {}, "pad": "' + "x" * 20_000_000 + '"}')


def _expired_links(fake, comfy, state):
    fake.behaviour.result_urls = [f"{fake.origin}/files/expired/0.png"]  # answers 404 however often it is asked


def _cancel_every_job(fake):
    for job in fake.jobs.values():
        fake.cancel(job)


LOGIN_PAGE = b"<!doctype html><html><head><title>Sign in</title></head><body><form>...</form></body></html>"
LARGE_REFERENCE = {"image_1": torch.rand((1, 1400, 1400, 3))}  # a PNG of several MB: larger than socket buffers
STORM = [Fault("http", status=429, retry_after="0")] * 6
STORM_NO_HINT = [Fault("http", status=429)] * 3
MEMORY_WARNING = "kept in memory only"

# (name, arrange, expected: number of images or an error type, words the last text or the error must contain, jobs paid, inputs)
MATRIX = [
    ("429 storm with Retry-After on status", faults(status=STORM), 3, None, 1, {}),
    ("429 storm without Retry-After on status", faults(status=STORM_NO_HINT), 3, None, 1, {}),
    ("429 on result", faults(result=[Fault("http", status=429, retry_after="0")] * 2), 3, None, 1, {}),
    ("5xx on status and result", faults(status=[Fault("http", status=502)], result=[Fault("http", status=503)]), 3, None, 1, {}),
    ("connection reset on status", faults(status=[Fault("drop")] * 2), 3, None, 1, {}),
    ("truncated JSON on status", faults(status=[Fault("garbage")]), 3, None, 1, {}),
    ("truncated JSON on result", faults(result=[Fault("garbage")]), 3, None, 1, {}),
    ("5xx on downloads", faults(file=[Fault("http", status=500), Fault("http", status=503)]), 3, None, 1, {}),
    ("connection reset on a download", faults(file=[Fault("drop")]), 3, None, 1, {}),
    ("truncated download", faults(file=[Fault("truncate")]), 3, None, 1, {}),
    ("a download stalls once", faults(file=[Fault("stall", seconds=1.5)]), 3, None, 1, {}),
    ("result URL gone (404)", _expired_links, DownloadError, ["not available", "expired"], 1, {}),
    ("one 404 on a freshly finished result", faults(file=[Fault("http", status=404)]), 3, None, 1, {}),
    ("job fails with a reason", behaviour(fail_with="NSFW content detected"), JobFailedError, ["NSFW content detected"], 1, {}),
    ("fewer images than asked", behaviour(images_returned=1), 1, None, 1, {}),
    ("outputs of mixed sizes", behaviour(mixed_sizes=True), 3, None, 1, {}),
    ("job finishes with no images", behaviour(images_returned=0), JobFailedError, ["no images"], 1, {}),
    (
        "result is a web page labelled image/png",
        faults(file=[Fault("body", body=b"<html>Access denied</html>")]),
        DownloadError,
        ["web page", "is paid"],
        1,
        {},
    ),
    (
        "result is not an image",
        faults(file=[Fault("body", body=b"\x00\x01 not a picture" * 8)]),
        DownloadError,
        ["not an image", "may be charged"],
        1,
        {},
    ),
    ("result is a decompression bomb", bomb_download, DownloadError, ["too large to decode safely"], 1, {}),
    ("result file is too large", faults(file=[Fault("body", body=b"x" * 3_000_000)]), DownloadError, ["over the 2 MiB limit"], 1, {}),
    ("result URL on a private host", result_urls("https://10.1.2.3/out.png"), DownloadError, ["not a public host"], 1, {}),
    ("result URL not https", result_urls("http://cdn.example.com/out.png"), DownloadError, ["only https"], 1, {}),
    (
        "result URL with a NUL in it",
        result_urls("https://cdn.example.com/a\x00.png"),
        DownloadError,
        ["control character", "is paid"],
        1,
        {},
    ),
    ("result lists 1000 files for max_images 3", behaviour(listed_again=997), 3, ["the service listed 1000 images"], 1, {}),
    # Reads of a paid job outlast outages: more tries than any fixed count, until the job's deadline.
    (
        "six 429s then four 503s on status",
        faults(status=[Fault("http", status=429)] * 6 + [Fault("http", status=503)] * 4),
        3,
        None,
        1,
        {},
    ),
    ("twelve 429s with Retry-After: 0 on status", faults(status=[Fault("http", status=429, retry_after="0")] * 12), 3, None, 1, {}),
    ("ten 429s without Retry-After on result", faults(result=[Fault("http", status=429)] * 10), 3, None, 1, {}),
    ("connections refused while the job runs", once_submitted(lambda fake: fake.refuse_connections(1.0)), 3, None, 1, {}),
    (
        "every read answered 503 while the job runs",
        once_submitted(lambda fake: fake.behaviour.start_outage(1.0, Fault("http", status=503))),
        3,
        None,
        1,
        {},
    ),
    (
        "every read answered 429 without Retry-After",
        once_submitted(lambda fake: fake.behaviour.start_outage(1.0, Fault("http", status=429))),
        3,
        None,
        1,
        {},
    ),
    # "May have been charged" only when it may be true.
    (
        "gateway 504 after the submit arrived",
        faults(submit=[Fault("gateway", status=504)]),
        OutcomeUnknownError,
        ["504", "not sent again"],
        1,
        {},
    ),
    (
        "gateway 502 after the submit arrived",
        faults(submit=[Fault("gateway", status=502)]),
        OutcomeUnknownError,
        ["502", "may have"],
        1,
        {},
    ),
    # RunComfy's own 500001 once the whole body was sent: it may have come after the job was made.
    (
        "the submit arrived and RunComfy answered 500 500001",
        faults(submit=[Fault("gateway", status=500, error_code="500001")]),
        OutcomeUnknownError,
        ["500001", "may have been charged"],
        1,
        {},
    ),
    ("submit connection dropped after the body", faults(submit=[Fault("drop")]), OutcomeUnknownError, ["may have been charged"], 1, {}),
    ("submit answered with unreadable JSON", faults(submit=[Fault("garbage")]), OutcomeUnknownError, ["may be running"], 1, {}),
    (
        "submit answered with a redirect",
        faults(submit=[Fault("http", status=302)]),
        ServiceError,
        ["redirect", "nothing was"],
        0,
        {},
    ),
    ("a status read answered 408 and 425", faults(status=[Fault("http", status=408), Fault("http", status=425)]), 3, None, 1, {}),
    ("request ids with characters a path treats specially", behaviour(request_id_prefix="a+b=."), 3, None, 1, {}),
    ("a proxy answers 413 before reading the upload", faults(submit=[Fault("early", status=413)]), ServiceError, [], 0, LARGE_REFERENCE),
    ("a proxy answers 411 before reading the upload", faults(submit=[Fault("early", status=411)]), ServiceError, [], 0, LARGE_REFERENCE),
    ("a proxy answers 401 before reading the upload", faults(submit=[Fault("early", status=401)]), ServiceError, [], 0, LARGE_REFERENCE),
    # Result URLs judged by the address they resolve to.
    ("result URL in decimal form (2130706433)", result_urls("https://2130706433/out.png"), DownloadError, ["not a public host"], 1, {}),
    ("result URL in short form (127.1)", result_urls("https://127.1/out.png"), DownloadError, ["not a public host"], 1, {}),
    (
        "result URL on a name that resolves to 127.0.0.1",
        result_urls("https://localhost/out.png"),
        DownloadError,
        ["not a public host"],
        1,
        {},
    ),
    ("result URL on the cloud metadata address", result_urls("https://169.254.169.254/x"), DownloadError, ["not a public host"], 1, {}),
    ("result URL in IPv4-mapped IPv6", result_urls("https://[::ffff:127.0.0.1]/x.png"), DownloadError, ["not a public host"], 1, {}),
    ("job cancelled at RunComfy by someone else", once_queued(_cancel_every_job), JobCancelledError, ["cancelled at RunComfy"], 1, {}),
    # Local trouble never ends a paid run.
    ("records.db is a folder", state_trouble(_records_folder), 3, [MEMORY_WARNING, "a folder is in its place", "this run goes on"], 1, {}),
    ("records.db is not a database", state_trouble(_records_garbage), 3, ["were damaged", "set aside as records.db.damaged-"], 1, {}),
    ("the state folder is a file", state_trouble(_state_is_a_file), 3, [MEMORY_WARNING, "this run goes on"], 1, {}),
    # What an earlier version left behind is imported as far as it can be read, never in the way of a run.
    ("a journal entry's time is a string", state_trouble(_journal_with_string_time), 3, None, 1, {}),
    ("journal.json is garbage", state_trouble(_journal_garbage), 3, None, 1, {}),
    ("the results path is a file", state_trouble(_results_is_a_file), 3, ["could not save the images", "this run goes on"], 1, {}),
    ("a saved image no longer decodes", after_a_first_run(_undecodable), 3, ["damaged", "request resumed"], 1, {}),
    ("a saved entry points outside its folder", after_a_first_run(_pointing_outside), 3, ["set aside", "request resumed"], 1, {}),
    ("a saved entry's folder is outside", after_a_first_run(_folder_outside), 3, ["set aside", "request resumed"], 1, {}),
    ("a saved entry has the wrong types", after_a_first_run(_wrong_types), 3, ["set aside", "request resumed"], 1, {}),
    ("journal.json is nested 200000 deep", state_trouble(_deeply_nested_journal), 3, None, 1, {}),
    ("journal.json is a FIFO", state_trouble(_journal_is_a_fifo), 3, None, 1, {}),
    ("a saved image is a FIFO", after_a_first_run(_fifo_image), 3, ["set aside", "request resumed"], 1, {}),
    ("a saved image links outside", after_a_first_run(_image_links_outside), 3, ["set aside", "request resumed"], 1, {}),
    # Answers that cannot be decoded, and 404s that are not RunComfy's word.
    ("submit answer that cannot be decoded", faults(submit=[Fault("undecodable")]), OutcomeUnknownError, ["could not be decoded"], 1, {}),
    ("status answers that cannot be decoded", faults(status=[Fault("undecodable")] * 2), 3, None, 1, {}),
    ("bare 404s on status (a proxy's page)", faults(status=[Fault("http", status=404)] * 3), 3, None, 1, {}),
    ("a proxy answers 413 and drains the upload", faults(submit=[Fault("answer_first", status=413)]), ServiceError, ["413"], 0, {}),
    ("a proxy answers 411 and drains the upload", faults(submit=[Fault("answer_first", status=411)]), ServiceError, ["411"], 0, {}),
    (
        "the submit arrived and RunComfy answered 503 500001",
        faults(submit=[Fault("gateway", status=503, error_code="500001")]),
        OutcomeUnknownError,
        ["500001", "not sent again"],
        1,
        {},
    ),
    ("a 404 with another code on status", faults(status=[Fault("http", status=404, error_code="404")] * 2), 3, None, 1, {}),
    ("a journal time of 400 digits", state_trouble(_journal_with_huge_time), 3, None, 1, {}),
    ("a saved index that is not JSON", after_a_first_run(_index_garbage), 3, ["set aside", "request resumed"], 1, {}),
    # Going on alone could pay for what another process pays for: nothing is sent, and the next run tries again.
    (
        "another program keeps the records locked",
        state_trouble(_records_locked),
        RecordsError,
        ["held by another program", "nothing was sent"],
        0,
        {},
    ),
    ("a 20 MB journal.json", state_trouble(_huge_journal), 3, None, 1, {}),
    # A 5xx that is not RunComfy's own error, once the submit arrived: it may have made the job.
    (
        "a proxy answers the arrived submit 500 {detail: internal error}",
        faults(submit=[Fault("gateway", status=500, body=b'{"detail": "internal error"}')]),
        OutcomeUnknownError,
        ["HTTP 500", "may have been charged"],
        1,
        {},
    ),
    (
        "a proxy answers the arrived submit 502 with a code that is not RunComfy's",
        faults(submit=[Fault("gateway", status=502, error_code="UPSTREAM_RESET")]),
        OutcomeUnknownError,
        ["HTTP 502", "not sent again"],
        1,
        {},
    ),
    (
        "a proxy answers the arrived submit 500 with no body",
        faults(submit=[Fault("gateway", status=500, body=b"", content_type="text/plain")]),
        OutcomeUnknownError,
        ["HTTP 500", "may have been charged"],
        1,
        {},
    ),
    # Something that is plainly not the API answered (a login page, a captive portal): no job, nothing held.
    (
        "a login page answers the submit (200 text/html)",
        faults(submit=[Fault("http", status=200, body=LOGIN_PAGE, content_type="text/html; charset=utf-8")]),
        ServiceError,
        ["not the RunComfy API", "nothing was charged", "RUNCOMFY_MODEL_API_BASE"],
        0,
        {},
    ),
    (
        "a captive portal answers the submit 200 []",
        faults(submit=[Fault("http", status=200, body=b"[]")]),
        ServiceError,
        ["not the RunComfy"],
        0,
        {},
    ),
    (
        "a login page answers status reads (200 text/html)",
        faults(status=[Fault("http", status=200, body=LOGIN_PAGE, content_type="text/html")] * 2),
        3,
        [anywhere("not the API (text/html)")],
        1,
        {},
    ),
    # Answers past the 4 MiB cap once decoded are not read: a read asks again, the submit's outcome is unknown.
    (
        "the submit's answer inflates past the cap (gzip)",
        faults(submit=[Fault("inflating")]),
        OutcomeUnknownError,
        ["over the 4 MiB limit once decoded", "may have been charged"],
        1,
        {},
    ),
    (
        "the submit's answer is a large plain body",
        faults(submit=[Fault("oversized", size=6 * 2**20)]),
        OutcomeUnknownError,
        ["over the 4 MiB limit", "not sent again"],
        1,
        {},
    ),
    ("a status answer inflates past the cap (gzip)", faults(status=[Fault("inflating")]), 3, [anywhere("over the 4 MiB limit")], 1, {}),
    ("a status answer gzipped twice", faults(status=[Fault("inflating", layers=2)]), 3, [anywhere("(gzip, gzip)")], 1, {}),
    (
        "a result answer is a large plain body",
        faults(result=[Fault("oversized", size=6 * 2**20)]),
        3,
        [anywhere("an answer over the 4 MiB limit")],
        1,
        {},
    ),
    # Numbers the service reports are shown only when they can be true.
    ("a negative cost in the result", behaviour(result_fields={"cost": -5}), 3, ["Done: 3 images", nowhere("cost $")], 1, {}),
    ("a NaN cost in the result", behaviour(result_fields={"cost": float("nan")}), 3, ["Done: 3 images", nowhere("cost $")], 1, {}),
    ("an infinite cost in the result", behaviour(result_fields={"cost": float("inf")}), 3, [nowhere("cost $")], 1, {}),
    (
        "a queue position of -5",
        behaviour(status_fields={"queue_position": -5}, queue_s=0.4),
        3,
        [anywhere("Queued at RunComfy"), nowhere("position -5")],
        1,
        {},
    ),
    (
        "a queue position of 10**18",
        behaviour(status_fields={"queue_position": 10**18}, queue_s=0.4),
        3,
        [anywhere("Queued at RunComfy"), nowhere("(position 1000000000000000000)")],
        1,
        {},
    ),
]


def library_exceptions_in(error: BaseException) -> list[BaseException]:
    """httpx/httpcore exceptions reachable from `error` through its cause and context."""
    found, seen, todo = [], set(), [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current).__module__.split(".")[0] in ("httpx", "httpcore", "h11"):
            found.append(current)
        todo += [current.__cause__, current.__context__]
    return found


def _state(tmp_path: Path) -> Path:
    return tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path in these tests


@pytest.mark.parametrize("name,arrange,expected,words,paid,inputs", MATRIX, ids=[row[0] for row in MATRIX])
def test_fault(fake, comfy, tmp_path, name, arrange, expected, words, paid, inputs):
    arrange(fake, comfy, _state(tmp_path))
    if isinstance(expected, int):
        images, image_list, urls, request_id = run_node(timing=TIMING, limits=LIMITS, **node_inputs(**inputs))
        assert images.shape[0] == expected == len(image_list) == len(urls.splitlines())
        assert float(images.std()) > 0.01
        assert request_id in fake.jobs
        shown = comfy.progress_texts()[-1]
    else:
        with pytest.raises(expected) as caught:
            run_node(timing=TIMING, limits=LIMITS, **node_inputs(**inputs))
        shown = str(caught.value)
        assert not library_exceptions_in(caught.value), "no library exception (which holds the request) is attached"
        if fake.jobs and expected is not OutcomeUnknownError:
            assert next(iter(fake.jobs)) in shown, "the request id is reported"
        if paid == 0:
            assert not isinstance(caught.value, OutcomeUnknownError) and "may have been" not in shown
    texts = [*comfy.progress_texts(), shown]
    for word in words or ():
        if isinstance(word, nowhere):
            assert not [text for text in texts if word in text], f"{word!r} shown"
        elif isinstance(word, anywhere):
            assert [text for text in texts if word in text], f"{word!r} never shown in: {texts}"
        else:
            assert word in shown, f"{word!r} missing from: {shown}"
    assert len([line for line in shown.splitlines() if line.startswith("Warning")]) <= 1, "at most one warning line"
    assert fake.submits == paid, "jobs paid for"
    assert all(not queue for queue in fake.behaviour.faults.values()), "every injected fault was hit"
