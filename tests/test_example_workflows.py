"""The shipped example workflows match the node's inputs, so they load and run as saved, and carry no secret."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))
OUR_TYPE = "RunComfySeedream4EditSequential"
SOCKET_TYPES = {"IMAGE"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def widget_specs(node_class) -> list[tuple[str, tuple]]:
    """Widgets in the order the frontend stores them: required then optional, seed followed by its control value."""
    spec = node_class.INPUT_TYPES()
    widgets = []
    for section in ("required", "optional"):
        for name, definition in spec.get(section, {}).items():
            kind = definition[0]
            if isinstance(kind, str) and kind in SOCKET_TYPES:
                continue
            widgets.append((name, definition))
            if definition[1].get("control_after_generate"):
                widgets.append(("control_after_generate", ("COMBO", {})))
    return widgets


def check_value(name: str, definition: tuple, value) -> None:
    kind, options = definition[0], definition[1]
    if name == "control_after_generate":
        assert value in CONTROL_VALUES
    elif isinstance(kind, list):
        assert value in kind, f"{name}={value!r} is not one of {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and options["min"] <= value <= options["max"], f"{name}={value!r}"
    elif kind == "STRING":
        assert isinstance(value, str), f"{name}={value!r}"
    else:  # pragma: no cover - a new widget type needs a rule here
        raise AssertionError(f"no rule for {name} of type {kind}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_widget_values_fit_the_node_inputs(path):
    workflow = json.loads(path.read_text())
    ours = [node for node in workflow["nodes"] if node["type"] == OUR_TYPE]
    assert ours, "each example uses the node"
    node_class = NODE_CLASS_MAPPINGS[OUR_TYPE]
    specs = widget_specs(node_class)
    for node in ours:
        values = node["widgets_values"]
        assert len(values) == len(specs), f"{len(values)} widget values for {len(specs)} widgets"
        for (name, definition), value in zip(specs, values, strict=True):
            check_value(name, definition, value)
        prompt = dict(zip([n for n, _ in specs], values, strict=True))["prompt"]
        assert 0 < len(prompt) <= 600


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_links_connect_matching_types(path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    node_class = NODE_CLASS_MAPPINGS[OUR_TYPE]
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        out = nodes[source]["outputs"][source_slot]
        into = nodes[target]["inputs"][target_slot]
        assert out["type"] == into["type"] == kind and link_id in out["links"] and into["link"] == link_id
        if nodes[source]["type"] == OUR_TYPE:
            assert kind == node_class.RETURN_TYPES[source_slot] and out["name"] == node_class.RETURN_NAMES[source_slot]
        if nodes[target]["type"] == OUR_TYPE:  # an image socket, or the prompt fed by "Prompt lines"
            assert (into["name"].startswith("image_") and kind == "IMAGE") or (into["name"] == "prompt" and kind == "STRING")
        if nodes[source]["type"] == "RunComfyPromptLines":
            assert into["name"] == "prompt" and NODE_CLASS_MAPPINGS["RunComfyPromptLines"].OUTPUT_IS_LIST == (True,)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_no_secret_in_a_shared_workflow(path):
    text = path.read_text()
    assert not re.search(r"Bearer\s+\S{8,}", text)
    assert not re.search(r'"(api_key|token|api_token)"\s*:\s*"[^"]+"', text)
    assert "fake-runcomfy-token" not in text
