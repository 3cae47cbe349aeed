"""RunComfy Seedream 4.0 edit-sequential nodes for ComfyUI."""

WEB_DIRECTORY = "./web"

if __package__:  # imported as a package, as ComfyUI does: the normal case
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, jobs_route
    from .nodes.comfy_bridge import spending_file, state_directory, token_file
    from .nodes.token_route import register_with_comfyui

    register_with_comfyui(token_file, lambda routes: jobs_route.register(routes, state_directory, token_file, spending_file))
else:  # read as a lone file (a test runner walking a folder whose name is not a Python identifier)
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
