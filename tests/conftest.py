"""Shared fixtures: the pack loaded under a fixed name, the local fake service, and a stand-in ComfyUI runtime."""

from __future__ import annotations

import gc
import signal
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from pack_import import load_pack  # noqa: E402

load_pack()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# Ctrl-C still interrupts, but asyncio.run installs no handler of its own: taking it back at the end of every run
# formats the run's result into an error message it throws away (Python 3.11), and a result of tensors costs
# milliseconds of CPU each time.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupt)

from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy  # noqa: E402


def pytest_collection_finish(session):
    """What collection imported (torch, numpy, the pack, the test modules and their parameters) lives as long as the
    process: it is moved out of the garbage collector's sight, so that full collections during the tests and the
    ones pytest runs at the end of the session do not walk its few hundred thousand objects again each time."""
    gc.freeze()


@pytest.fixture
def behaviour() -> FakeBehaviour:
    """Quick jobs with small outputs (image_size / 16), so tests run in a fraction of a second each."""
    return FakeBehaviour(queue_s=0.05, run_s=0.1, output_scale=1 / 16)


@pytest.fixture
def fake(behaviour, monkeypatch, tmp_path):
    """The fake service, with the environment of a user who configured it as their API base."""
    with FakeRunComfy(behaviour) as service:
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
        monkeypatch.setenv("RUNCOMFY_API_TOKEN", behaviour.token)
        monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", service.base_url)
        monkeypatch.setenv("RUNCOMFY_SERVERLESS_API_BASE", service.serverless_base)
        yield service


class ComfyRuntime:
    """Stand-ins for the parts of ComfyUI the node touches: progress text, progress bar, Stop."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.bar_values: list[tuple[int, int]] = []
        self.interrupted = False
        self.stop_when = None  # callable(text) -> bool: press Stop when a progress text matches
        self.on_text = None  # callable(text): something to do when a progress text appears (an outage, say)

    def press_stop(self) -> None:
        self.interrupted = True

    def progress_texts(self) -> list[str]:
        return [text for text, _ in self.texts]


@pytest.fixture
def comfy(monkeypatch) -> ComfyRuntime:
    runtime = ComfyRuntime()

    class InterruptProcessingException(Exception):
        pass

    class PromptServer:
        instance = None

        def send_progress_text(self, text, node_id, sid=None):
            runtime.texts.append((text, node_id))
            if runtime.on_text is not None:
                runtime.on_text(text)
            if runtime.stop_when is not None and runtime.stop_when(text):
                runtime.press_stop()

    PromptServer.instance = PromptServer()

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            # Like ComfyUI's progress hook: a pending Stop is raised here, and the flag cleared.
            if runtime.interrupted:
                runtime.interrupted = False
                raise InterruptProcessingException()
            runtime.bar_values.append((value, total))

    server = types.ModuleType("server")
    server.PromptServer = PromptServer
    comfy_pkg = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.processing_interrupted = lambda: runtime.interrupted
    mm.interrupt_current_processing = lambda value=True: setattr(runtime, "interrupted", value)
    comfy_pkg.utils = utils
    comfy_pkg.model_management = mm
    for name, module in {"server": server, "comfy": comfy_pkg, "comfy.utils": utils, "comfy.model_management": mm}.items():
        monkeypatch.setitem(sys.modules, name, module)
    runtime.InterruptProcessingException = InterruptProcessingException
    return runtime


@pytest.fixture
def fresh_process_state():
    """Nothing a process shares (prices, open job records, live job states) carries over into the test or out of it."""
    from runcomfy_seedream.api import shared

    shared.reset_all()
    yield
    shared.reset_all()
