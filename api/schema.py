"""The input schema of bytedance/seedream-4-0/edit-sequential: its rules, and the one request type.

Every rule of the published schema lives here once, so the node and scripts agree on
it; exactly the schema, no stricter and no looser. (The local fake service checks
submits against its own, independent reading of the spec.) Checks raise `InputError`
naming the field, the limit and the fix; nothing is sent when one fails.
`EditSequentialRequest` owns the wire format, including the body.

How many images a prompt asks for (`stated_counts`, in English and Chinese) is read here too: the model takes its
number from the prompt.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .addresses import is_private_host
from .errors import InputError
from .events import plural, shorten

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


_NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen").split()
_QUANTITIES = {"single": 1, "pair of": 2, "couple of": 2, "trio of": 3, "dozen": 12}  # "a single image", "a pair of shots"
_NUMBER = r"(?<![\w.:×/-])(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")(?![\w.:×%/])"
_QUANTITY = r"\ba (" + "|".join(_QUANTITIES) + r")"
_IMAGE_NOUN = (
    r"(?:image|picture|pic|photo|photograph|shot|frame|illustration|render|rendering|variation|variant|version|view|"
    r"panel|scene|portrait|pose|keyframe|still|selfie|thumbnail|angle|option)s?"
)
_FILLER_WORD = r"(?:(?!(?:of|in|on|at|with|and|or|for|from|to|the|a|an|per|each)\b)[\w][\w'-]*,?\s+)"
COUNT_PHRASES = (
    re.compile(r"(?:" + _NUMBER + "|" + _QUANTITY + r")\s+" + _FILLER_WORD + r"{0,3}" + _IMAGE_NOUN + r"\b", re.I),  # "4 images"
    re.compile(r"\b(?:set|series|sequence|collection|batch|grid|group|total) of\s+" + _NUMBER, re.I),  # "a set of 6"
    re.compile(_NUMBER + r"-(?:image|panel|frame|shot|picture|photo|page)\b", re.I),  # "a 4-panel storyboard"
)
_RATIO = re.compile(r"\d+\s*[x×:：/]\s*\d+", re.I)  # 16:9, 800 x 600, 4/5: sizes and ratios, never counts

# Chinese (simplified, and the traditional forms of the same words). A count is a number, in digits (also full-width)
# or a numeral from 一 to 十五 or 两, with a measure word of pictures: 张 / 幅 / 帧 ("4张图片", "生成四幅", "一组6张"),
# 个 with a word for a frame ("4个画面", "3个镜头"), "N宫格" and "N格漫画".
_ZH_NUMERALS = ("一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四", "十五")
_ZH_NUMBER = r"(?P<number>\d{1,3}|十[一二三四五]|[一二三四五六七八九十两兩])"
_ZH_ANY_NUMERAL = "零〇一二三四五六七八九十百千万萬两兩几幾"
# Not a count when the number follows these: a decimal, a range ("3到4张", "3-4张", "一两张", "3或4张"), an ordinal
# ("第2张"), "each" (每), part of the set ("前2张", "其中2张", "另外2张"), or the reference images ("这3张", "参考3张").
_ZH_NOT_AFTER_WORDS = "其中 另外 参考 參考 参照 參照 按照 依照 根据 根據 基于 基於 上传的 上傳的 输入的 輸入的".split()
_ZH_NOT_AFTER = rf"(?<![\d.．:：/×xX~～\-－—到至或第每前后後另余餘剩这這那此该該同{_ZH_ANY_NUMERAL}A-Za-z_])" + "".join(
    f"(?<!{word})" for word in _ZH_NOT_AFTER_WORDS
)
_ZH_SHEET = r"(?P<measure>[张張幅帧幀])(?!(?P=measure))"  # a measure word that by itself means pictures: "生成4张" (not "一张张")
_ZH_IMAGE_NOUN = (  # 图 covers 图片 / 图像 / 产品图 / 效果图; 画 covers 画面 / 插画 / 油画; 照 covers 照片 / 全身照
    r"(?:[图圖][片像]|[图圖](?!案)|[画畫][面作]|[画畫](?![家笔筆风風师師布框室廊])|照片|(?<![按参參对對依遵])照(?![明射亮耀着著])|相片|"
    r"海报|海報|壁纸|壁紙|"
    r"头像|頭像|肖像|写真|寫真|分镜|分鏡|素描|封面|立绘|立繪|表情包)"
)
_ZH_FRAME_NOUN = r"(?:画面|畫面|镜头|鏡頭|分镜|分鏡|场景|場景|版本|视角|視角|角度|姿势|姿勢|姿态|姿態|变体|變體|方案)"  # after 个
# Up to twelve characters between the measure and the noun ("4张赛博朋克风格的城市海报"), none of them a clause break,
# "and"/"or", another number with its measure, or words of the references ("3张参考图").
_ZH_FILLER = (
    rf"(?:(?![{_ZH_ANY_NUMERAL}\d]\s*[张張幅帧幀个個组組套])(?!参考|參考|输入|輸入|原图|原圖)"
    r"[^\n，。、；：！？,.;:!?（）()\[\]【】「」『』\"“”‘’和与與及或跟并並且而还還]){0,12}?"
)
_ZH_NOT_THE_REFERENCES = r"(?![片像]?[中里裏内內]的)"  # "3张图中的人物": the characters of 3 given images
_ZH_CLAUSE_END = r"(?=\s*(?:[\n，。、；：！？,.;:!?…）)\]】」』\"”]|$|一组|一組|一套|为一组|為一組))"
_ZH_VERB = r"(?:生成|绘制|繪製|制作|製作|创作|創作|输出|輸出|创建|創建|产出|產出|设计|設計|画出?|畫出?|做出?|给我|給我|来|來|出)"
_ZH_VERB_TAIL = r"(?:出|了|一组|一組|一套|一系列|总共|總共|一共|共计|共計|合计|合計|共)?"
_ZH_SET = r"(?:一组|一組|一套|一系列|一共|总共|總共|共)"  # "一组6张" is 6, "共6张" too
ZH_COUNT_PHRASE = re.compile(
    rf"(?:(?P<verb>{_ZH_VERB}{_ZH_VERB_TAIL}\s*)|{_ZH_SET}\s*)?{_ZH_NOT_AFTER}{_ZH_NUMBER}\s*(?:"
    # "生成4张", "4张图片", "4张不同角度的产品图", "共6张。", "6张一组"
    rf"{_ZH_SHEET}(?(verb)(?:{_ZH_FILLER}{_ZH_IMAGE_NOUN}{_ZH_NOT_THE_REFERENCES})?|(?:{_ZH_FILLER}{_ZH_IMAGE_NOUN}{_ZH_NOT_THE_REFERENCES}|{_ZH_CLAUSE_END}))"
    rf"|[个個](?:不同|独立|獨立|连续|連續)?的?{_ZH_FRAME_NOUN}"  # "4个画面", "3个不同的角度"
    r"|[宫宮]格|格(?:漫画|漫畫|分镜|分鏡|条漫|條漫)"  # "九宫格", "四格漫画"
    r")"
)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def _value(word: str) -> int:
    word = " ".join(word.lower().split())
    if word.isdigit():
        return int(word)  # also full-width digits: int("６") == 6
    if word in ("两", "兩"):
        return 2
    if word in _ZH_NUMERALS:
        return _ZH_NUMERALS.index(word) + 1
    return _QUANTITIES[word] if word in _QUANTITIES else _NUMBER_WORDS.index(word) + 1


def stated_counts(prompt: str) -> tuple[tuple[int, str], ...]:
    """Every distinct number of images the prompt states, each with the words that first state it ("6张图片",
    "4 images"), in order of appearance (empty when it states none). See `stated_image_counts` for what counts."""
    text = _RATIO.sub(lambda ratio: " " * len(ratio.group()), prompt)  # same length: the words quoted are the prompt's
    found: list[tuple[int, int, str]] = []
    for phrase in (*COUNT_PHRASES, ZH_COUNT_PHRASE):
        for match in phrase.finditer(text):
            word = match.group("number") if phrase is ZH_COUNT_PHRASE else next(group for group in match.groups() if group)
            if _value(word) > 0:
                found.append((match.start(), _value(word), prompt[match.start() : match.end()].strip()))
    firsts: dict[int, str] = {}
    for _, value, words in sorted(found):
        firsts.setdefault(value, words)
    return tuple(firsts.items())


def stated_image_counts(prompt: str) -> tuple[int, ...]:
    """Every distinct number of images the prompt states, in order of appearance (empty when it states none).

    English: a number in digits or a word from one to fifteen, or "a single / a pair of / a couple of / a trio of /
    a dozen", in "N images" (also pictures, photos, shots, frames, illustrations, renders, variations, variants,
    versions, views, panels, scenes, portraits, poses, keyframes, stills, selfies, thumbnails, angles, options; up to
    three words between, as in "3 consistent character portraits"), "a set / series / sequence / collection / batch /
    grid / group / total of N", and "an N-panel / N-image / N-frame …". Numbers in ratios, sizes, decimals and
    hyphenated numbers (16:9, 800 x 600, 1.5, twenty-one) are not counts.

    Chinese: a number in digits or a numeral from 一 to 十五 or 两 with 张 / 幅 / 帧 after a verb of making ("生成4张",
    "画两幅", "一组6张") or before a word for pictures ("4张图片", "三幅插画", up to twelve characters between, as in
    "4张不同角度的产品图") or at the end of a clause ("共6张。"); "N个画面 / 镜头 / 分镜 / 场景 / 版本 / 视角 / 角度 /
    姿势 / 变体 / 方案"; "N宫格" and "N格漫画". Not counts: other measures ("3个人", "5岁", "2024年"), ordinals ("第2张"),
    ranges ("3到4张", "一两张", "十几张"), "each" ("每张"), part of the set ("其中2张", "前2张") and the reference
    images ("这3张图", "参考3张图片", "3张参考图", "3张图中的人物").
    """
    return tuple(value for value, _ in stated_counts(prompt))


def writes_chinese(prompt: str) -> bool:
    """Whether the prompt is written in Chinese: at least as many Chinese characters as Latin words, and no Japanese kana."""
    return not _KANA.search(prompt) and 0 < len(_HAN.findall(prompt)) >= len(_LATIN_WORD.findall(prompt))


def count_sentence(count: int, chinese: bool = False) -> str:
    """The sentence added to a prompt that states no number of images, in the prompt's language."""
    return f"生成{count}张图片。" if chinese else f"Generate {plural(count, 'image')}."
