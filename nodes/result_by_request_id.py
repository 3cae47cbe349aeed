"""A companion node: the images of a job collected by its request id, free. All real work is `api.batch.CollectList`
and `api.pipeline.collect`."""

from __future__ import annotations

from typing import Any

from ..api.batch import CollectList
from ..api.config import Limits
from ..api.pipeline import Timing
from . import comfy_bridge


class RunComfyResultByRequestId:
    """Collects a Seedream job submitted elsewhere (another machine, RunComfy's site, a lost user folder) by its id."""

    timing: Timing = Timing()  # how long it waits for a job still queued or running; tests give shorter waits
    limits: Limits | None = None  # memory and disk bounds; None: the defaults, or the environment's

    CATEGORY = "RunComfy/Seedream"
    SEARCH_ALIASES = list(comfy_bridge.SEARCH_ALIASES)
    FUNCTION = "collect"
    RETURN_TYPES = comfy_bridge.RETURN_TYPES
    RETURN_NAMES = comfy_bridge.RETURN_NAMES
    INPUT_IS_LIST = True  # a list of ids: one result per id
    OUTPUT_IS_LIST = (True, True, True, True)
    OUTPUT_TOOLTIPS = (
        "The job's images as one batch (different sizes centred on the largest canvas, never stretched).",
        "The same images one by one at their native sizes.",
        "The result URLs, one per line. They expire; the node keeps its own copy of the images.",
        "The request id that was collected.",
    )
    DESCRIPTION = (
        "Collects the images of a Seedream 4.0 edit-sequential job by its RunComfy request id: one submitted from another "
        "machine, from RunComfy's site, or before a user folder was lost. Free: it never submits. It waits while the job is "
        "queued or running; Stop or the deadline end the wait without cancelling the job."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "request_id": (
                    "STRING",
                    {
                        "multiline": False,
                        "default": "",
                        "tooltip": "The RunComfy request id of the job: the request_id output of the Seedream node, or the id "
                        "in your RunComfy dashboard. Connect a list of ids to collect several.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    async def collect(self, **inputs: Any) -> dict[str, Any]:
        """Each input arrives as a list (`INPUT_IS_LIST`); each output is a list with one entry per id, and `ui` the final line."""
        async with comfy_bridge.node_run(self, inputs) as run:
            return run.outputs(await CollectList(run.values.get("request_id", [""]), run.session, run.show).run())
