"""How much of the pack one plain run walks through: the figures a newcomer pays for in reading.

    python scripts/run_shape.py

Runs the Seedream node once, as ComfyUI calls it (one reference, no spending limit, no list), against the local
fake service with a temporary user folder, and prints:

- the distinct pack functions the run calls on its own thread, and in how many modules (`sys.setprofile`;
  comprehensions, generator expressions and lambdas left out), then how many more only its worker threads call;
- the pack functions between the node's FUNCTION and httpx when the submit is sent, outermost first (a task's
  frames are followed back to the frames that created it);
- the lines of `api/` and `nodes/`, and every function longer than 60 lines (`INPUT_TYPES` aside).
"""

from __future__ import annotations

import ast
import asyncio
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from pack_import import PACK_NAME, PACK_ROOT, load_pack

ANONYMOUS = {"<lambda>", "<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"}
MAX_FUNCTION_LINES = 60


def measure_run() -> tuple[set[tuple[str, str]], set[tuple[str, str]], list[str]]:
    """(the distinct (module, function) pairs called on the run's thread, those called only in worker threads, the pack
    frames on the way to the submit's send)."""
    pack = load_pack()
    from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy

    called: set[tuple[str, str]] = set()
    in_threads: set[tuple[str, str]] = set()  # called only in the worker threads the run starts
    main = threading.current_thread()
    submit_path: list[str] = []
    created_by: dict[int, list[str]] = {}  # id(task) -> the pack frames that created it

    def pack_frames(frame) -> list[str]:
        names = []
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.startswith(PACK_NAME + ".") and frame.f_code.co_name not in ANONYMOUS:
                names.append(f"{module.removeprefix(PACK_NAME + '.')}.{frame.f_code.co_qualname}")
            frame = frame.f_back
        return names[::-1]

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        module = frame.f_globals.get("__name__", "")
        if module.startswith(PACK_NAME + ".") and code.co_name not in ANONYMOUS:
            (called if threading.current_thread() is main else in_threads).add((module, code.co_qualname))
        elif module == "httpx._client" and code.co_name == "send" and not submit_path:
            request = frame.f_locals.get("request")
            if request is not None and request.method == "POST" and "/models/" in str(request.url):
                task = asyncio.current_task()
                submit_path.extend(created_by.get(id(task), []) + pack_frames(frame))

    def task_factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        parent = asyncio.current_task(loop)
        created_by[id(task)] = created_by.get(id(parent), []) + pack_frames(sys._getframe(1))
        return task

    behaviour = FakeBehaviour(queue_s=0.05, run_s=0.1, output_scale=1 / 16)
    with FakeRunComfy(behaviour) as fake, tempfile.TemporaryDirectory(prefix="seedream-shape-", ignore_cleanup_errors=True) as state:
        os.environ.update(
            RUNCOMFY_SEEDREAM_STATE_DIR=state,
            RUNCOMFY_API_TOKEN=behaviour.token,
            RUNCOMFY_MODEL_API_BASE=fake.base_url,
            RUNCOMFY_SERVERLESS_API_BASE=fake.serverless_base,
        )
        node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()
        reference = torch.from_numpy(np.random.default_rng(0).random((1, 64, 96, 3), dtype=np.float32))
        inputs = dict(
            image_1=[reference],
            prompt=["Generate 3 images of this scene at dawn, noon and night."],
            max_images=[3],
            image_size=["2560:1440 (16:9)"],
            seed=[42],
            optimize_prompt=["fast"],
            sequential_image_generation=["auto"],
            unique_id=["7"],
        )

        async def run():
            asyncio.get_running_loop().set_task_factory(task_factory)
            sys.setprofile(profile)
            threading.setprofile(profile)  # the worker threads the run starts (records, encoding)
            try:
                return await getattr(node, node.FUNCTION)(**inputs)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)

        asyncio.run(run())
    return called, in_threads - called, [name for index, name in enumerate(submit_path) if name not in submit_path[:index]]


def long_functions(root: Path) -> tuple[int, list[str]]:
    """(lines of api/ and nodes/, the functions over MAX_FUNCTION_LINES lines)."""
    lines, long = 0, []
    for path in sorted([*root.glob("api/*.py"), *root.glob("nodes/*.py")]):
        text = path.read_text(encoding="utf-8")
        lines += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "INPUT_TYPES":
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return lines, long


def main() -> int:
    called, in_threads, submit_path = measure_run()
    modules = sorted({module.removeprefix(PACK_NAME + ".") for module, _ in called})
    print(f"one plain run: {len(called)} distinct pack functions in {len(modules)} modules")
    print(f"  and {len(in_threads)} more only in the worker threads it starts")
    print("  modules: " + ", ".join(modules))
    print(f"submit path, FUNCTION to httpx: {len(submit_path)} pack functions")
    for name in submit_path:
        print(f"  {name}")
    lines, long = long_functions(PACK_ROOT)
    print(f"api/ + nodes/: {lines} lines; functions over {MAX_FUNCTION_LINES} lines: {len(long)}")
    for name in long:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
