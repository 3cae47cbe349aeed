"""Everything a user can get wrong fails before anything is encoded, sent or charged, with a message saying what to change."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from helpers import data_uri_size, image_batch, node_inputs, run_node
from runcomfy_seedream.api.errors import ConfigurationError, InputError

TEN_FRAMES = image_batch(10, 32, 32)
CONFIG = ConfigurationError

# (case, inputs to change, error type, words the message must contain)
CASES = [
    ("no reference", {"image_1": None}, InputError, ["image_1", "at least one"]),
    ("11 references", {"image_1": TEN_FRAMES, "image_2": image_batch(1, 32, 32)}, InputError, ["11", "at most 10"]),
    ("refs + max_images > 15", {"image_1": TEN_FRAMES, "max_images": 6}, InputError, ["max_images", "cannot exceed 15", "5 or less"]),
    ("aspect 1:4", {"image_1": image_batch(1, 200, 50)}, InputError, ["image_1", "50x200", "1:3 and 3:1"]),
    ("aspect 4:1", {"image_1": image_batch(1, 50, 200)}, InputError, ["image_1", "200x50", "1:3 and 3:1"]),
    ("exactly 3:1", {"image_1": image_batch(1, 30, 90)}, InputError, ["1:3 and 3:1"]),
    ("10x10 image", {"image_1": image_batch(1, 10, 10)}, InputError, ["image_1", "10x10", "more than 14 px"]),
    ("14 px side", {"image_2": image_batch(1, 14, 30)}, InputError, ["image_2", "more than 14 px"]),
    ("second frame named", {"image_1": image_batch(2, 32, 32), "image_2": image_batch(3, 20, 80)}, InputError, ["image_2 frame 1"]),
    ("empty prompt", {"prompt": "   "}, InputError, ["prompt", "is empty", "how many"]),
    ("601-character prompt", {"prompt": "x" * 601}, InputError, ["prompt", "601", "at most 600", "by 1"]),
    ("http url", {"image_urls": "http://example.com/a.png"}, InputError, ["image_urls line 1", "https"]),
    ("file url", {"image_urls": "file:///etc/passwd"}, InputError, ["image_urls line 1", "https"]),
    ("javascript url", {"image_urls": "javascript:alert(1)"}, InputError, ["image_urls line 1", "https"]),
    ("malformed url", {"image_urls": "https://exa mple.com/a.png"}, InputError, ["image_urls line 1", "spaces"]),
    ("bad port", {"image_urls": "https://example.com:99999/a.png"}, InputError, ["not a valid URL"]),
    ("private host url", {"image_urls": "https://192.168.1.20/a.png"}, InputError, ["cannot reach"]),
    ("localhost url", {"image_urls": "https://localhost/a.png"}, InputError, ["cannot reach"]),
    ("url with password", {"image_urls": "https://me:secret@example.com/a.png"}, InputError, ["password"]),
    ("wrong rank", {"image_1": torch.rand(32, 32, 3)}, InputError, ["image_1", "[batch, height, width, channels]"]),
    ("wrong dtype", {"image_1": torch.zeros((1, 32, 32, 3), dtype=torch.uint8)}, InputError, ["image_1", "uint8"]),
    ("not a tensor", {"image_2": "a string"}, InputError, ["image_2", "not an IMAGE"]),
    ("max_images 0", {"max_images": 0}, InputError, ["max_images", "1 to 15"]),
    ("max_images 16", {"max_images": 16}, InputError, ["max_images", "1 to 15"]),
    ("unknown size", {"image_size": "1024:1024 (1:1)"}, InputError, ["image_size", "2048:2048 (1:1)"]),
    ("negative seed", {"seed": -1}, InputError, ["seed", "0 to 2147483647"]),
    ("unknown optimize", {"optimize_prompt": "best"}, InputError, ["optimize_prompt", "'fast'"]),
    ("unknown mode", {"sequential_image_generation": "on"}, InputError, ["sequential_image_generation", "'auto'"]),
    ("aspect 0.329", {"image_1": image_batch(1, 1000, 329)}, InputError, ["image_1", "329x1000", "more than 0.33"]),
    ("zero-height image", {"image_1": torch.rand(1, 0, 32, 3)}, InputError, ["image_1", "32x0", "more than 14 px"]),
    ("five channels", {"image_1": image_batch(1, 32, 32, channels=5)}, InputError, ["image_1", "channels"]),
    ("lone surrogate in the prompt", {"prompt": "Generate 3 images \ud800 of a cat"}, InputError, ["prompt", "surrogate"]),
    ("seed above the maximum", {"seed": 2147483648}, InputError, ["seed", "0 to 2147483647"]),
    ("max_images not whole", {"max_images": 3.5}, InputError, ["max_images", "whole number"]),
    ("data URI as a URL", {"image_urls": "data:image/png;base64,AAAA"}, InputError, ["image_urls line 1", "https"]),
    ("decimal IP url", {"image_urls": "https://2130706433/a.png"}, InputError, ["image_urls line 1", "cannot reach"]),
    ("short-form IP url", {"image_urls": "https://127.1/a.png"}, InputError, ["image_urls line 1", "cannot reach"]),
    ("hex IP url", {"image_urls": "https://0x7f000001/a.png"}, InputError, ["image_urls line 1", "cannot reach"]),
    ("IPv6 loopback url", {"image_urls": "https://[::1]/a.png"}, InputError, ["image_urls line 1", "cannot reach"]),
    ("link-local url", {"image_urls": "https://169.254.169.254/a.png"}, InputError, ["cannot reach"]),
    ("6to4 loopback url", {"image_urls": "https://[2002:7f00:1::1]/a.png"}, InputError, ["cannot reach"]),
    ("lone surrogate in a url", {"image_urls": "https://example.com/\ud800.png"}, InputError, ["image_urls line 1", "surrogate"]),
    # Tokens are checked where they are read, and the message names the source, never the value.
    (
        "token with a line break",
        {"_env": {"RUNCOMFY_API_TOKEN": "tok\r\nX-Injected: 1"}},
        ConfigurationError,
        ["RUNCOMFY_API_TOKEN", "line break"],
    ),
    ("token with a space", {"_env": {"RUNCOMFY_API_TOKEN": "tok en-12345"}}, ConfigurationError, ["RUNCOMFY_API_TOKEN", "space"]),
    ("token too short", {"_env": {"RUNCOMFY_API_TOKEN": "abc"}}, ConfigurationError, ["RUNCOMFY_API_TOKEN", "3 characters"]),
    ("token with a control character", {"_env": {"RUNCOMFY_API_TOKEN": "token\x07bell"}}, ConfigurationError, ["control"]),
    ("token with non-ASCII", {"_env": {"RUNCOMFY_API_TOKEN": "tökenvalue1"}}, ConfigurationError, ["non-ASCII"]),
    (
        "second variable's token",
        {"_env": {"RUNCOMFY_API_TOKEN": "", "RUNCOMFY_TOKEN": "a\tb-12345"}},
        ConfigurationError,
        ["RUNCOMFY_TOKEN"],
    ),
    ("CLI token file with a line break", {"_cli_token": "first-half\nsecond-half"}, ConfigurationError, ["token file", "line break"]),
    ("settings token with a space", {"_settings_token": "from settings 123"}, ConfigurationError, ["ComfyUI settings", "space"]),
    ("CLI token file over 64 KiB", {"_cli_file": b'{"token": "' + b"t" * 70_000 + b'"}'}, CONFIG, ["token.json", "larger than 64 KiB"]),
    ("CLI token file a JSON list", {"_cli_file": b'["rc_listed_token_123"]'}, CONFIG, ["token.json", "malformed", "JSON list"]),
    ("CLI token file empty", {"_cli_file": b""}, CONFIG, ["token.json", "is empty"]),
    ("CLI token file without a token", {"_cli_file": b'{"user": "rc_other_entry_123"}'}, CONFIG, ["token.json", 'no "token" entry']),
    ("settings token file malformed", {"_settings_file": b'{"token": "rc_cut_off_123'}, CONFIG, ["api_token.json", "not valid JSON"]),
    ("cache size not a number", {"_env": {"RUNCOMFY_SEEDREAM_CACHE_MB": "lots"}}, ConfigurationError, ["RUNCOMFY_SEEDREAM_CACHE_MB"]),
    (
        "batch budget of zero",
        {"_env": {"RUNCOMFY_SEEDREAM_BATCH_MB": "0"}},
        ConfigurationError,
        ["RUNCOMFY_SEEDREAM_BATCH_MB", "at least 1"],
    ),
]


def _arrange(changes: dict, monkeypatch, tmp_path) -> tuple[dict, list[str]]:
    """Node inputs, after putting the environment and token files in place; also the secrets to look for."""
    changes = dict(changes)
    secrets = []
    for name, value in changes.pop("_env", {}).items():
        monkeypatch.setenv(name, value)
        secrets.append(value)
    for key, path in (("_cli_token", tmp_path / ".config" / "runcomfy" / "token.json"), ("_settings_token", None)):
        if key in changes:
            token = changes.pop(key)
            path = path or tmp_path / ".cache" / "runcomfy-seedream" / "secrets" / "api_token.json"
            monkeypatch.setenv("RUNCOMFY_API_TOKEN", "")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"token": token}))
            secrets.append(token)
    for key, path in (("_cli_file", tmp_path / ".config" / "runcomfy" / "token.json"), ("_settings_file", None)):
        if key in changes:  # a file as it was found, whatever is in it
            data = changes.pop(key)
            path = path or tmp_path / ".cache" / "runcomfy-seedream" / "secrets" / "api_token.json"
            monkeypatch.setenv("RUNCOMFY_API_TOKEN", "")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            secrets.append(data.decode("latin-1").strip('{}[]"'))
    return changes, [s for s in secrets if len(s) > 4]


@pytest.mark.parametrize("case,changes,error,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_is_sent(fake, comfy, monkeypatch, tmp_path, caplog, case, changes, error, words):
    caplog.set_level(logging.DEBUG)
    changes, secrets = _arrange(changes, monkeypatch, tmp_path)
    with pytest.raises(error) as caught:
        run_node(**node_inputs(**changes))
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert fake.requests == [], "nothing may reach the service"
    assert fake.submits == 0, "nothing is paid"
    assert not any(t.startswith("Encoding") for t in comfy.progress_texts()), "nothing may be encoded"
    assert comfy.progress_texts()[-1] == message, "the refusal is the node's last line, kept under it after the run"
    for secret in secrets:
        assert secret not in message + repr(caught.value) + caplog.text, "the value is never shown"
        assert not any(secret in text for text in comfy.progress_texts()), "nor under the node"


def test_exactly_one_to_three_is_accepted_as_the_schema_says(fake, comfy):
    images, *_ = run_node(**node_inputs(image_1=image_batch(1, 90, 30)))  # width/height = 0.333 > 0.33
    assert images.shape[0] == 3 and fake.submits == 1


def test_downscaling_never_makes_a_size_the_schema_refuses():
    from runcomfy_seedream.api.references import encode_reference, prepare_reference
    from runcomfy_seedream.api.schema import check_reference_dimensions

    for width, height in ((299, 100), (100, 299), (5999, 2000)):
        noise = np.random.default_rng(width).random((height, width, 3), dtype=np.float32)
        encoded = encode_reference(prepare_reference("image_1", noise), max_file_bytes=20_000)
        size = data_uri_size(str(encoded.uri))
        check_reference_dimensions("image_1", *size)  # raises if the schema would refuse it
        assert size[0] < width and abs(size[0] - size[1] * width / height) <= 1.5  # aspect kept to the pixel


def test_ten_references_and_five_images_is_exactly_the_limit(fake, comfy):
    images, *_ = run_node(**node_inputs(image_1=TEN_FRAMES, max_images=5, prompt="Generate 5 images of the group."))
    assert images.shape[0] == 5
    assert fake.submits == 1


def test_missing_token_says_where_to_put_it_and_sends_nothing(fake, comfy, monkeypatch):
    monkeypatch.delenv("RUNCOMFY_API_TOKEN")
    with pytest.raises(ConfigurationError) as caught:
        run_node(**node_inputs())
    assert "RUNCOMFY_API_TOKEN" in str(caught.value) and "token.json" in str(caught.value)
    assert fake.requests == []


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "saved with a BOM"])
def test_token_from_the_cli_token_file(fake, comfy, monkeypatch, tmp_path, bom):
    monkeypatch.delenv("RUNCOMFY_API_TOKEN")
    token_file = tmp_path / ".config" / "runcomfy" / "token.json"
    token_file.parent.mkdir(parents=True)
    token_file.write_bytes(bom + json.dumps({"token": fake.behaviour.token}).encode())
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3


def test_plain_http_base_url_off_this_machine_is_refused(fake, comfy, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", "http://model-api.example.com/v1")
    with pytest.raises(ConfigurationError) as caught:
        run_node(**node_inputs())
    assert "unencrypted" in str(caught.value)
    assert fake.requests == []


def test_a_huge_reference_is_downscaled_to_fit_and_the_user_is_told(fake, comfy):
    wide = torch.rand((1, 2400, 7000, 3), dtype=torch.float32)
    run_node(**node_inputs(image_1=wide))
    from helpers import data_uri_size, submitted_payloads

    (payload,) = submitted_payloads(fake)
    width, height = data_uri_size(payload["images"][0])
    assert width < 6000 and abs(width / height - 7000 / 2400) < 0.01
    assert any("downscaled from 7000x2400" in t for t in comfy.progress_texts())


@pytest.mark.parametrize(
    "url,shown",
    [
        ("javascript:alert(1)", "uses javascript:;"),
        ("JavaScript:alert(1)", "uses JavaScript:;"),
        ("javascript://%0aalert(1)", "uses javascript://;"),
        ("data:image/png;base64,AAAA", "uses data:;"),
        ("file:///etc/passwd", "uses file://;"),
        ("ftp://files.example.com/a.png", "uses ftp://;"),
        ("http://example.com/a.png", "uses http://;"),
        ("HTTP://example.com/a.png", "uses HTTP://;"),
        ("example.com/a.png", "uses no scheme;"),
    ],
)
def test_a_refused_scheme_is_shown_as_it_was_typed(url, shown):
    from runcomfy_seedream.api.schema import check_image_url

    with pytest.raises(InputError) as caught:
        check_image_url("image_urls line 1", url)
    assert shown in str(caught.value), str(caught.value)
    assert "only public https:// URLs" in str(caught.value)


def test_a_long_scheme_is_shortened_in_the_message():
    from runcomfy_seedream.api.schema import check_image_url

    with pytest.raises(InputError) as caught:
        check_image_url("image_urls line 1", "x" * 300 + ":payload")
    assert len(str(caught.value)) < 400 and "x" * 30 not in str(caught.value).split("uses ")[1]
