"""A local HTTP server that behaves like the RunComfy Model API for this model.

Real sockets on 127.0.0.1, so the client is tested through its real HTTP
stack. Counts every submit (each one would be paid), records every request's
headers, and can be told to misbehave (see `FakeBehaviour.inject`).
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from .behaviour import FakeBehaviour, Fault
from .jobs import Job, SchemaViolation, check_payload, most_images, new_job

MODEL_PATH = "/v1/models/bytedance/seedream-4-0/edit-sequential"
SERVERLESS_PREFIX = "/prod/v2"  # the serverless API (the balance), on the same server
BALANCE_PATH = f"{SERVERLESS_PREFIX}/balance"
_REQUEST_PATH = re.compile(r"^/v1/requests/([^/]+)/(status|result|cancel)$")
_FILE_PATH = re.compile(r"^/files/([^/]+)/(\d+)\.png$")
_UPLOAD_CHUNK = 64 * 1024
_SHAPED = frozenset({"inflating", "oversized"})  # faults that change how the true answer is sent, once the work is done
_PADDING: dict[int, tuple[bytes, Any]] = {}  # size -> (gzip of that much whitespace so far, the compressor's state)
_PADDING_LOCK = threading.Lock()


def _gzip_behind_whitespace(data: bytes, size: int) -> bytes:
    """gzip of `size` bytes of JSON whitespace, then `data`: the whitespace is compressed once per size."""
    with _PADDING_LOCK:
        if size not in _PADDING:
            squeeze = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            spaces, head, left = b" " * min(size, 2**20), [], size
            while left > 0:
                head.append(squeeze.compress(spaces[:left]))
                left -= min(left, len(spaces))
            _PADDING[size] = (b"".join(head), squeeze)
        head, squeeze = _PADDING[size]
        squeeze = squeeze.copy()
    return head + squeeze.compress(data) + squeeze.flush()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return None

    # --- plumbing ----------------------------------------------------------------------------

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def _reply(self, status: int, body: Any, fault: Fault | None) -> None:
        """The true answer: as JSON, or shaped by an "inflating" or "oversized" `fault`."""
        if fault is None or fault.kind not in _SHAPED:
            self._send_json(status, body)
            return
        data = json.dumps(body).encode()
        if fault.kind == "oversized":
            self._send_raw(status, b" " * fault.size + data, "application/json")
            return
        data = _gzip_behind_whitespace(data, fault.size)
        for _ in range(fault.layers - 1):
            data = zlib.compress(data, 6, wbits=16 + zlib.MAX_WBITS)
        self._send_raw(status, data, "application/json", {"Content-Encoding": ", ".join(["gzip"] * fault.layers)})

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        body: dict[str, Any] = {"error_message": message}
        if code:
            body["error_code"] = code
        self._send_json(status, body, headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        """The request body, Content-Length or chunked, received at the simulated uplink speed."""
        pacer = _UplinkPacer(self.server.fake.behaviour.upload_bytes_per_s)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(pacer)
        length = int(self.headers.get("Content-Length") or 0)
        chunks = []
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(_UPLOAD_CHUNK, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            pacer.received(len(chunk))
        return b"".join(chunks)

    def _read_chunked(self, pacer: _UplinkPacer) -> bytes:
        chunks = []
        while True:
            size_line = self.rfile.readline(65537)
            if not size_line:
                break  # the client went away mid-body
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            remaining = size
            while remaining > 0:
                chunk = self.rfile.read(min(_UPLOAD_CHUNK, remaining))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                remaining -= len(chunk)
                pacer.received(len(chunk))
            self.rfile.readline(3)  # the CRLF after each chunk
        return b"".join(chunks)

    def _authorised(self) -> str | None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if token and token in self.server.fake.valid_tokens:
            return token
        self._error(401, "400004", "Invalid, expired or revoked API token")
        return None

    def _apply_fault(self, fault: Fault | None) -> bool:
        """Act out a pre-handling fault; True when the request is finished with."""
        if fault is None:
            return False
        if fault.kind in ("http", "gateway"):
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            if fault.body is not None:
                self._send_raw(fault.status, fault.body, fault.content_type, headers)
            elif fault.kind == "gateway":  # not the service's own answer: its error code only when given
                self._error(fault.status, fault.error_code, fault.message or f"gateway answered HTTP {fault.status}", headers)
            else:
                code = fault.error_code or ("500001" if fault.status >= 500 else None)
                self._error(fault.status, code, fault.message or f"injected HTTP {fault.status}", headers)
            return True
        if fault.kind == "drop":
            self._drop()
            return True
        if fault.kind == "undecodable":
            data = b"this is not gzip"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        if fault.kind == "garbage":
            data = b'{"request_id": "trunc'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        return False

    def _record(self) -> None:
        self.server.fake.record(RecordedRequest(self.command, self.path, dict(self.headers.items()), time.monotonic()))

    # --- routes ------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self._record()
        path = self.path.split("?", 1)[0]
        fake = self.server.fake
        if path.startswith("/v1/models/"):
            started = time.monotonic()
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            queued = fake.behaviour.faults.get("submit")
            if queued and queued[0].kind in ("early", "answer_first"):  # a proxy that answers before reading the body
                fault = queued.pop(0)
                fake.count_submit_attempt()
                self.close_connection = True
                self._error(fault.status, None, f"refused early with HTTP {fault.status}", {"Connection": "close"})
                if fault.kind == "early":
                    self._drop()  # and hang up on the rest of the upload
                else:
                    self._read_body()  # and drain the upload, so the client reads the answer
                return
            with fake.upload_in_flight():
                body = self._read_body()
                if chunked and fake.behaviour.refuse_chunked:
                    fake.count_submit_attempt()
                    self._error(411, None, "Length Required")
                    return
                upload_s = time.monotonic() - started
                if self._authorised() is None:
                    return
                if path != MODEL_PATH:
                    self._error(400, "400001", "Unknown model id")
                    return
                self._submit(body, upload_s)
            return
        match = _REQUEST_PATH.match(path)
        if match and match.group(2) == "cancel":
            self._read_body()
            if self._authorised() is None:
                return
            fault = fake.behaviour.take_fault("cancel")
            if self._apply_fault(fault):
                return
            job = self._job_or_404(unquote(match.group(1)))
            if job is not None:
                self._reply(202, fake.cancel(job), fault)
            return
        self._error(404, None, "Not found")

    def _submit(self, body: bytes, upload_s: float) -> None:
        fake = self.server.fake
        received = time.monotonic()
        fake.count_submit_attempt()
        fault = fake.behaviour.take_fault("submit")
        if fault is not None and fault.kind == "http":
            self._apply_fault(fault)
            return
        try:
            payload = json.loads(body)
            colours = check_payload(payload, inspect_pixels=fake.behaviour.inspect_pixels)
        except (ValueError, SchemaViolation) as exc:
            self._error(422, None, f"Invalid input: {exc}")
            return
        token = self.headers["Authorization"][7:]
        try:
            job = fake.create_job(payload, colours, token)
        except _NoBalance:  # as RunComfy's own nodes expect it: HTTP 402
            self._error(402, None, "Insufficient balance")
            return
        job.body_bytes, job.upload_s, job.processing_s = len(body), upload_s, time.monotonic() - received
        if fault is not None and fault.kind not in _SHAPED:  # the job exists (it reached the service), but the answer goes wrong
            if fault.kind == "stall":
                time.sleep(fault.seconds)
            else:
                self._apply_fault(fault)
                return
        base = fake.base_url
        rid = job.request_id
        self._reply(
            200,
            {
                "request_id": rid,
                "status_url": f"{base}/requests/{rid}/status",
                "result_url": f"{base}/requests/{rid}/result",
                "cancel_url": f"{base}/requests/{rid}/cancel",
            },
            fault,
        )

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        path, _, query = self.path.partition("?")
        fake = self.server.fake
        if path.startswith("/loop/"):  # a redirect that never ends
            self.send_response(302)
            self.send_header("Location", path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file_match = _FILE_PATH.match(path)
        if file_match:
            self._serve_file(file_match.group(1), int(file_match.group(2)))
            return
        if self._authorised() is None:
            return
        if path == BALANCE_PATH and fake.behaviour.serves_balance:
            fault = fake.behaviour.take_fault("balance")
            if not self._apply_fault(fault):
                self._reply(200, {"balance_usd": round(fake.behaviour.balance_usd, 6), "currency": "USD"}, fault)
            return
        if path == MODEL_PATH:
            fault = fake.behaviour.take_fault("catalog")
            if not self._apply_fault(fault):
                self._reply(200, fake.catalog(), fault)
            return
        match = _REQUEST_PATH.match(path)
        if not match or match.group(2) == "cancel":
            self._error(404, None, "Not found")
            return
        kind = match.group(2)
        fault = fake.behaviour.take_fault(kind)
        if self._apply_fault(fault):
            return
        job = self._job_or_404(unquote(match.group(1)))
        if job is None:
            return
        if job.owner_token != self.headers["Authorization"][7:]:
            self._error(403, "403001", "Request belongs to another user")
        elif kind == "status":
            self._reply(200, fake.status_body(job), fault)
        else:
            self._reply(200, fake.result_body(job, include_cost="include_cost=true" in query), fault)

    def _job_or_404(self, request_id: str) -> Job | None:
        job = self.server.fake.jobs.get(request_id)
        if job is None:
            self._error(404, "404001", "Request not found or expired")
        return job

    def _serve_file(self, request_id: str, index: int) -> None:
        fake = self.server.fake
        fault = fake.behaviour.take_fault("file")
        if fault is not None and fault.kind == "body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(fault.body or b"")))
            self.end_headers()
            self.wfile.write(fault.body or b"")
            return
        if fault is not None and fault.kind != "truncate" and self._apply_fault(fault):
            return
        job = fake.jobs.get(request_id)
        if job is None or not 0 <= index < job.image_count or job.state()[0] != "completed":
            self._error(404, None, "No such file")
            return
        job.outputs_ready.wait(timeout=120)
        data = job.outputs[index] or b""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault is not None and fault.kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self._drop()
            return
        self.wfile.write(data)


class _NoBalance(Exception):
    pass


class _UplinkPacer:
    """Sleeps as bytes arrive so that, on average, they arrive no faster than the simulated uplink."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self.rate = bytes_per_s
        self.total = 0
        self.started = time.monotonic()

    def received(self, count: int) -> None:
        self.total += count
        if self.rate:
            lag = self.total / self.rate - (time.monotonic() - self.started)
            if lag > 0:
                time.sleep(lag)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeRunComfy) -> None:
        super().__init__(("127.0.0.1", fake.port), _Handler)
        self.fake = fake
        self.open_connections: set[Any] = set()
        self._wake, self._waker = socket.socketpair()  # a byte on `_waker` ends `serve` at once
        self._closing = False
        self._served = threading.Event()

    def serve(self) -> None:
        """Accept connections until `close_everything`. Like `serve_forever`, but woken at once to stop instead of
        noticing at its next poll (a wait at the end of every test otherwise)."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake, selectors.EVENT_READ)
                while not self._closing:
                    for key, _ in selector.select():
                        if key.fileobj is self and not self._closing:
                            self._handle_request_noblock()
                    self.service_actions()
        finally:
            self._served.set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_everything(self) -> None:
        """Stop listening and cut every open connection, as a crashed or restarted service would."""
        self._closing = True
        self._waker.send(b"\0")
        self._served.wait()
        self.server_close()
        self._wake.close()
        self._waker.close()
        for connection in list(self.open_connections):
            try:
                connection.shutdown(2)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that hung up (Stop, timeouts under test) is normal here
        super().handle_error(request, client_address)


class FakeRunComfy:
    """The fake service. `with FakeRunComfy() as fake:` then point the client at `fake.base_url`."""

    def __init__(self, behaviour: FakeBehaviour | None = None, *, port: int = 0) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        self.port = port
        self.valid_tokens = {self.behaviour.token}
        self.jobs: dict[str, Job] = {}
        self.requests: list[RecordedRequest] = []
        self.submit_attempts = 0
        self.uploads_in_flight = 0
        self.max_uploads_in_flight = 0
        self.cancel_calls = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeRunComfy:
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close_everything()
            self._server = None

    def refuse_connections(self, seconds: float) -> None:
        """Close the listening socket (connections are refused), then listen again on the same port with the
        same jobs after `seconds`: an outage as the client's network stack sees it."""
        self.stop()
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        timer.start()

    def __enter__(self) -> FakeRunComfy:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def serverless_base(self) -> str:
        """What RUNCOMFY_SERVERLESS_API_BASE is set to, to read the balance here."""
        return f"{self.origin}{SERVERLESS_PREFIX}"

    @property
    def token(self) -> str:
        """The token this service accepts."""
        return self.behaviour.token

    # --- state -------------------------------------------------------------------------------

    @property
    def submits(self) -> int:
        """Jobs created: each one would be paid for."""
        return len(self.jobs)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    @contextlib.contextmanager
    def upload_in_flight(self) -> Iterator[None]:
        """Counts submits being received or answered at once (`max_uploads_in_flight`: the most seen)."""
        with self._lock:
            self.uploads_in_flight += 1
            self.max_uploads_in_flight = max(self.max_uploads_in_flight, self.uploads_in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.uploads_in_flight -= 1

    def count_submit_attempt(self) -> None:
        with self._lock:
            self.submit_attempts += 1

    def create_job(self, payload: dict, colours: list[tuple[int, int, int]], token: str) -> Job:
        """A job, its cost taken from the balance; `_NoBalance` when its maximum price passes the balance."""
        with self._lock:
            if most_images(payload) * self.behaviour.price_per_image_usd > self.behaviour.balance_usd + 1e-9:
                raise _NoBalance()
            job = new_job(payload, colours, token, self.behaviour)
            self.behaviour.balance_usd -= job.cost_usd
            self.jobs[job.request_id] = job
            return job

    def cancel(self, job: Job) -> dict[str, Any]:
        with self._lock:
            self.cancel_calls += 1
            state, _ = job.state()
            if state == "in_queue":
                job.cancelled = True
                self.behaviour.balance_usd += job.cost_usd  # a cancelled job is not charged
                return {"request_id": job.request_id, "status": "cancelled", "outcome": "cancelled"}
            return {"request_id": job.request_id, "status": state, "outcome": "not_cancellable"}

    def status_body(self, job: Job) -> dict[str, Any]:
        state, position = job.state()
        if state == "completed" and job.noticed_done_at is None:
            job.noticed_done_at = time.monotonic()
        body: dict[str, Any] = {
            "request_id": job.request_id,
            "status": state,
            "status_url": f"{self.base_url}/requests/{job.request_id}/status",
            "result_url": f"{self.base_url}/requests/{job.request_id}/result",
        }
        if position is not None:
            body["queue_position"] = position
        if state == "in_queue":
            body.update(self.behaviour.status_fields)
        return body

    def result_body(self, job: Job, *, include_cost: bool) -> dict[str, Any]:
        state, _ = job.state()
        body: dict[str, Any] = {"request_id": job.request_id, "created_at": job.created}
        if state != "completed":
            body["status"] = state
            return body
        body["finished_at"] = job.done_at
        if job.fail_with is not None:
            body.update(status="failed", error=job.fail_with)
            return body
        body["status"] = "succeeded"
        urls = [f"{self.origin}/files/{job.request_id}/{i}.png" for i in range(job.image_count)]
        urls += urls[:1] * self.behaviour.listed_again
        body["output"] = {"images": self.behaviour.result_urls or urls}
        if include_cost:
            body["cost"] = job.cost_usd
        body.update(self.behaviour.result_fields)
        return body

    def catalog(self) -> dict[str, Any]:
        return {
            "model_id": "bytedance/seedream-4-0/edit-sequential",
            "base_price_usd": self.behaviour.price_per_image_usd,
            "price_unit": "image",
            "pricing_note": "Charged per generated image (local fake service).",
            "input_schema": {},
        }

    def requests_to(self, prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]
