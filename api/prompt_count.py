"""Reading the number of images an English prompt asks for ("Generate 4 images of …"): the model takes its count
from the prompt, and `max_images` is only the most it may make and what is charged."""

from __future__ import annotations

import re

from .wording import plural

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


def _value(word: str) -> int:
    word = " ".join(word.lower().split())
    if word.isdigit():
        return int(word)
    return _QUANTITIES[word] if word in _QUANTITIES else _NUMBER_WORDS.index(word) + 1


def stated_image_counts(prompt: str) -> tuple[int, ...]:
    """Every distinct number of images the prompt states, in order of appearance (empty when it states none).

    Recognised (English only): a number in digits or a word from one to fifteen, or "a single / a pair of /
    a couple of / a trio of / a dozen", in "N images" (also pictures, photos, shots, frames, illustrations,
    renders, variations, variants, versions, views, panels, scenes, portraits, poses, keyframes, stills,
    selfies, thumbnails, angles, options; up to three words between, as in "3 consistent character portraits"),
    "a set / series / sequence / collection / batch / grid / group / total of N", and "an N-panel / N-image /
    N-frame …". Numbers in ratios, sizes, decimals and hyphenated numbers (16:9, 800 x 600, 1.5,
    twenty-one) are not counts.
    """
    text = _RATIO.sub(" ", prompt)
    found: list[tuple[int, int]] = []
    for phrase in COUNT_PHRASES:
        for match in phrase.finditer(text):
            word = next(group for group in match.groups() if group)
            if _value(word) > 0:
                found.append((match.start(), _value(word)))
    return tuple(dict.fromkeys(value for _, value in sorted(found)))


def count_sentence(count: int) -> str:
    """The sentence added to a prompt that states no number of images."""
    return f"Generate {plural(count, 'image')}."
