"""Small pieces of the English the pack speaks in: counts with their noun, long values shortened."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """'1 image', '3 images'."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
