"""The ComfyUI node: widgets in, images out. All real work happens in `api.pipeline`."""

from __future__ import annotations

import asyncio
from typing import Any

from ..api.batch import Batch
from ..api.client import RunComfyClient
from ..api.config import Limits, resolve_base_url, resolve_credentials
from ..api.errors import InputError, RunComfyError, StopRequested
from ..api.pipeline import Progress, Timing, generate
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
from .tensors import output_tensors, reference_frames

OPTIONAL_IMAGE_SOCKETS = tuple(f"image_{i}" for i in range(2, MAX_REFERENCES + 1))
PROGRESS_STEPS = 100
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
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "image_list", "urls", "request_id")
    OUTPUT_IS_LIST = (False, True, False, False)
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
                "(N = max_images), shown under the node. 'as written': the prompt is sent unchanged. Either way, a number "
                "in the prompt that differs from max_images is pointed out before submitting.",
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

    async def generate(
        self,
        image_1: Any,
        prompt: str,
        max_images: int,
        image_size: str,
        seed: int,
        optimize_prompt: str,
        sequential_image_generation: str,
        count_in_prompt: str = _DEFAULTS.count_in_prompt,  # absent from workflows saved before it existed
        reference_format: str = REFERENCE_FORMATS[0],  # likewise
        image_urls: str = "",
        unique_id: str | None = None,
        **more_images: Any,
    ) -> tuple[Any, ...]:
        node_id = str(unique_id) if unique_id is not None else None
        credentials = resolve_credentials(settings_file=comfy_bridge.token_file())  # first: a clear error, no work
        unknown = sorted(set(more_images) - set(OPTIONAL_IMAGE_SOCKETS))
        if unknown:
            raise InputError(unknown[0], "is not an input of this node.")
        sockets = [("image_1", image_1)] + [(name, more_images.get(name)) for name in OPTIONAL_IMAGE_SOCKETS]
        request = EditSequentialRequest(
            prompt=prompt,
            max_images=max_images,
            image_size=image_size,
            seed=seed,
            optimize_prompt=optimize_prompt,
            sequential_image_generation=sequential_image_generation,
            images=parse_url_lines(image_urls),
            count_in_prompt=count_in_prompt,
        )
        base_url = resolve_base_url()
        comfy_bridge.quiet_status_polls(base_url)
        timing = self.timing
        limits = self.limits or Limits.from_env()

        # The items of a list input run as concurrent calls: they share one line, one bar and one connection pool.
        should_stop = comfy_bridge.stop_watch()  # any Stop from now on, whichever of our progress bars took it
        member = Batch.join(f"{node_id}|{id(self)}", comfy_bridge.list_position())  # before the first await
        batch = member.batch
        shared = batch.resources
        if not shared:
            shared["bar"] = comfy_bridge.ProgressBar(PROGRESS_STEPS, node_id)
            shared["client"] = client = RunComfyClient(
                credentials,
                base_url,
                retry=timing.submit_retry,
                job_retry=timing.job_retry,
                timeouts=timing.timeouts,
                status_interval_s=timing.status_interval_s,
            )
            batch.price_lookup = lambda: asyncio.wait_for(client.price(), timing.price_wait_s)
            batch.on_change = lambda changed: changed.size > 1 and show_line(changed.line(), changed.fraction())
        bar = shared["bar"]

        def show_line(text: str, fraction: float) -> None:
            comfy_bridge.send_progress_text(text, node_id)
            bar.set(round(fraction * PROGRESS_STEPS))

        def show(progress: Progress) -> None:
            member.progress(progress.phase, progress.fraction)
            if batch.size == 1:
                show_line(progress.text, progress.fraction)

        try:
            result = await generate(
                reference_frames(sockets),
                request,
                credentials=credentials,
                base_url=base_url,
                state_dir=comfy_bridge.state_directory(),
                on_progress=show,
                should_stop=lambda: bar.stop_seen or should_stop(),
                timing=timing,
                limits=limits,
                after_submit=comfy_bridge.release_free_memory,
                reference_format=reference_format,
                client=shared["client"],
                on_planned=member.plan,
            )
        except BaseException as failure:
            error = failure if isinstance(failure, RunComfyError) else StopRequested(f"Interrupted ({type(failure).__name__}).")
            if isinstance(failure, RunComfyError) and batch.size == 1:
                # ComfyUI creates the next item of a list in one turn of the loop and it joins in the next: a first item
                # that fails at once waits for them, so that it fails as part of its batch instead of ending it.
                for _ in range(2):
                    await asyncio.sleep(0)
            member.finish(error=error)
            if batch.size > 1 and isinstance(failure, RunComfyError):
                await batch.settled()  # the whole batch's outcome, once, instead of the first item's alone
                failure = batch.outcome() or failure
            await _release(batch)
            if isinstance(failure, StopRequested):
                if batch.size == 1 or batch.report_stop_once():
                    comfy_bridge.send_progress_text(str(failure), node_id)
                raise comfy_bridge.interruption(str(failure)) from None
            raise failure from None

        member.finish(result=result)
        await _release(batch)
        images, image_list = output_tensors(result.images)
        if batch.size > 1:
            if batch.over and batch.outcome() is None:
                show_line(batch.summary(), 1.0)
            return images, image_list, "\n".join(result.urls), result.request_id
        count = len(image_list)
        summary = f"Done: {count} image{'s' if count != 1 else ''}, request {result.request_id}"
        if result.cost_usd is not None and result.reused:
            summary += f", paid ${result.cost_usd:.2f} when it ran (nothing charged now)"
        elif result.cost_usd is not None:
            summary += f", cost ${result.cost_usd:.2f}"
        details = list(result.notes)
        if result.images.padded and not result.images.shrunk:
            details.append(f"sizes differ: padded onto {images.shape[2]}x{images.shape[1]} in the batch; image_list keeps native sizes")
        if details:
            summary += " (" + "; ".join(details) + ")"
        comfy_bridge.send_progress_text("\n".join([summary, *result.warnings]), node_id)
        bar.set(PROGRESS_STEPS)
        return images, image_list, "\n".join(result.urls), result.request_id


async def _release(batch: Batch) -> None:
    """Close the batch's connection pool once its last item has ended."""
    if batch.over:
        client = batch.resources.pop("client", None)
        if client is not None:
            await client.aclose()
