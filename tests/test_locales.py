"""The Chinese translations ComfyUI shows (locales/zh, read by ComfyUI's /i18n route): every node, input, output and
setting of the pack has one, none is left for an input that no longer exists, and each is plain text to the frontend."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

from runcomfy_seedream.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
ZH = ROOT / "locales" / "zh"  # "zh" is the frontend's code for simplified Chinese (setting Comfy.Locale)
SCRIPTS = sorted((ROOT / "web" / "js").glob("*.js"))


def locale(name: str) -> dict:
    return json.loads((ZH / f"{name}.json").read_text(encoding="utf-8"))


def shown_inputs(node_class) -> dict[str, dict]:
    """The inputs the frontend shows, by name, with their options; a seed brings its 'control after generate' widget."""
    spec = node_class.INPUT_TYPES()
    inputs = {}
    for section in ("required", "optional"):
        for name, definition in spec.get(section, {}).items():
            options = definition[1] if len(definition) > 1 else {}
            inputs[name] = options
            if options.get("control_after_generate"):
                inputs["control_after_generate"] = {}
    return inputs


def settings_in_scripts() -> dict[str, list[str]]:
    """Each setting the pack's scripts register (an id followed by its category), with its category path."""
    found = {}
    for script in SCRIPTS:
        for setting_id, category in re.findall(r'id:\s*"([^"]+)",\s*category:\s*\[([^\]]*)\]', script.read_text(encoding="utf-8")):
            found[setting_id] = re.findall(r'"([^"]*)"', category)
    return found


def commands_in_scripts() -> list[str]:
    return [command for script in SCRIPTS for command in re.findall(r'id:\s*"([^"]+)",\s*label:', script.read_text(encoding="utf-8"))]


def i18n_key(text: str) -> str:
    return text.replace(".", "_")  # the frontend's normalizeI18nKey


@pytest.mark.parametrize("node_type", sorted(NODE_CLASS_MAPPINGS))
def test_every_node_input_and_output_has_a_chinese_name_and_tooltip(node_type):
    node_class = NODE_CLASS_MAPPINGS[node_type]
    entry = locale("nodeDefs")[node_type]
    assert entry["display_name"] and entry["display_name"] != NODE_DISPLAY_NAME_MAPPINGS[node_type]
    assert entry["description"]
    inputs = shown_inputs(node_class)
    assert set(entry["inputs"]) == {i18n_key(name) for name in inputs}  # a new input needs one; a removed one leaves none
    for name, options in inputs.items():
        translated = entry["inputs"][i18n_key(name)]
        assert translated["name"] and translated["name"] != name
        assert bool(translated.get("tooltip")) == bool(options.get("tooltip")), name
    assert set(entry["outputs"]) == {str(index) for index in range(len(node_class.RETURN_TYPES))}
    for index, output in entry["outputs"].items():
        assert output["name"] and output["name"] != node_class.RETURN_NAMES[int(index)]
        assert output["tooltip"] and bool(node_class.OUTPUT_TOOLTIPS[int(index)])


def test_every_setting_and_command_of_the_pack_has_a_chinese_entry():
    settings, main = locale("settings"), locale("main")
    registered = settings_in_scripts()
    assert set(registered) == {"RunComfy.APIToken", "RunComfy.SpendingLimit"}  # the reading of the scripts finds them
    assert set(settings) == {i18n_key(setting_id) for setting_id in registered}
    for setting_id, category in registered.items():
        assert settings[i18n_key(setting_id)]["name"] and settings[i18n_key(setting_id)]["tooltip"]
        for part in category:
            assert main["settingsCategories"][i18n_key(part)], part
    assert commands_in_scripts() == ["RunComfy.SetAPIToken"]
    assert {command: entry["label"] for command, entry in locale("commands").items()} == {"RunComfy_SetAPIToken": "RunComfy：设置 API 令牌"}


def every_text(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from every_text(item)
    else:
        yield value


@pytest.mark.parametrize("name", ["nodeDefs", "settings", "main", "commands"])
def test_every_translation_is_plain_text_to_the_frontend(name):
    """The frontend compiles names (and, in older versions, tooltips) as vue-i18n messages: { } would be a placeholder,
    | a plural and @ a link, and the text shown would not be the text written."""
    texts = list(every_text(locale(name)))
    assert texts and all(isinstance(text, str) and text.strip() for text in texts)
    assert [text for text in texts if re.search(r"[{}|@]", text)] == []
    assert [text for text in texts if not re.search(r"[\u4e00-\u9fff]", text) and text != "RunComfy"] == []  # written in Chinese


def test_the_translations_are_in_the_package():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = setuptools["package-data"]["runcomfy_seedream"]
    files = [PurePosixPath(path.relative_to(ROOT).as_posix()) for path in (ROOT / "locales").rglob("*") if path.is_file()]
    assert files and [file for file in files if not any(file.match(pattern) for pattern in patterns)] == []
