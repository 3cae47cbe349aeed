"""The run's final line, as ComfyUI receives it: the node returns it as its `ui` output (ComfyUI also keeps it in its
history), and it is the last progress text of every run, including one that fails before any work, so the frontend
extension can keep it under the node after the run."""

from __future__ import annotations

import asyncio

import pytest

from helpers import as_lists, list_inputs, node_inputs, node_object, per_item
from runcomfy_seedream.api.errors import ConfigurationError, InputError
from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS


def call(node, **inputs) -> dict:
    return asyncio.run(getattr(node, node.FUNCTION)(**inputs))


def test_a_run_returns_its_done_line_as_ui_and_it_is_the_last_progress_text(fake, comfy):
    returned = call(node_object(), **as_lists(node_inputs(prompt="Generate 3 images of a kite festival.")))

    ((_, _, _, request_id),) = per_item(returned)
    (line,) = returned["ui"]["runcomfy_line"]
    assert line.startswith(f"Done: 3 images, request {request_id}, cost $0.09")
    assert "(today: $0.09 over 1 job)" in line
    assert comfy.texts[-1] == (line, "7"), "the same line was the node's last progress text"


def test_a_list_returns_the_batch_line_as_ui(fake, comfy):
    items = [node_inputs(seed=1, unique_id="4"), node_inputs(seed=2, unique_id="4")]
    returned = call(node_object(), **list_inputs(items))

    assert len(per_item(returned)) == 2
    (line,) = returned["ui"]["runcomfy_line"]
    assert line == comfy.progress_texts()[-1]
    assert line == "Batch of 2 done: 2 jobs, cost $0.18 (today: $0.18 over 2 jobs)"


def test_a_collected_result_returns_its_line_as_ui(fake, comfy):
    first = call(node_object(), **as_lists(node_inputs()))
    ((_, _, _, request_id),) = per_item(first)

    by_id = NODE_CLASS_MAPPINGS["RunComfyResultByRequestId"]()
    returned = call(by_id, request_id=[request_id], unique_id=["5"])

    assert returned["ui"]["runcomfy_line"] == [comfy.progress_texts()[-1]]
    assert returned["ui"]["runcomfy_line"][0].startswith(f"Done: 3 images, request {request_id}, paid $0.09 when it ran")
    assert comfy.texts[-1][1] == "5"


def test_a_missing_token_is_the_last_progress_text(fake, comfy, monkeypatch, tmp_path):
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    with pytest.raises(ConfigurationError) as caught:
        call(node_object(), **as_lists(node_inputs()))

    assert comfy.texts == [(str(caught.value), "7")], "said once, under the node that failed"
    assert "token" in str(caught.value).lower()
    assert fake.requests == []


def test_an_unknown_input_is_the_last_progress_text(fake, comfy):
    with pytest.raises(InputError) as caught:
        call(node_object(), **as_lists(node_inputs(colour="red")))

    assert comfy.texts == [(str(caught.value), "7")]
    assert str(caught.value) == "colour: is not an input of this node."


def test_an_item_error_is_shown_once_as_the_last_progress_text(fake, comfy):
    with pytest.raises(InputError) as caught:
        call(node_object(), **as_lists(node_inputs(prompt="")))

    texts = comfy.progress_texts()
    assert texts[-1] == str(caught.value) and texts.count(str(caught.value)) == 1, texts
    assert fake.submits == 0
