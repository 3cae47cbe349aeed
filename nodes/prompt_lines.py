"""A companion node: one prompt per line of a text, as a list, so one graph runs a batch of prompts."""

from __future__ import annotations

from typing import Any

from ..api.batch import items_that_fit
from ..api.config import DEFAULT_BATCH_BYTES, Limits
from ..api.errors import ConfigurationError, InputError
from ..api.schema import IMAGE_SIZES, check_prompt

MAX_PROMPTS = 100  # each line is a paid job: a runaway paste should be a question, not a bill


def output_budget() -> int:
    """The outputs' memory budget in bytes (RUNCOMFY_SEEDREAM_BATCH_MB, else 3 GiB)."""
    try:
        return Limits.from_env().batch_max_bytes
    except ConfigurationError:  # the node run says what is wrong with the variable
        return DEFAULT_BATCH_BYTES


def fitting(budget: int) -> tuple[int, str]:
    """(the most lines a list can have within `budget`, at one image each at the size that takes least memory, and at
    most MAX_PROMPTS; how many fit at other max_images)."""
    width, height = min((tuple(int(v) for v in size.split(" ", 1)[0].split(":")) for size in IMAGE_SIZES), key=lambda s: s[0] * s[1])
    most = max(1, min(MAX_PROMPTS, items_that_fit(budget, width, height, 1)))  # one line is one run: it is always fitted
    others = ", ".join(f"{items_that_fit(budget, width, height, n)} at max_images {n}" for n in (3, 6, 15))
    return most, f"at most {most} lines (one image each at {width}x{height}; {others})"


class RunComfyPromptLines:
    """Splits a multiline text into a list of prompts: blank lines and lines starting with # are skipped."""

    CATEGORY = "RunComfy/Seedream"
    SEARCH_ALIASES = ["runcomfy", "prompt list", "lines"]  # read by current ComfyUI's node search, ignored by older
    FUNCTION = "split"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompts",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_TOOLTIPS = ("One prompt per line, as a list: a node it feeds runs once per prompt (a batch).",)
    DESCRIPTION = (
        "One prompt per line. Connect 'prompts' to the prompt input of Seedream 4.0 Edit Sequential (RunComfy) to run "
        "it once per line, in parallel, with one progress line and one cost estimate for the whole batch."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "Generate 3 images of this character at the beach.\nGenerate 3 images of this character in the snow.",
                        "tooltip": "One prompt per line (each at most 600 characters). Blank lines and lines starting with # are skipped. "
                        "ComfyUI keeps every line's images in memory at once: with the outputs' memory budget of "
                        f"{output_budget() // 2**20:,} MiB (RUNCOMFY_SEEDREAM_BATCH_MB), {fitting(output_budget())[1]}.",
                    },
                ),
            }
        }

    def split(self, text: str) -> tuple[list[str]]:
        # Only line breaks typed as such (\n, \r\n, \r) separate prompts: a pasted U+2028 or form feed does not.
        lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        prompts: list[str] = []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                prompts.append(check_prompt(line))
            except InputError as bad:
                raise InputError(f"text line {number}", str(bad).split(": ", 1)[1]) from None
        if not prompts:
            raise InputError("text", "has no prompt: write one prompt per line (lines starting with # are skipped).")
        if len(prompts) > MAX_PROMPTS:
            raise InputError("text", f"has {len(prompts)} prompts; at most {MAX_PROMPTS} run at once (each is a paid job). Split the list.")
        budget = output_budget()
        most, how = fitting(budget)
        if len(prompts) > most:
            raise InputError(
                "text",
                f"has {len(prompts)} prompts; ComfyUI keeps every line's images in memory at once, and the {budget // 2**20:,} MiB "
                f"budget for outputs holds {how}. Split the list, or raise RUNCOMFY_SEEDREAM_BATCH_MB if this machine has the "
                "memory. Nothing was sent.",
            )
        return (prompts,)
