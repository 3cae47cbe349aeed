"""Fetching result images safely and in parallel.

Only https URLs are fetched (plus the configured API host, so a local test
service works), redirects are checked hop by hop, files are size-capped, no
Authorization header is ever sent, and decoding refuses decompression bombs.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DownloadError
from .parallel import worker_count
from .retry import RetryPolicy, parse_retry_after
from .schema import is_private_host

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_PIXELS = 40_000_000  # the largest Seedream output is ~4.2 MP; anything far beyond is hostile
DEFAULT_CONCURRENCY = 4
DOWNLOAD_TIMEOUT_S = 30.0  # per read: a stalled CDN connection is retried after this
DOWNLOAD_RETRY = RetryPolicy(max_attempts=4, budget_s=30.0, base_delay_s=0.5, max_delay_s=5.0)

ProgressCallback = Callable[[int, int], None]


PlaceImage = Callable[[int, np.ndarray], None]  # (index, uint8 RGB) -> None, called from a worker thread


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts result files may come from."""

    trusted_origin: tuple[str, str, int | None] | None = None  # (scheme, host, port) of the API base

    @classmethod
    def for_base_url(cls, base_url: str) -> UrlPolicy:
        parts = urlsplit(base_url)
        return cls((parts.scheme.lower(), (parts.hostname or "").lower(), parts.port))

    def check(self, url: str, label: str) -> None:
        try:
            parts = urlsplit(url)
            origin = (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
        except ValueError:
            raise DownloadError(f"{label}: the service returned a malformed URL.") from None
        if self.trusted_origin is not None and origin == self.trusted_origin:
            return
        if origin[0] != "https":
            raise DownloadError(f"{label}: refusing to download {_shown(url)}: only https result URLs are fetched.")
        if not origin[1] or is_private_host(origin[1]):
            raise DownloadError(f"{label}: refusing to download from {origin[1] or 'an empty host'}: not a public host.")


def _shown(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:120]  # no query: it may hold a signature


def decode_image(data: bytes, label: str, *, max_pixels: int = MAX_OUTPUT_PIXELS) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> uint8 RGB (H, W, 3) (read-only), refusing non-images and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DownloadError(
                        f"{label} claims to be {width}x{height} px, beyond the {max_pixels:,} px safety limit; not decoded."
                    )
                return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except DownloadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        kind = "too large to decode safely" if "ecompression" in type(exc).__name__ else "not an image"
        raise DownloadError(f"{label} is {kind}.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DownloadError(f"{label} is a damaged image file ({type(exc).__name__}).") from None


class ResultDownloader:
    """Downloads and decodes result images with bounded parallelism."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_bytes: int | None = None,
        retry: RetryPolicy = DOWNLOAD_RETRY,
        timeout_s: float | None = None,
    ) -> None:
        self.policy = policy
        self.concurrency = concurrency
        self.max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
        self.retry = retry
        self.timeout_s = DOWNLOAD_TIMEOUT_S if timeout_s is None else timeout_s

    async def fetch_all(self, urls: Sequence[str], place: PlaceImage, on_progress: ProgressCallback | None = None) -> list[bytes]:
        """Download every URL, decode each file in a worker thread and hand its pixels to `place(index, pixels)`.

        Returns the files as served, in the order of `urls`; `on_progress(done, total)` after each one.
        """
        for index, url in enumerate(urls, start=1):
            self.policy.check(url, f"Result image {index}")
        gate = asyncio.Semaphore(self.concurrency)
        decoders = asyncio.Semaphore(worker_count(len(urls)))  # one decode per core: more only adds memory
        done = 0

        async def check_hop(request: httpx.Request) -> None:
            self.policy.check(str(request.url), "A redirect of a result image")

        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=True,
            max_redirects=5,
            event_hooks={"request": [check_hop]},
        ) as http:

            def decode_and_place(index: int, data: bytes, label: str) -> None:
                place(index - 1, decode_image(data, label))

            async def one(index: int, url: str) -> bytes:
                nonlocal done
                label = f"Result image {index}"
                async with gate:
                    data = await self._fetch_bytes(http, url, label)
                async with decoders:
                    await asyncio.to_thread(decode_and_place, index, data, label)
                done += 1
                if on_progress is not None:
                    on_progress(done, len(urls))
                return data

            tasks = [asyncio.ensure_future(one(i, url)) for i, url in enumerate(urls, start=1)]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_bytes(self, http: httpx.AsyncClient, url: str, label: str) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            delay: float | None = None
            try:
                async with http.stream("GET", url) as response:
                    status = response.status_code
                    if status == 200:
                        return await self._read_capped(response, label)
                    if status in (404, 410, 403):
                        raise DownloadError(
                            f"{label} is no longer available (HTTP {status}); result links expire after about a "
                            "day. Run the node again to generate new images (a new, charged job)."
                        )
                    problem = f"HTTP {status}"
                    if status == 429:
                        delay = parse_retry_after(response.headers.get("Retry-After"))
                    elif status < 500:
                        raise DownloadError(f"{label} could not be downloaded (HTTP {status}).")
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            if attempt >= self.retry.max_attempts:
                raise DownloadError(f"{label} could not be downloaded after {attempt} tries ({problem}).", transient=True)
            await asyncio.sleep(self.retry.backoff(attempt) if delay is None else min(delay, self.retry.max_delay_s))

    async def _read_capped(self, response: httpx.Response, label: str) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise DownloadError(
                f"{label} is {int(declared) / 2**20:.0f} MiB, over the {self.max_bytes / 2**20:.0f} MiB limit; not downloaded."
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self.max_bytes:
                raise DownloadError(f"{label} is over the {self.max_bytes / 2**20:.0f} MiB limit; download stopped.")
            chunks.append(chunk)
        return b"".join(chunks)
