"""ComfyUI adapters: widgets, progress, Stop and tensor conversion around `api`."""

from .prompt_lines import RunComfyPromptLines
from .result_by_request_id import RunComfyResultByRequestId
from .seedream_edit_sequential import RunComfySeedream4EditSequential

NODE_CLASS_MAPPINGS = {
    "RunComfySeedream4EditSequential": RunComfySeedream4EditSequential,
    "RunComfyPromptLines": RunComfyPromptLines,
    "RunComfyResultByRequestId": RunComfyResultByRequestId,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RunComfySeedream4EditSequential": "Seedream 4.0 Edit Sequential (RunComfy)",
    "RunComfyPromptLines": "Prompt lines (RunComfy)",
    "RunComfyResultByRequestId": "RunComfy result by request id",
}
