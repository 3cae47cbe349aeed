"""RunComfy Seedream 4.0 edit-sequential nodes for ComfyUI."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_bridge import token_file
from .nodes.token_route import register_with_comfyui

WEB_DIRECTORY = "./web"

register_with_comfyui(token_file)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
