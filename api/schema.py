"""The input schema of bytedance/seedream-4-0/edit-sequential: its rules, and the one request type.

Every rule of the published schema lives here once, so the node and scripts agree on
it; exactly the schema, no stricter and no looser. (The local fake service checks
submits against its own, independent reading of the spec.) Checks raise `InputError`
naming the field, the limit and the fix; nothing is sent when one fails.
`EditSequentialRequest` owns the wire format, including the body.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .addresses import is_private_host
from .errors import InputError
from .prompt_count import count_sentence, stated_counts, stated_image_counts, writes_chinese
from .wording import plural, shorten

MODEL_ID = "bytedance/seedream-4-0/edit-sequential"

IMAGE_SIZES: tuple[str, ...] = (
    "2048:2048 (1:1)",
    "2304:1728 (4:3)",
    "1728:2304 (3:4)",
    "2560:1440 (16:9)",
    "1440:2560 (9:16)",
    "2496:1664 (3:2)",
    "1664:2496 (2:3)",
    "3024:1296 (21:9)",
)
DEFAULT_IMAGE_SIZE = "2560:1440 (16:9)"
OPTIMIZE_PROMPT_OPTIONS: tuple[str, ...] = ("fast", "standard")
COUNT_IN_PROMPT_MODES: tuple[str, ...] = ("add if missing", "as written")  # not a schema field: how the prompt is sent
SEQUENTIAL_MODES: tuple[str, ...] = ("auto", "disabled")

MAX_REFERENCES = 10
MAX_TOTAL_IMAGES = 15  # references + generated images, when sequential generation is "auto"
MAX_IMAGES_LIMIT = 15
DEFAULT_MAX_IMAGES = 3
MAX_PROMPT_CHARS = 600
SEED_MAX = 2_147_483_647
MIN_SIDE_EXCLUSIVE = 14  # each side must be > 14 px
MAX_SIDE_EXCLUSIVE = 6000  # each side must be < 6000 px
MIN_ASPECT_EXCLUSIVE = 0.33  # width / height must be > 0.33 (so exactly 1:3 is accepted) ...
MAX_ASPECT_EXCLUSIVE = 3.0  # ... and < 3 (so exactly 3:1 is refused), as the schema says
MAX_REFERENCE_BYTES = 10_000_000  # each file under 10 MB
MAX_BODY_BYTES = 64 * 1024 * 1024  # keep the submit body under what RunComfy's own nodes send


def check_prompt(text: Any) -> str:
    if text is not None and not isinstance(text, str):
        raise InputError("prompt", f"is a {type(text).__name__}; give the prompt as text.")
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            "prompt",
            "is empty. Describe the images you want and say how many, e.g. 'Generate 3 images of this character in different poses'.",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as bad:
        raise InputError(
            "prompt",
            f"contains a character that cannot be sent (an unpaired surrogate at position {bad.start}), "
            "usually from a broken copy and paste. Retype or delete the text around it.",
        ) from None
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            "prompt",
            f"has {len(text)} characters; the model accepts at most {MAX_PROMPT_CHARS}. "
            f"Shorten it by {plural(len(text) - MAX_PROMPT_CHARS, 'character')}.",
        )
    return text


def check_choice(field_name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise InputError(field_name, f"{value!r} is not accepted. Choose one of: {listed}.")
    return value


def _whole_number(value: Any) -> Any:
    """An int from anything integral (numpy ints from scripts included); other values are returned as they are."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def check_max_images(value: Any) -> int:
    value = _whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGES_LIMIT:
        raise InputError("max_images", f"is {value!r}; it must be a whole number from 1 to {MAX_IMAGES_LIMIT}.")
    return value


def check_seed(value: Any) -> int | None:
    if value is None:
        return None
    value = _whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise InputError("seed", f"is {value!r}; it must be a whole number from 0 to {SEED_MAX}.")
    return value


def check_reference_count(count: int, max_images: int, mode: str) -> None:
    """1..10 references, and references + max_images <= 15 when the model may return a set."""
    if count < 1:
        raise InputError(
            "image_1",
            "no reference image was given. Connect at least one IMAGE to image_1 or put an https URL in image_urls.",
        )
    if count > MAX_REFERENCES:
        raise InputError(
            "images",
            f"{count} reference images were given (every frame of every connected batch counts); "
            f"the model accepts at most {MAX_REFERENCES}. Disconnect inputs or pick fewer frames.",
        )
    if mode == "auto" and count + max_images > MAX_TOTAL_IMAGES:
        allowed = MAX_TOTAL_IMAGES - count
        raise InputError(
            "max_images",
            f"{plural(count, 'reference')} + max_images {max_images} = {count + max_images}, but references plus "
            f"generated images cannot exceed {MAX_TOTAL_IMAGES}. Set max_images to {allowed} or less, "
            f"or use fewer references.",
        )


def check_reference_dimensions(label: str, width: int, height: int) -> None:
    """Side and aspect-ratio rules. Sides of 6000 px or more are not checked here: they get downscaled."""
    if width <= MIN_SIDE_EXCLUSIVE or height <= MIN_SIDE_EXCLUSIVE:
        raise InputError(
            label,
            f"is {width}x{height} px; each side must be more than {MIN_SIDE_EXCLUSIVE} px. Use a larger image or upscale it first.",
        )
    ratio = width / height
    if not MIN_ASPECT_EXCLUSIVE < ratio < MAX_ASPECT_EXCLUSIVE:
        raise InputError(
            label,
            f"is {width}x{height} px (aspect {ratio:.3g}); width/height must be more than {MIN_ASPECT_EXCLUSIVE} and "
            "less than 3 (between 1:3 and 3:1, 3:1 itself excluded). Crop or pad it to a less extreme aspect ratio.",
        )


def check_image_url(label: str, url: Any) -> str:
    """A reference URL the service can fetch: public https, no credentials in it."""
    if not isinstance(url, str) or not url.strip():
        raise InputError(label, "is empty; give one https URL per line.")
    url = url.strip()
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(label, "contains a character that cannot be sent (an unpaired surrogate); retype the URL.") from None
    if any(ch.isspace() for ch in url):
        raise InputError(label, f"{shorten(url)!r} contains spaces; put one URL per line.")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InputError(label, f"{shorten(url)!r} is not a valid URL.") from None
    if parts.scheme.lower() != "https":
        # As typed ("JavaScript:", "file://"): urlsplit lower-cases the scheme and drops the slashes.
        start = url.lower().find(parts.scheme.lower() + ":") if parts.scheme else -1
        end = start + len(parts.scheme) + 1
        shown = shorten(url[start:end] + ("//" if url.startswith("//", end) else ""), 24) if start >= 0 else "no scheme"
        raise InputError(
            label,
            f"{shorten(url)!r} uses {shown}; only public https:// URLs are accepted "
            "(RunComfy fetches the file from its servers). Upload the image somewhere public, or connect it as an IMAGE.",
        )
    if not host:
        raise InputError(label, f"{shorten(url)!r} has no host name.")
    if parts.username or parts.password:
        raise InputError(label, "contains a user name or password; use a pre-signed or public URL instead.")
    if is_private_host(host):
        raise InputError(
            label,
            f"points at {host}, which RunComfy's servers cannot reach. Use a public https URL, or connect the image as an IMAGE input.",
        )
    return url


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # nothing in it needs JSON escaping


@dataclass(frozen=True)
class DataUri:
    """A base64 `data:` URI kept as bytes, so large references are never copied into str and back."""

    mime: str
    base64: bytes = field(repr=False)

    @property
    def prefix(self) -> bytes:
        return f"data:{self.mime};base64,".encode("ascii")

    def __str__(self) -> str:
        return self.prefix.decode("ascii") + self.base64.decode("ascii")

    def check(self, label: str) -> None:
        """A PNG or JPEG under 10 MB, as base64 that needs no escaping in JSON."""
        if not self.base64:
            raise InputError(label, "is empty; give the base64 of a PNG or JPEG file.")
        if self.mime not in ("image/png", "image/jpeg"):
            raise InputError(label, f"is {self.mime!r}; the model accepts image/png and image/jpeg.")
        if not isinstance(self.base64, bytes) or self.base64.rstrip(b"=").translate(None, _BASE64_ALPHABET):
            raise InputError(label, "is not base64 data; encode the file with base64.b64encode.")
        size = len(self.base64) // 4 * 3 - self.base64[-2:].count(b"=")  # the file's bytes, padding taken off
        if size >= MAX_REFERENCE_BYTES:
            raise InputError(label, f"is {size:,} bytes; each file must be under 10 MB (10,000,000 bytes). Use a smaller image.")


@dataclass(frozen=True)
class EditSequentialRequest:
    """One submit of the model, named as the node's widgets are. `images` holds what is sent in the schema's
    `images` field: encoded references (`DataUri`) and public https URLs, in that order.

    `validate(reference_count)` enforces every rule but the per-image ones, which `references` checks as it
    encodes each image; `body_pieces()` is the wire format.
    """

    prompt: str
    max_images: int = DEFAULT_MAX_IMAGES
    image_size: str = DEFAULT_IMAGE_SIZE
    seed: int | None = None
    optimize_prompt: str = OPTIMIZE_PROMPT_OPTIONS[0]
    sequential_image_generation: str = SEQUENTIAL_MODES[0]
    images: tuple[str | DataUri, ...] = ()
    count_in_prompt: str = COUNT_IN_PROMPT_MODES[0]  # "add if missing": a prompt that states no count gets one

    def validate(self, encoded_references: int = 0) -> EditSequentialRequest:
        """Every rule except the per-image ones, for `encoded_references` data references still to be added to
        the URLs in `images` (so the count is checked before any image is encoded). URLs are normalised."""
        check_prompt(self.prompt)
        if not isinstance(self.images, (tuple, list)):
            raise InputError("images", f"is a {type(self.images).__name__}; give a list of https URLs (and encoded references).")
        for index, image in enumerate(self.images, start=1):
            if isinstance(image, DataUri):
                image.check(f"images item {index}")
            elif not isinstance(image, str):
                raise InputError(f"images item {index}", f"is a {type(image).__name__}; give an https URL as text.")
        check_max_images(self.max_images)
        check_choice("image_size", self.image_size, IMAGE_SIZES)
        check_seed(self.seed)
        check_choice("optimize_prompt", self.optimize_prompt, OPTIMIZE_PROMPT_OPTIONS)
        check_choice("sequential_image_generation", self.sequential_image_generation, SEQUENTIAL_MODES)
        check_choice("count_in_prompt", self.count_in_prompt, COUNT_IN_PROMPT_MODES)
        if len(self.text) > MAX_PROMPT_CHARS:
            added = self.added_sentence
            raise InputError(
                "prompt",
                f"has {len(self.prompt)} characters, and adding {added!r} (count_in_prompt) makes {len(self.text)}; the model "
                f"accepts at most {MAX_PROMPT_CHARS}. Shorten it by {plural(len(self.text) - MAX_PROMPT_CHARS, 'character')}, say the "
                "number of images in it yourself, or set count_in_prompt to 'as written'.",
            )
        check_reference_count(encoded_references + len(self.images), self.max_images, self.sequential_image_generation)
        images = tuple(
            image if isinstance(image, DataUri) else check_image_url(f"image_urls line {line}", image)
            for line, image in enumerate(self.images, start=1)
        )
        return replace(self, images=images, max_images=check_max_images(self.max_images), seed=check_seed(self.seed))

    def with_references(self, references: Sequence[DataUri]) -> EditSequentialRequest:
        """The request with encoded references sent before its URLs."""
        return replace(self, images=(*references, *self.images))

    @property
    def added_sentence(self) -> str | None:
        """The sentence added to the prompt, if any: only for a set ("auto") whose prompt states no count; in Chinese
        ("生成4张图片。") for a prompt written in Chinese."""
        if self.count_in_prompt != "add if missing" or self.sequential_image_generation != "auto" or stated_image_counts(self.prompt):
            return None
        return count_sentence(self.max_images, chinese=writes_chinese(self.prompt))

    @property
    def text(self) -> str:
        """The prompt as sent (the schema's `text`)."""
        added = self.added_sentence
        if added is None:
            return self.prompt
        base = self.prompt.rstrip().rstrip(",;:，；：").rstrip()
        ended = base.endswith((".", "!", "?", "…", '."', ".'", '!"', '?"', "。", "！", "？", "。”", "！”", "？”", "。」", "！」", "？」"))
        if not added.isascii():  # Chinese: no space, a full stop of its own
            return base + ("" if ended else "。") + added
        if base.endswith((".", "!", "?", "…", '."', ".'", '!"', '?"')):
            return f"{base} {added}"
        if base.endswith(("。", "！", "？")) or (base and "\u3000" <= base[-1] <= "\u9fff"):  # CJK: no space, a full stop
            return base + ("" if base.endswith(("。", "！", "？")) else "。") + added
        return f"{base}. {added}"

    def count_notes(self) -> tuple[str, ...]:
        """What the user should know before paying about the count the prompt states."""
        if self.added_sentence is not None:
            return (f"added to the prompt: {self.added_sentence!r}",)
        stated, most = stated_counts(self.prompt), self.max_images_sent
        counts = [count for count, _ in stated]
        quoted = ", ".join(repr(words) for _, words in stated)  # the user's own words: what was read, in any language
        if len(counts) > 1:
            listed = " and ".join(str(count) for count in counts)
            return (f"the prompt mentions {listed} images ({quoted}); max_images is {most}: at most {most} will be made and charged",)
        if not counts or counts[0] == most:
            return ()
        asked = f"the prompt asks for {plural(counts[0], 'image')} ({quoted})"
        if self.sequential_image_generation != "auto":
            return (f"{asked}, but sequential_image_generation is disabled: exactly 1 will be made",)
        charged = f"{most} {'is' if most == 1 else 'are'} charged"
        return (f"{asked}, max_images is {most}: at most {min(counts[0], most)} will be made and {charged}",)

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of each generated image, as `image_size` names it ("2560:1440 (16:9)")."""
        width, height = self.image_size.split(" ", 1)[0].split(":")
        return int(width), int(height)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(image for image in self.images if isinstance(image, str))

    @property
    def max_images_sent(self) -> int:
        """With sequential generation "disabled" the model makes exactly one image, so the
        maximum sent is 1: the price scales with this field and nothing more can come back."""
        return self.max_images if self.sequential_image_generation == "auto" else 1

    def settings(self) -> dict[str, Any]:
        """Every value but the images, by widget name: what identifies the request besides its images."""
        return {
            "prompt": self.text,  # as sent: the count sentence, when added, is part of what is paid for
            "max_images": self.max_images,
            "image_size": self.image_size,
            "seed": self.seed,
            "optimize_prompt": self.optimize_prompt,
            "sequential_image_generation": self.sequential_image_generation,
        }

    def body_pieces(self) -> list[bytes]:
        """The submit body as byte pieces (their total is the Content-Length), fields named as the schema
        names them. Large base64 references are passed through, never copied into one string."""
        pieces = [b'{"images":[']
        for index, image in enumerate(self.images):
            comma = b"," if index else b""
            if isinstance(image, DataUri):  # base64 needs no JSON escaping
                pieces += [comma + b'"', image.prefix, image.base64, b'"']
            else:
                pieces.append(comma + json.dumps(image).encode("utf-8"))
        other: dict[str, Any] = {
            "text": self.text,
            "sequential_image_generation_options": self.max_images_sent,
            "image_size": self.image_size,
            "optimize_prompt_options": self.optimize_prompt,
            "sequential_image_generation": self.sequential_image_generation,
        }
        if self.seed is not None:
            other["seed"] = self.seed
        pieces.append(b"]," + json.dumps(other, separators=(",", ":")).encode("utf-8")[1:])
        return pieces
