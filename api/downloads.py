"""Result images: fetched safely and in parallel, then decoded into one batch within a memory budget.

Invariants this module owns:

- Result URLs are judged by the address they resolve to. Loopback, private, link-local,
  multicast, reserved and unspecified addresses are refused, whatever the spelling
  (`https://2130706433/`, `https://127.1/`, a name that resolves to 127.0.0.1), unless the
  URL is on the configured API base's own origin (a local test service). The check is
  repeated for every redirect hop; more than 5 hops (a loop) is a `DownloadError`. Each of these
  refusals is collectable: the paid job stays on record, and a re-run from a network that can fetch it pays nothing.
  So is any HTTP answer no rule below names (a redirect without a Location, a proxy's 407, a 400): only a file
  that arrives and can never be used (not an image, over the size cap) ends the job's record.
- Only https is fetched (plus the API base's origin), never with an Authorization header.
- Files are size-capped, and decoding refuses decompression bombs.
- A 200 answer that is a web page (text/html, or a body that opens as HTML: a proxy's block page, a login
  page) is not the file: it is refused as collectable, never saved or decoded, so the paid job stays on
  record and running again collects it without paying.
- Transient trouble (5xx, 429, resets, truncated files, DNS hiccups) is retried until the
  overall download deadline; links that answer 403/404/410, or 200 without a byte, are tried `GONE_TRIES` times
  (a fresh link can fail for a moment), then reported as transient: the paid job stays
  recorded, so a re-run asks RunComfy for the result again. Every error carries the request id.
  These rules live in `classify_download`, a pure function of what one GET came to (`Fetched`);
  the waiting is `retries.with_retries`, the loop the API client uses too.
- The batch is float32 [B, H, W, 3] in 0..1. Its canvas is planned from the files' headers
  before any pixel is decoded: the largest height and width of the set. Smaller images are
  centred on black (never stretched); when sizes differ, each is also kept at its native
  size for `image_list`. `max_bytes` bounds the canvas and the native copies together:
  beyond it (two large results of opposite aspect can ask for tens of GiB of padding), the
  native copies get up to three quarters of the budget and the canvas the rest, and images
  that do not fit are scaled down, aspect kept. The largest legitimate Seedream set (15
  images of mixed sizes, about 2.1 GiB) fits the default budget untouched. A batch that cannot
  be allocated at all is assembled again within `SMALL_BATCH_BYTES`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import mmap
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image, UnidentifiedImageError

from .addresses import is_private_host, is_public_address
from .client import Done, Fail, Retry, RetryPolicy, Verdict, opens_as_html_page, parse_retry_after, with_retries
from .config import DEFAULT_BATCH_BYTES, MAX_DOWNLOAD_BYTES, proxy_for
from .errors import DownloadError
from .events import Phase, say
from .shared import map_in_threads, tls_context

MAX_OUTPUT_PIXELS = 40_000_000  # the largest Seedream output is ~4.2 MP; anything far beyond is hostile
DEFAULT_CONCURRENCY = 4
DOWNLOAD_READ_TIMEOUT_S = 30.0  # per read: a stalled CDN connection is retried after this
DOWNLOAD_DEADLINE_S = 600.0  # all files of one job
DOWNLOAD_RETRY = RetryPolicy.until_deadline(base_delay_s=0.5, max_delay_s=10.0)
MAX_REDIRECTS = 5
SMALL_BATCH_BYTES = 256 * 1024**2  # the second try when the batch could not be allocated
GONE_TRIES = 3
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8", b"II*\0", b"MM\0*")  # PNG, JPEG, WebP, GIF, TIFF
ISO_MEDIA_IMAGES = (b"ftypavif", b"ftypavis", b"ftypheic", b"ftypheix", b"ftypmif1")  # AVIF and HEIF, at byte 4
PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})  # a page for a browser (a proxy's block or login page)
LINK_GONE_STATUSES = frozenset({403, 404, 410})  # a link that may have expired (or is not ready yet)

Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> IP addresses
T = TypeVar("T")


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, as the connection would see them (numeric forms included)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """Which places result files may come from."""

    trusted_origin: tuple[str, str, int | None] | None = None  # (scheme, host, port) of the API base
    resolve: Resolver = field(default=resolve_host, repr=False, compare=False)

    @classmethod
    def for_base_url(cls, base_url: str, *, resolve: Resolver = resolve_host) -> UrlPolicy:
        parts = urlsplit(base_url)
        return cls((parts.scheme.lower(), (parts.hostname or "").lower(), parts.port), resolve)

    def _origin(self, url: str, label: str, request_id: str | None = None) -> tuple[str, str, int | None]:
        if not isinstance(url, str) or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
            raise _refused(f"{label}: the service returned a URL with a space or control character in it; not downloaded.", request_id)
        try:
            parts = urlsplit(url)
            return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise _refused(f"{label}: the service returned a malformed URL.", request_id) from None

    def check_form(self, url: str, label: str, *, request_id: str | None = None) -> None:
        """Scheme and host, without any network look-up."""
        scheme, host, _ = origin = self._origin(url, label, request_id)
        if self.trusted_origin is not None and origin == self.trusted_origin:
            return
        if scheme != "https":
            raise _refused(f"{label}: refusing to download {_shown(url)}: only https result URLs are fetched.", request_id)
        if not host:
            raise _refused(f"{label}: refusing to download from an empty host.", request_id)
        if is_private_host(host):  # by name or by its literal address, before any look-up ("localhost.", fe80::1%eth0)
            raise _refused(f"{label}: refusing to download from {host}: not a public host.", request_id)
        if "%" in host:  # a percent-encoded name: no public host is spelled so
            raise _refused(f"{label}: refusing to download from {host}: the host name is malformed.", request_id)

    async def check(self, url: str, label: str, *, request_id: str | None = None) -> None:
        """`check_form`, then every address the host resolves to must be a public one."""
        self.check_form(url, label, request_id=request_id)
        scheme, host, port = origin = self._origin(url, label, request_id)
        if self.trusted_origin is not None and origin == self.trusted_origin:
            return
        try:
            addresses = await self.resolve(host, port or 443)
        except (OSError, UnicodeError) as exc:
            failure = DownloadError(f"{label}: could not look up {host} ({type(exc).__name__}).", request_id=request_id, transient=True)
            raise failure from None
        refused = [address for address in addresses if not is_public_address(address)]
        if refused or not addresses:
            shown = refused[0] if refused else "no address"
            raise _refused(
                f"{label}: refusing to download from {host} ({shown}): not a public host, as seen from this machine "
                "(a DNS filter that blocks a host answers so).",
                request_id,
            )


def _refused(message: str, request_id: str | None) -> DownloadError:
    """This machine will not fetch the file. The job is paid and its result stays collectable: only the fetch was refused."""
    return DownloadError(message, request_id=request_id, collectable=True)


def _a_page(content_type: str, data: bytes) -> str | None:
    """What a 200 answer is when it is a web page instead of the file (a proxy's block page, a login page), else None.
    A body that opens as an image is the file, whatever its label says."""
    if opens_as_html_page(data):
        return "an HTML page"
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type if media_type in PAGE_TYPES and not opens_as_image(data) else None


def opens_as_image(data: bytes) -> bool:
    """Whether `data` starts with the signature of an image format the decoder reads (a BMP: "BM", its size, four zeros)."""
    bmp = data.startswith(b"BM") and data[6:10] == b"\0\0\0\0"
    return data.startswith(IMAGE_SIGNATURES) or data[4:12] in ISO_MEDIA_IMAGES or bmp


def _shown(url: str) -> str:
    """The URL as a message may show it: no user name or password, no query (it may hold a signature)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"[:120]


def _decode_errors(label: str, exc: Exception) -> DownloadError:
    if isinstance(exc, (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning)):
        kind = "too large to decode safely" if "ecompression" in type(exc).__name__ else "not an image"
        return DownloadError(f"{label} is {kind}.")
    return DownloadError(f"{label} is a damaged image file ({type(exc).__name__}).")


def _read_image(data: bytes, label: str, max_pixels: int, read: Callable[[Image.Image], T]) -> T:
    """`read(image)` of a file whose header claims at most `max_pixels`, refusing non-images and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    beyond = f"beyond the {max_pixels:,} px safety limit"
                    raise DownloadError(f"{label} claims to be {width}x{height} px, {beyond}; not decoded.")
                return read(image)
    except DownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises on a hostile file is "not usable"
        failure = _decode_errors(label, exc)
    raise failure


def image_size(data: bytes, label: str, *, max_pixels: int = MAX_OUTPUT_PIXELS) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    return _read_image(data, label, max_pixels, lambda image: (image.size[1], image.size[0]))


def decode_image(data: bytes, label: str, *, max_pixels: int = MAX_OUTPUT_PIXELS) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> uint8 RGB (H, W, 3) (read-only)."""
    return _read_image(data, label, max_pixels, lambda image: np.asarray(image if image.mode == "RGB" else image.convert("RGB")))


@dataclass(frozen=True)
class Fetched:
    """What one GET of a result file came to, as plain data; `classify_download` says what it means."""

    data: bytes | None = None  # the whole file: HTTP 200, within the size cap
    status: int | None = None  # any other HTTP answer (redirects are followed before this)
    retry_after: float | None = None  # seconds, from that answer's Retry-After
    transport: str | None = None  # the network failure's name (a reset, a timeout, a truncated file)
    refused: DownloadError | None = None  # already decided: a redirect hop's check, the size cap, a redirect loop


def classify_download(fetched: Fetched, tries: int, *, label: str, request_id: str | None) -> Verdict[bytes]:
    """What the `tries`-th GET of a result file comes to (see the module docstring). A pure function."""

    def retry(problem: str, retry_after: float | None = None) -> Retry:
        exhausted = DownloadError(
            f"{label} could not be downloaded after {tries} tries ({problem}).", request_id=request_id, transient=True
        )
        return Retry(problem, exhausted, retry_after=retry_after)

    if fetched.data is not None:
        if fetched.data:
            return Done(fetched.data)
        empty = DownloadError(  # nothing arrived: it says nothing about the images, so the paid job stays collectable
            f"{label} arrived empty (HTTP 200 without a byte), as a link that is not ready yet or a proxy that drops the file does.",
            request_id=request_id,
            transient=True,
        )
        return Fail(empty) if tries >= GONE_TRIES else retry(str(empty))
    if fetched.refused is not None:  # a transient one: a DNS hiccup while checking a hop
        return retry(str(fetched.refused)) if fetched.refused.transient else Fail(fetched.refused)
    if fetched.transport is not None or fetched.status is None:
        return retry(fetched.transport or "no answer")
    status = fetched.status
    if status in LINK_GONE_STATUSES:
        gone = DownloadError(
            f"{label} is not available (HTTP {status}). A link can fail for a moment right after a job "
            "finishes, or for good once it expires. If running the node again with the same inputs "
            "fails the same way, the links have expired: change the seed for a new, charged job.",
            request_id=request_id,
            transient=True,  # asking RunComfy for the result again may give working links
        )
        return Fail(gone) if tries >= GONE_TRIES else retry(str(gone))
    if status == 429 or status >= 500:
        return retry(f"HTTP {status}", fetched.retry_after)
    # Any other answer (a redirect without a Location, a proxy asking for its password, a 400) is about the way to the
    # file, not the images: the paid job stays collectable.
    return Fail(_refused(f"{label} could not be downloaded (HTTP {status}).", request_id))


@dataclass(frozen=True)
class ResultDownloader:
    """Downloads result files with bounded parallelism, within one overall deadline."""

    policy: UrlPolicy
    _: KW_ONLY
    concurrency: int = DEFAULT_CONCURRENCY
    max_bytes: int = MAX_DOWNLOAD_BYTES
    retry: RetryPolicy = DOWNLOAD_RETRY
    read_timeout_s: float = DOWNLOAD_READ_TIMEOUT_S
    deadline_s: float = DOWNLOAD_DEADLINE_S

    async def fetch_all(self, urls: Sequence[str], *, request_id: str | None = None) -> list[bytes]:
        """Every file as served, in the order of `urls`, saying how many are done."""
        for index, url in enumerate(urls, start=1):
            self.policy.check_form(url, f"Result image {index}", request_id=request_id)
        gate = asyncio.Semaphore(self.concurrency)
        done = 0

        async def check_hop(request: httpx.Request) -> None:
            await self.policy.check(str(request.url), "A result image or one of its redirects", request_id=request_id)

        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.read_timeout_s),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [check_hop]},
            verify=tls_context(),
        ) as http:

            async def one(index: int, url: str) -> bytes:
                nonlocal done
                async with gate:
                    data = await self._fetch_bytes(http, url, f"Result image {index}", request_id)
                done += 1
                say(f"Downloading {done}/{len(urls)}", Phase.DOWNLOADING, done / len(urls))
                return data

            tasks = [asyncio.ensure_future(one(i, url)) for i, url in enumerate(urls, start=1)]
            try:
                finished, _ = await asyncio.wait(tasks, timeout=self.deadline_s, return_when=asyncio.FIRST_EXCEPTION)
                for task in finished:
                    if task.exception() is not None:
                        raise task.exception()
                if len(finished) < len(tasks):
                    raise DownloadError(
                        f"The result images did not all download within {self.deadline_s:.0f} s.", request_id=request_id, transient=True
                    )
                return [task.result() for task in tasks]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_bytes(self, http: httpx.AsyncClient, url: str, label: str, request_id: str | None) -> bytes:
        classify = functools.partial(classify_download, label=label, request_id=request_id)
        return await with_retries(lambda: self._get_once(http, url, label, request_id), classify, self.retry)

    async def _get_once(self, http: httpx.AsyncClient, url: str, label: str, request_id: str | None) -> Fetched:
        """One GET of the file, and what came of it. No httpx exception leaves here, and none is kept."""
        try:
            async with http.stream("GET", url) as response:
                if response.status_code == 200:
                    data = await self._read_capped(response, label, request_id)
                    page = _a_page(response.headers.get("Content-Type", ""), data)
                    if page is None:
                        return Fetched(data=data)
                    # Not the file: something between this machine and the file answered. The job is paid and its result
                    # stays collectable; nothing of the page is kept or decoded.
                    return Fetched(
                        refused=_refused(
                            f"{label}: the download answered with a web page ({page}), not an image, as a proxy, a filter or a "
                            "login page in front of the file does.",
                            request_id,
                        )
                    )
                return Fetched(status=response.status_code, retry_after=parse_retry_after(response.headers.get("Retry-After")))
        except DownloadError as refused:  # from a redirect hop's check or the size cap, with the request id
            return Fetched(refused=refused)
        except httpx.TooManyRedirects:
            # Network trouble between this machine and the file (a proxy or a CDN going in circles), as a refused host is:
            # it says nothing about the images, so the paid job stays collectable.
            loop = f"{label}: more than {MAX_REDIRECTS} redirects (a redirect loop, as a proxy or a filter in front of the file gives)"
            return Fetched(refused=_refused(f"{loop}; not downloaded.", request_id))
        except httpx.TransportError as exc:
            proxy = proxy_for(url)  # trouble reaching a proxy is named as such, never with its credentials
            return Fetched(transport=type(exc).__name__ + (f" through {proxy}" if proxy is not None else ""))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # an invalid redirect target and the like
            return Fetched(refused=_refused(f"{label} could not be downloaded ({type(exc).__name__}).", request_id))
        except ValueError as exc:  # a host no name encoding allows (https://xn--n3h/, IDNA's UnicodeError), here or in a hop
            return Fetched(
                refused=_refused(f"{label}: the service returned a URL whose host is malformed ({type(exc).__name__}).", request_id)
            )

    async def _read_capped(self, response: httpx.Response, label: str, request_id: str | None) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise DownloadError(
                f"{label} is {int(declared) / 2**20:.0f} MiB, over the {self.max_bytes / 2**20:.0f} MiB limit; not downloaded.",
                request_id=request_id,
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self.max_bytes:
                raise DownloadError(f"{label} is over the {self.max_bytes / 2**20:.0f} MiB limit; download stopped.", request_id=request_id)
            chunks.append(chunk)
        return b"".join(chunks)


# --- the batch ---------------------------------------------------------------------------------

_SCALE = np.float32(1.0 / 255.0)
_BYTES_PER_PIXEL = 3 * 4  # float32 RGB
_PLAIN_PAGES_FROM = 4 * 2**20  # numpy asks for transparent huge pages from this size on
_PLAIN_PAGES = sys.platform.startswith("linux") and hasattr(mmap, "MAP_PRIVATE")


def _zeroed(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-filled float32 array for pixels that are written once: on Linux, in ordinary 4 KiB pages.

    numpy marks large arrays for transparent huge pages, and with the common `madvise` setting
    the kernel may compact memory on the first touch of each one: writing a fresh 600 MiB batch
    took 0.7-1.2 s on the bench machine, against 0.12-0.21 s in plain pages (the pages of an
    anonymous private mapping, zeroed by the kernel). Huge pages buy nothing for a buffer written
    once and read a few times. An array that cannot be had is a `MemoryError`, as from numpy.
    """
    nbytes = math.prod(shape) * 4
    if not _PLAIN_PAGES or nbytes < _PLAIN_PAGES_FROM:
        return np.zeros(shape, dtype=np.float32)
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        raise MemoryError(f"cannot map {nbytes / 2**20:.0f} MiB for the images") from exc
    return np.frombuffer(buffer, dtype=np.float32).reshape(shape)  # the array keeps the mapping; unmapped with it


class ImageBatch:
    def __init__(self, sizes: Sequence[tuple[int, int]], *, max_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        """`sizes`: (height, width) of each image, from its header."""
        self.count = len(sizes)
        self.native_sizes = list(sizes)
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        canvas_bytes = self.count * height * width * _BYTES_PER_PIXEL
        self.keeps_natives = len(set(sizes)) > 1 or canvas_bytes > max_bytes
        self.list_sizes = list(sizes)
        canvas_budget = max_bytes
        if self.keeps_natives:
            natives = sum(h * w for h, w in sizes) * _BYTES_PER_PIXEL
            allowed = min(natives, max_bytes * 3 // 4)  # image_list keeps native sizes first; the canvas gets the rest
            if natives > allowed:
                shrink = math.sqrt(allowed / natives)
                self.list_sizes = [(max(1, math.floor(h * shrink)), max(1, math.floor(w * shrink))) for h, w in sizes]
            canvas_budget = max_bytes - allowed
        per_image = max(1, canvas_budget // max(1, self.count * _BYTES_PER_PIXEL))
        if height * width > per_image:
            shrink = math.sqrt(per_image / (height * width))
            height, width = max(1, math.floor(height * shrink)), max(1, math.floor(width * shrink))
        self.sizes = [_fit(size, height, width) for size in sizes]
        self.padded = any(size != (height, width) for size in self.sizes)
        self._canvas = _zeroed((self.count, height, width, 3))
        self._natives: list[np.ndarray | None] = [None] * self.count
        self._placed = [False] * self.count
        self._lock = threading.Lock()

    @property
    def shrunk(self) -> list[int]:
        """Indexes of the images that were scaled down to fit the batch."""
        return [i for i, (native, fitted) in enumerate(zip(self.native_sizes, self.sizes, strict=True)) if native != fitted]

    @property
    def list_shrunk(self) -> bool:
        """True when even the one-by-one images had to be scaled down (only for sets far beyond Seedream's sizes)."""
        return self.list_sizes != self.native_sizes

    def place(self, index: int, pixels: np.ndarray) -> None:
        """Convert uint8 RGB (h, w, 3) into slot `index`, scaled down first if the batch needs it (thread-safe:
        each slot is written by one thread)."""
        if pixels.shape[:2] != self.native_sizes[index]:
            raise ValueError(f"image {index + 1} is {pixels.shape[1]}x{pixels.shape[0]}, its header said otherwise")
        if self.keeps_natives:  # image_list needs each image apart from the batch
            listed = _resized(pixels, self.list_sizes[index])
            native = _zeroed(listed.shape)
            np.multiply(listed, _SCALE, out=native, dtype=np.float32)
            self._natives[index] = native
        np.multiply(_resized(pixels, self.sizes[index]), _SCALE, out=self._slot(index), dtype=np.float32)
        with self._lock:
            self._placed[index] = True

    def _slot(self, index: int) -> np.ndarray:
        height, width = self.sizes[index]
        top, left = (self._canvas.shape[1] - height) // 2, (self._canvas.shape[2] - width) // 2
        return self._canvas[index, top : top + height, left : left + width]

    def array(self) -> np.ndarray:
        if not all(self._placed):
            raise ValueError("not every image has been placed")
        return self._canvas

    def native(self, index: int) -> np.ndarray:
        """Image `index` at its own size (a view of the batch when every image has the batch's size; scaled down
        only when `list_shrunk`)."""
        self.array()
        native = self._natives[index]
        return native if native is not None else self._slot(index)


def _resized(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if pixels.shape[:2] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def _fit(size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """`size` scaled down (aspect kept) to fit inside height x width; unchanged if it fits."""
    h, w = size
    scale = min(1.0, height / h, width / w)
    if scale >= 1.0:
        return h, w
    return max(1, min(height, math.floor(h * scale))), max(1, min(width, math.floor(w * scale)))


@dataclass(frozen=True)
class Assembled:
    images: ImageBatch
    notes: tuple[str, ...] = ()  # what the user should know about the batch
    warning: str | None = None  # local trouble the run went on despite


async def assemble(files: Sequence[bytes], *, label: str, max_bytes: int = DEFAULT_BATCH_BYTES) -> Assembled:
    """Decode every file into one batch within `max_bytes`, one decode per core.

    A file that is not a usable image is a `DownloadError` (without a request id: the caller knows it).
    """
    labels = [f"{label} {index}" for index in range(1, len(files) + 1)]
    sizes = await asyncio.to_thread(lambda: [image_size(data, name) for data, name in zip(files, labels, strict=True)])

    async def decode_into(batch: ImageBatch) -> ImageBatch:
        await map_in_threads(lambda i: batch.place(i, decode_image(files[i], labels[i])), range(len(files)), name="runcomfy-decode")
        return batch

    warning = None
    budget = max_bytes
    try:
        batch = await decode_into(ImageBatch(sizes, max_bytes=budget))
    except MemoryError:
        if max_bytes <= SMALL_BATCH_BYTES:
            raise
        budget = SMALL_BATCH_BYTES
        batch = await decode_into(ImageBatch(sizes, max_bytes=budget))
        warning = "not enough memory for the full-size outputs; they were assembled smaller"
    notes = []
    if batch.shrunk:
        batch_h, batch_w = batch.array().shape[1:3]
        listed = "image_list is scaled down too" if batch.list_shrunk else "image_list keeps native sizes"
        notes.append(
            f"{len(batch.shrunk)} image(s) scaled down to fit the outputs' {budget // 2**20} MiB memory "
            f"budget ({batch_w}x{batch_h} canvas, aspect kept); {listed}"
        )
    return Assembled(batch, tuple(notes), warning)
