"""A companion node: one prompt per line of a text, as a list, so one graph runs a batch of prompts."""

from __future__ import annotations

from typing import Any

from ..api.errors import InputError
from ..api.schema import check_prompt


class RunComfyPromptLines:
    """Splits a multiline text into a list of prompts: blank lines and lines starting with # are skipped."""

    CATEGORY = "RunComfy/Seedream"
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
                        "tooltip": "One prompt per line (each at most 600 characters). Blank lines and lines starting with # are skipped.",
                    },
                ),
            }
        }

    def split(self, text: str) -> tuple[list[str]]:
        lines = [line.strip() for line in (text or "").splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
        if not prompts:
            raise InputError("text", "has no prompt: write one prompt per line (lines starting with # are skipped).")
        for number, prompt in enumerate(prompts, start=1):
            try:
                check_prompt(prompt)
            except InputError as bad:
                raise InputError(f"text line {number}", str(bad).split(": ", 1)[1]) from None
        return (prompts,)
