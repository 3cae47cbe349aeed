"""The ComfyUI node: widgets in, images out. All real work happens in `api.batch` and `api.pipeline`; what every
RunComfy node does around its one call is `comfy_bridge.node_run`."""

from __future__ import annotations

from typing import Any

from ..api.batch import Item, SeedreamList
from ..api.config import Limits
from ..api.errors import RunComfyError
from ..api.pipeline import Timing
from ..api.references import REFERENCE_FORMATS
from ..api.schema import (
    COUNT_IN_PROMPT_MODES,
    IMAGE_SIZES,
    MAX_IMAGES_LIMIT,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    OPTIMIZE_PROMPT_OPTIONS,
    SEED_MAX,
    SEQUENTIAL_MODES,
    EditSequentialRequest,
)
from . import comfy_bridge
from .comfy_bridge import reference_frames

IMAGE_SOCKETS = tuple(f"image_{i}" for i in range(1, MAX_REFERENCES + 1))
OPTIONAL_IMAGE_SOCKETS = IMAGE_SOCKETS[1:]
_DEFAULTS = EditSequentialRequest(  # the widgets' defaults are the request type's
    "Generate 3 images of this character in different poses, consistent style.", seed=0
)


def parse_url_lines(text: str | None) -> tuple[str, ...]:
    """One URL per line; blank lines and lines starting with # are ignored."""
    lines = (line.strip() for line in (text or "").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


class RunComfySeedream4EditSequential:
    """Seedream 4.0 edit-sequential on RunComfy: a consistent set of images from references and a prompt."""

    timing: Timing = Timing()  # every wait of a run; tests give a node instance shorter ones
    limits: Limits | None = None  # memory and disk bounds; None: the defaults, or the environment's

    CATEGORY = "RunComfy/Seedream"
    SEARCH_ALIASES = list(comfy_bridge.SEARCH_ALIASES)  # read by current ComfyUI's node search, ignored by older
    FUNCTION = "generate"
    RETURN_TYPES = comfy_bridge.RETURN_TYPES
    RETURN_NAMES = comfy_bridge.RETURN_NAMES
    INPUT_IS_LIST = True  # a list input is a batch: ComfyUI hands the node every item in one call
    OUTPUT_IS_LIST = (True, True, True, True)  # per item: a batch, its URLs and its request id; image_list flat
    OUTPUT_TOOLTIPS = (
        "All generated images as one batch. If they differ in size they are centred on the largest canvas "
        "with black borders (never stretched).",
        "The same images one by one at their native sizes.",
        "The result URLs, one per line. They expire; the node keeps its own copy of the images.",
        "The RunComfy request id of this job (useful for support or your dashboard).",
    )
    DESCRIPTION = (
        "Generates a consistent set of images from 1-10 reference images and a prompt with ByteDance "
        "Seedream 4.0 (edit-sequential) on the RunComfy Model API. Needs a RunComfy API token (Settings > "
        "RunComfy > API token, RUNCOMFY_API_TOKEN or ~/.config/runcomfy/token.json). RunComfy charges each job "
        "it runs; unchanged inputs reuse the saved images."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        image_tip = "A reference image. Every frame of a batch counts as one reference ({max} in all, across all inputs)."
        optional: dict[str, Any] = {name: ("IMAGE", {"tooltip": image_tip.format(max=MAX_REFERENCES)}) for name in OPTIONAL_IMAGE_SOCKETS}
        optional["image_urls"] = (
            "STRING",
            {
                "multiline": True,
                "default": "",
                "tooltip": "Optional public https URLs of more reference images, one per line. They are sent "
                "unchanged, after the connected images. Lines starting with # are ignored.",
            },
        )
        optional["count_in_prompt"] = (
            list(COUNT_IN_PROMPT_MODES),
            {
                "default": _DEFAULTS.count_in_prompt,
                "tooltip": "The model takes the number of images from the prompt; max_images is only the most it may make "
                "(and what is charged). 'add if missing': a prompt that states no number gets 'Generate N images.' "
                "('生成N张图片。' if it is in Chinese; N = max_images), shown under the node. 'as written': the prompt is "
                "sent unchanged. Either way, a number in the prompt that differs from max_images is pointed out before submitting.",
            },
        )
        optional["reference_format"] = (
            list(REFERENCE_FORMATS),
            {
                "default": REFERENCE_FORMATS[0],
                "tooltip": "How connected images are sent. png: lossless; best for line art, screenshots, logos and text. "
                "jpeg: quality 95, a third of the bytes or less on photographs: for slow uplinks, and large photos that "
                "PNG would have to downscale to fit the 64 MiB request. URLs in image_urls are sent as they are.",
            },
        )
        return {
            "required": {
                "image_1": ("IMAGE", {"tooltip": image_tip.format(max=MAX_REFERENCES)}),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": _DEFAULTS.prompt,
                        "tooltip": f"What to make, at most {MAX_PROMPT_CHARS} characters. The model decides how many "
                        "images to return from the prompt, so say the number, e.g. 'Generate 4 images of …'.",
                    },
                ),
                "max_images": (
                    "INT",
                    {
                        "default": _DEFAULTS.max_images,
                        "min": 1,
                        "max": MAX_IMAGES_LIMIT,
                        "step": 1,
                        "tooltip": "The most images the model may return; it may return fewer. References plus this "
                        "cannot exceed 15. The price scales with this value. Ignored (1) when sequential "
                        "generation is disabled.",
                    },
                ),
                "image_size": (
                    list(IMAGE_SIZES),
                    {"default": _DEFAULTS.image_size, "tooltip": "Size and aspect ratio of every generated image."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": _DEFAULTS.seed,
                        "min": 0,
                        "max": SEED_MAX,
                        "control_after_generate": True,
                        "tooltip": "The seed sent to the model. Unchanged inputs are not re-run (ComfyUI's cache, "
                        "then the node's saved results), so set this to 'fixed' to avoid paying again for the same images.",
                    },
                ),
                "optimize_prompt": (
                    list(OPTIMIZE_PROMPT_OPTIONS),
                    {
                        "default": _DEFAULTS.optimize_prompt,
                        "tooltip": "The model's prompt optimization: fast (quicker, lower quality) or standard (higher quality, slower).",
                    },
                ),
                "sequential_image_generation": (
                    list(SEQUENTIAL_MODES),
                    {
                        "default": _DEFAULTS.sequential_image_generation,
                        "tooltip": "auto: the model may return a set of images (up to max_images). disabled: exactly one image.",
                    },
                ),
            },
            "optional": optional,
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    async def generate(self, **inputs: Any) -> dict[str, Any]:
        """Every input arrives as a list (`INPUT_IS_LIST`): one item per element of the longest, as ComfyUI maps
        other nodes. Each output is a list with one entry per item; `image_list` holds every image of every item.
        The returned `ui` holds the run's final line (see `comfy_bridge.node_run`)."""
        async with comfy_bridge.node_run(self, inputs) as run:
            items = [_item(values) for values in comfy_bridge.list_items(run.values)]
            return run.outputs(await SeedreamList(items, run.session, run.show).run())


def _item(values: dict[str, Any]) -> Item | RunComfyError:
    """What one item sends, or why its inputs cannot be used (the item fails, the others run)."""
    try:
        request = EditSequentialRequest(
            prompt=values.get("prompt"),
            max_images=values.get("max_images"),
            image_size=values.get("image_size"),
            seed=values.get("seed"),
            optimize_prompt=values.get("optimize_prompt"),
            sequential_image_generation=values.get("sequential_image_generation"),
            images=parse_url_lines(values.get("image_urls")),
            count_in_prompt=values.get("count_in_prompt", _DEFAULTS.count_in_prompt),  # absent from workflows saved before it
        )
        references = reference_frames([(name, values.get(name)) for name in IMAGE_SOCKETS])
        return Item(references, request, values.get("reference_format", REFERENCE_FORMATS[0]))  # likewise
    except RunComfyError as unusable:
        return unusable
