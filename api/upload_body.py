"""The submit body, streamed while the references are PNG-encoded in worker threads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from .parallel import worker_count
from .progress import ProgressReporter
from .references import EncodedReference, PngSettings, PreparedReference, encode_reference
from .schema import MAX_BODY_BYTES, MAX_REFERENCE_BYTES, EditSequentialRequest

BODY_SLACK_BYTES = 64 * 1024  # room for the prompt and the other fields


def per_reference_byte_limit(data_reference_count: int) -> int:
    """Each PNG must be under 10 MB, and all of them base64-encoded must fit in one request body."""
    if data_reference_count == 0:
        return MAX_REFERENCE_BYTES - 1
    share = (MAX_BODY_BYTES - BODY_SLACK_BYTES) * 3 // 4 // data_reference_count
    return min(MAX_REFERENCE_BYTES - 1, share)


class StreamedReferences:
    """The submit body, produced while the references are PNG-encoded in worker threads.

    All references start encoding at once; the body yields each one as soon as it and
    the ones before it are ready, so uploading overlaps encoding.
    """

    def __init__(
        self,
        prepared: Sequence[PreparedReference],
        urls: Sequence[str],
        request: EditSequentialRequest,
        png: PngSettings,
        report: ProgressReporter,
        notes: list[str],
    ) -> None:
        self.urls = list(urls)
        self.fields_json = request.fields_json()
        self._pool = ThreadPoolExecutor(max_workers=worker_count(len(prepared)), thread_name_prefix="runcomfy-encode")
        loop = asyncio.get_running_loop()
        limit = per_reference_byte_limit(len(prepared))
        total = len(prepared)
        self._done = 0
        for ref in prepared:
            notes.extend(f"{ref.label}: {note}" for note in ref.notes)

        def encoded_one(future: asyncio.Future) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            encoded: EncodedReference = future.result()
            self._done += 1
            fresh = [note for note in encoded.notes if note.startswith("downscaled")]
            notes.extend(f"{encoded.label}: {note}" for note in fresh)
            extra = f" ({encoded.label}: {'; '.join(fresh)})" if fresh else ""
            report(f"Encoding and uploading references {self._done}/{total}{extra}", 0.03 + 0.07 * self._done / total)

        if total:
            report(f"Encoding and uploading references 0/{total}", 0.03)
        self._futures = [
            loop.run_in_executor(self._pool, lambda ref=ref: encode_reference(ref, max_file_bytes=limit, png=png)) for ref in prepared
        ]
        for future in self._futures:
            future.add_done_callback(encoded_one)

    async def pieces(self) -> AsyncIterator[bytes]:
        yield b'{"images":['
        first = True
        for future in self._futures:
            encoded: EncodedReference = await future
            yield (b"" if first else b",") + b'"' + encoded.uri.prefix
            yield encoded.uri.base64  # base64 needs no JSON escaping
            yield b'"'
            first = False
        for url in self.urls:
            yield (b"" if first else b",") + json.dumps(url).encode("utf-8")
            first = False
        yield b"]," + self.fields_json[1:]

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        self._futures = []
        self._pool.shutdown(wait=False, cancel_futures=True)
