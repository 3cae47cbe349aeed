"""The pure rules, called as functions: the schema's limits on both sides of each one, the request's wire format,
and the fingerprint that names a paid request. Each refusal row checks what the user is shown: the field and
the words that say what to change. (The node-level tables in test_input_errors.py and test_fault_matrix.py run
the same rules end to end.)"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runcomfy_seedream.api.addresses import is_private_host, is_public_address
from runcomfy_seedream.api.batch import MAX_LISTED_FAILURES, failure_list, item_numbers
from runcomfy_seedream.api.errors import InputError
from runcomfy_seedream.api.records import request_fingerprint
from runcomfy_seedream.api.references import encode_reference, prepare_reference
from runcomfy_seedream.api.schema import (
    IMAGE_SIZES,
    DataUri,
    EditSequentialRequest,
    check_image_url,
    check_max_images,
    check_prompt,
    check_reference_count,
    check_reference_dimensions,
    check_seed,
)
from runcomfy_seedream.fake_service.jobs import check_payload

URL = "https://example.com/ref.png"
PNG = DataUri("image/png", base64.b64encode(b"\x89PNG fake file"))


def refused(call, *args) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args)
    return caught.value


def assert_told(error: InputError, field: str, phrases: list[str]) -> None:
    message = str(error)
    assert error.field == field, message
    assert message.startswith(f"{field}: "), message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} missing from: {message}"


# --- the prompt: 1 to 600 characters of sendable text ---------------------------------------------------------

PROMPTS_ACCEPTED = [
    ("one character", "a"),
    ("600 characters", "x" * 600),
    ("600 characters, not bytes", "海" * 600),
    ("spaces around text", "  a cat  "),
]

PROMPTS_REFUSED = [
    ("601 characters", "x" * 601, ["has 601 characters", "at most 600", "Shorten it by 1 character."]),
    ("602 characters", "x" * 602, ["has 602 characters", "Shorten it by 2 characters."]),
    ("empty", "", ["is empty", "say how many"]),
    ("only spaces", " \n\t ", ["is empty"]),
    ("missing", None, ["is empty"]),
    ("a number", 42, ["is a int", "give the prompt as text"]),
    ("a lone surrogate", "a cat \ud800", ["unpaired surrogate at position 6", "Retype"]),
]


@pytest.mark.parametrize("case,prompt", PROMPTS_ACCEPTED, ids=[row[0] for row in PROMPTS_ACCEPTED])
def test_a_prompt_within_the_limits_is_accepted_as_written(case, prompt):
    assert check_prompt(prompt) == prompt


@pytest.mark.parametrize("case,prompt,phrases", PROMPTS_REFUSED, ids=[row[0] for row in PROMPTS_REFUSED])
def test_a_prompt_outside_the_limits_is_refused_with_the_fix(case, prompt, phrases):
    assert_told(refused(check_prompt, prompt), "prompt", phrases)


# --- max_images 1..15 and seed 0..2147483647: whole numbers, never booleans -------------------------------------

NUMBERS = [
    (check_max_images, 1, 1),
    (check_max_images, 15, 15),
    (check_max_images, np.int64(7), 7),  # from a script's numpy arithmetic
    (check_seed, None, None),  # no seed: the service picks one
    (check_seed, 0, 0),
    (check_seed, 2_147_483_647, 2_147_483_647),
    (check_seed, np.int32(5), 5),
]

NUMBERS_REFUSED = [
    (check_max_images, 0, "max_images", "from 1 to 15"),
    (check_max_images, 16, "max_images", "from 1 to 15"),
    (check_max_images, True, "max_images", "is True"),
    (check_max_images, False, "max_images", "is False"),
    (check_max_images, 3.0, "max_images", "whole number"),
    (check_max_images, "3", "max_images", "whole number"),
    (check_max_images, None, "max_images", "whole number"),
    (check_seed, -1, "seed", "from 0 to 2147483647"),
    (check_seed, 2_147_483_648, "seed", "from 0 to 2147483647"),
    (check_seed, True, "seed", "is True"),
    (check_seed, 1.0, "seed", "whole number"),
    (check_seed, "42", "seed", "whole number"),
]


@pytest.mark.parametrize("check,value,result", NUMBERS, ids=lambda v: repr(v) if not callable(v) else v.__name__)
def test_a_number_within_the_limits_is_accepted_as_a_plain_int(check, value, result):
    checked = check(value)
    assert checked == result and type(checked) is type(result)


@pytest.mark.parametrize("check,value,field,phrase", NUMBERS_REFUSED, ids=lambda v: repr(v) if not callable(v) else v.__name__)
def test_a_number_outside_the_limits_is_refused_with_the_range(check, value, field, phrase):
    assert_told(refused(check, value), field, [phrase])


# --- how many references: 1..10, and references + max_images <= 15 for a set ------------------------------------

COUNTS_ACCEPTED = [
    (1, 1, "auto"),
    (10, 5, "auto"),  # 15: exactly the limit
    (1, 14, "auto"),
    (10, 15, "disabled"),  # one image comes back: max_images does not add up
]

COUNTS_REFUSED = [
    (0, 3, "auto", "image_1", ["no reference image", "Connect at least one IMAGE", "image_urls"]),
    (11, 1, "auto", "images", ["11 reference images", "at most 10", "pick fewer frames"]),
    (11, 1, "disabled", "images", ["at most 10"]),
    (10, 6, "auto", "max_images", ["10 references + max_images 6 = 16", "cannot exceed 15", "Set max_images to 5 or less"]),
    (1, 15, "auto", "max_images", ["= 16", "Set max_images to 14 or less"]),
]


@pytest.mark.parametrize("count,max_images,mode", COUNTS_ACCEPTED)
def test_a_reference_count_within_the_limits_is_accepted(count, max_images, mode):
    check_reference_count(count, max_images, mode)


@pytest.mark.parametrize("count,max_images,mode,field,phrases", COUNTS_REFUSED, ids=[f"{r[0]}+{r[1]} {r[2]}" for r in COUNTS_REFUSED])
def test_a_reference_count_outside_the_limits_is_refused_with_the_fix(count, max_images, mode, field, phrases):
    assert_told(refused(check_reference_count, count, max_images, mode), field, phrases)


# --- a reference's size: each side more than 14 px, width/height more than 0.33 and less than 3 -------------------

SIZES_ACCEPTED = [(15, 15), (15, 45), (30, 90), (90, 31), (2999, 1000), (34, 100), (5999, 2000)]  # 30x90: exactly 1:3

SIZES_REFUSED = [
    (14, 30, ["is 14x30 px", "more than 14 px", "upscale"]),
    (30, 14, ["is 30x14 px", "more than 14 px"]),
    (0, 32, ["is 0x32 px", "more than 14 px"]),
    (90, 30, ["is 90x30 px (aspect 3)", "3:1 itself excluded", "Crop or pad"]),  # exactly 3:1
    (33, 100, ["aspect 0.33", "more than 0.33"]),
    (3001, 1000, ["aspect 3", "less than 3"]),
]


@pytest.mark.parametrize("width,height", SIZES_ACCEPTED, ids=[f"{w}x{h}" for w, h in SIZES_ACCEPTED])
def test_a_reference_size_within_the_limits_is_accepted(width, height):
    check_reference_dimensions("image_1", width, height)


@pytest.mark.parametrize("width,height,phrases", SIZES_REFUSED, ids=[f"{r[0]}x{r[1]}" for r in SIZES_REFUSED])
def test_a_reference_size_outside_the_limits_is_refused_naming_the_input(width, height, phrases):
    assert_told(refused(check_reference_dimensions, "image_2 frame 3", width, height), "image_2 frame 3", phrases)


@pytest.mark.parametrize(
    "width,height,sent,note",
    [
        (5999, 2000, (5999, 2000), None),
        (6000, 2001, (5999, 2001), "downscaled from 6000x2001 to 5999x2001 to fit the 6000 px"),
        (2001, 6000, (2001, 5999), "downscaled from 2001x6000 to 2001x5999"),
    ],
    ids=["5999 kept", "6000 wide", "6000 high"],
)
def test_a_side_of_6000_px_or_more_is_downscaled_below_it_and_the_user_is_told(width, height, sent, note):
    encoded = encode_reference(prepare_reference("image_1", np.full((height, width, 3), 128, dtype=np.uint8)))
    with Image.open(io.BytesIO(base64.b64decode(encoded.uri.base64))) as image:
        assert image.size == sent
    if note is None:
        assert encoded.notes == ()
    else:
        (told,) = encoded.notes
        assert note in told


# --- reference URLs: public https, nothing the service cannot reach, no credentials -----------------------------

URLS_ACCEPTED = [
    (URL, URL),
    ("  https://example.com/a.png \n", "https://example.com/a.png"),
    ("HTTPS://example.com/a.png", "HTTPS://example.com/a.png"),
    ("https://8.8.8.8/a.png", "https://8.8.8.8/a.png"),
    ("https://[2606:4700:4700::1111]/a.png", "https://[2606:4700:4700::1111]/a.png"),
    ("https://local.example.com/a.png", "https://local.example.com/a.png"),  # a public name that starts with "local"
]

URLS_REFUSED = [
    ("", ["is empty", "one https URL per line"]),
    (None, ["is empty"]),
    ("http://example.com/a.png", ["uses http:", "only public https:// URLs", "connect it as an IMAGE"]),
    ("ftp://example.com/a.png", ["uses ftp:"]),
    ("example.com/a.png", ["uses no scheme"]),
    ("data:image/png;base64,AAAA", ["uses data:"]),
    ("https://exa mple.com/a.png", ["contains spaces", "one URL per line"]),
    ("https://example.com:99999/a.png", ["is not a valid URL"]),
    ("https://[::1/a.png", ["is not a valid URL"]),
    ("https:///a.png", ["has no host name"]),
    ("https://me:secret@example.com/a.png", ["user name or password", "pre-signed or public URL"]),
    ("https://example.com/\ud800.png", ["unpaired surrogate", "retype"]),
    ("https://localhost/a.png", ["points at localhost", "cannot reach", "public https URL"]),
    ("https://10.0.0.7/a.png", ["points at 10.0.0.7", "cannot reach"]),
    ("https://2130706433/a.png", ["cannot reach"]),
    ("https://[::ffff:127.0.0.1]/a.png", ["cannot reach"]),
    ("https://nas.local/a.png", ["cannot reach"]),
]


@pytest.mark.parametrize("url,normalised", URLS_ACCEPTED, ids=[row[0].strip() for row in URLS_ACCEPTED])
def test_a_public_https_url_is_accepted_without_surrounding_space(url, normalised):
    assert check_image_url("image_urls line 2", url) == normalised


@pytest.mark.parametrize("url,phrases", URLS_REFUSED, ids=[repr(row[0]) for row in URLS_REFUSED])
def test_a_url_the_service_cannot_or_must_not_fetch_is_refused_naming_the_line(url, phrases):
    error = refused(check_image_url, "image_urls line 2", url)
    assert_told(error, "image_urls line 2", phrases)
    assert "secret" not in str(error), "a password in a URL is never repeated"


PRIVATE_HOSTS = [
    "localhost",
    "LOCALHOST.",
    "printer.localhost",
    "nas.local",
    "db.internal",
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "0",
    "2130706433",  # 127.0.0.1 as one number
    "127.1",
    "0x7f000001",
    "0177.0.0.1",  # octal
    "::1",
    "[::1]",
    "fe80::1%eth0",
    "fc00::1",
    "fec0::1",  # site-local (deprecated, still routed inside some networks): Python calls it global
    "::ffff:10.0.0.1",  # IPv4-mapped
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]
PUBLIC_HOSTS = ["example.com", "model-api.runcomfy.net", "local.example.com", "internal", "8.8.8.8", "2606:4700:4700::1111"]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_hosts_the_public_internet_cannot_reach_are_private(host):
    assert is_private_host(host) is True


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_names_and_addresses_are_not_private(host):
    assert is_private_host(host) is False


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("::ffff:8.8.8.8", True),  # judged by the IPv4 address it embeds
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2606:4700:4700::1111", True),
        ("192.0.2.1", False),  # documentation range
        ("224.0.0.1", False),  # multicast
        ("ff02::1", False),
        ("240.0.0.1", False),  # reserved
        ("::", False),
        ("fe80::1%eth0", False),  # a scope id is read, not refused
        ("100.64.0.1", False),
        ("not an address", False),
    ],
)
def test_only_globally_routable_unicast_addresses_are_public(address, public):
    assert is_public_address(address) is public


# --- the whole request: validate() --------------------------------------------------------------------------

PROMPT_580 = "a" * 580  # 580 + ". " + "Generate 3 images." = 600: exactly the limit once the count is added

REQUESTS_ACCEPTED = [
    ("count added up to 600", EditSequentialRequest(PROMPT_580, images=(URL,))),
    ("as written, 600", EditSequentialRequest("a" * 600, images=(URL,), count_in_prompt="as written")),
    ("10 references + 5", EditSequentialRequest("Generate 5 images.", max_images=5, images=(URL,) * 10)),
    ("a data reference", EditSequentialRequest("Generate 1 image.", max_images=1, images=(PNG,))),
    ("every size", EditSequentialRequest("Generate 2 images.", image_size=IMAGE_SIZES[-1], images=(URL,))),
]

REQUESTS_REFUSED = [
    (
        "count added past 600",
        EditSequentialRequest(PROMPT_580 + "a", images=(URL,)),
        "prompt",
        ["makes 601", "by 1 character", "'as written'"],
    ),
    ("601 as written", EditSequentialRequest("a" * 601, images=(URL,), count_in_prompt="as written"), "prompt", ["has 601 characters"]),
    ("no reference", EditSequentialRequest("Generate 1 image."), "image_1", ["at least one"]),
    ("11 URLs", EditSequentialRequest("Generate 1 image.", max_images=1, images=(URL,) * 11), "images", ["at most 10"]),
    ("10 URLs + 6", EditSequentialRequest("Generate 6 images.", max_images=6, images=(URL,) * 10), "max_images", ["5 or less"]),
    ("images as one string", EditSequentialRequest("Generate 1 image.", images=URL), "images", ["is a str", "give a list"]),
    ("an image that is a number", EditSequentialRequest("Generate 1 image.", images=(URL, 7)), "images item 2", ["is a int"]),
    ("a GIF", EditSequentialRequest("p", images=(DataUri("image/gif", b"AAAA"),)), "images item 1", ["image/png and image/jpeg"]),
    ("not base64", EditSequentialRequest("p", images=(DataUri("image/png", b"!!!!"),)), "images item 1", ["not base64"]),
    ("empty data", EditSequentialRequest("p", images=(DataUri("image/png", b""),)), "images item 1", ["is empty"]),
    ("second URL http", EditSequentialRequest("p", images=(URL, "http://example.com/b.png")), "image_urls line 2", ["https"]),
    ("max_images 16", EditSequentialRequest("p", max_images=16, images=(URL,)), "max_images", ["from 1 to 15"]),
    ("seed -1", EditSequentialRequest("p", seed=-1, images=(URL,)), "seed", ["from 0 to 2147483647"]),
    ("unknown size", EditSequentialRequest("p", image_size="1024:1024", images=(URL,)), "image_size", ["'2048:2048 (1:1)'"]),
    ("unknown optimize", EditSequentialRequest("p", optimize_prompt="max", images=(URL,)), "optimize_prompt", ["'standard'"]),
    (
        "unknown mode",
        EditSequentialRequest("p", sequential_image_generation="on", images=(URL,)),
        "sequential_image_generation",
        ["'disabled'"],
    ),
    ("unknown count mode", EditSequentialRequest("p", count_in_prompt="never", images=(URL,)), "count_in_prompt", ["'as written'"]),
]


@pytest.mark.parametrize("case,request_", REQUESTS_ACCEPTED, ids=[row[0] for row in REQUESTS_ACCEPTED])
def test_a_request_within_every_limit_is_accepted(case, request_):
    assert request_.validate() == request_


@pytest.mark.parametrize("case,request_,field,phrases", REQUESTS_REFUSED, ids=[row[0] for row in REQUESTS_REFUSED])
def test_a_request_breaking_a_rule_is_refused_with_the_field_and_the_fix(case, request_, field, phrases):
    assert_told(refused(request_.validate), field, phrases)


def test_references_still_to_be_encoded_count_before_any_is_encoded():
    urls_only = EditSequentialRequest("Generate 5 images.", max_images=5, images=(URL,))
    assert urls_only.validate(encoded_references=9) == urls_only  # 9 + 1 URL + 5 = 15
    assert_told(refused(urls_only.validate, 10), "images", ["11 reference images"])


def test_validate_returns_the_request_as_sent_plain_ints_and_trimmed_urls():
    checked = EditSequentialRequest("Generate 2 images.", max_images=np.int64(2), seed=np.int32(9), images=(f"  {URL} ",)).validate()
    assert checked.images == (URL,) and type(checked.max_images) is int and type(checked.seed) is int


@pytest.mark.parametrize(
    "size,accepted",
    [
        (9_999_999, True),
        (10_000_003, False),
        (10_000_000, False),
        (10_000_001, False),
        (10_000_002, False),
    ],
    ids=["10 MB - 1", "10 MB + 3", "10 MB", "10 MB + 1", "10 MB + 2"],
)
def test_a_data_reference_must_be_a_file_under_10_mb(size, accepted):
    request = EditSequentialRequest("Generate 1 image.", max_images=1, images=(DataUri("image/png", base64.b64encode(bytes(size))),))
    if accepted:
        request.validate()
    else:
        assert_told(refused(request.validate), "images item 1", ["each file must be under 10 MB", "smaller image"])


# --- the prompt as sent: the count sentence, and what the user is told before paying ------------------------------

ADDED = [
    ("no count in a set", dict(prompt="This character at the beach"), "Generate 3 images."),
    ("one image is singular", dict(prompt="This character at the beach", max_images=1), "Generate 1 image."),
    ("the count is stated", dict(prompt="Four images of this character"), None),
    ("as written", dict(prompt="This character at the beach", count_in_prompt="as written"), None),
    ("a single image", dict(prompt="This character at the beach", sequential_image_generation="disabled"), None),
]


@pytest.mark.parametrize("case,fields,sentence", ADDED, ids=[row[0] for row in ADDED])
def test_the_count_sentence_is_added_only_to_a_set_whose_prompt_states_no_count(case, fields, sentence):
    request = EditSequentialRequest(**fields)
    assert request.added_sentence == sentence
    assert request.text == (fields["prompt"] if sentence is None else f"{fields['prompt']}. {sentence}")
    assert request.settings()["prompt"] == request.text  # what is sent is what is paid for and fingerprinted


NOTES = [
    ("added", dict(prompt="At the beach", max_images=4), ("added to the prompt: 'Generate 4 images.'",)),
    ("stated and equal", dict(prompt="Generate 4 images", max_images=4), ()),
    ("nothing added as written", dict(prompt="At the beach", count_in_prompt="as written"), ()),
    (
        "more stated than allowed",
        dict(prompt="Generate 6 images", max_images=4),
        ("the prompt asks for 6 images ('6 images'), max_images is 4: at most 4 will be made and 4 are charged",),
    ),
    (
        "fewer stated than charged",
        dict(prompt="Generate 2 images", max_images=4),
        ("the prompt asks for 2 images ('2 images'), max_images is 4: at most 2 will be made and 4 are charged",),
    ),
    (
        "a set asked of a single image",
        dict(prompt="Generate 4 images", sequential_image_generation="disabled"),
        ("the prompt asks for 4 images ('4 images'), but sequential_image_generation is disabled: exactly 1 will be made",),
    ),
    ("one asked of a single image", dict(prompt="Generate 1 image", sequential_image_generation="disabled"), ()),
]


@pytest.mark.parametrize("case,fields,notes", NOTES, ids=[row[0] for row in NOTES])
def test_the_user_is_told_what_the_stated_count_means_for_what_is_made_and_charged(case, fields, notes):
    assert EditSequentialRequest(**fields).count_notes() == notes


@pytest.mark.parametrize("mode,max_images,sent", [("auto", 7, 7), ("auto", 1, 1), ("disabled", 7, 1)])
def test_a_single_image_sends_a_maximum_of_one_so_no_more_is_charged(mode, max_images, sent):
    request = EditSequentialRequest("Generate 1 image.", max_images=max_images, sequential_image_generation=mode, images=(URL,))
    assert request.max_images_sent == sent
    assert json.loads(b"".join(request.body_pieces()))["sequential_image_generation_options"] == sent


# --- the wire format -------------------------------------------------------------------------------------------------

SCHEMA_FIELDS = {
    "images",
    "text",
    "sequential_image_generation_options",
    "image_size",
    "optimize_prompt_options",
    "sequential_image_generation",
}

BODIES = [
    ("defaults", EditSequentialRequest("Generate 3 images.", images=(URL,))),
    ("a seed of 0", EditSequentialRequest("Generate 3 images.", seed=0, images=(URL,))),
    ("the largest seed", EditSequentialRequest("Generate 3 images.", seed=2_147_483_647, images=(URL,))),
    ("data first, then URLs", EditSequentialRequest("Generate 2 images.", max_images=2, images=(URL,)).with_references([PNG, PNG])),
    ("text to escape", EditSequentialRequest('Say "cheese"\n\\ 海边 \u2028 é', images=('https://example.com/a"b\\c.png',))),
    ("every other choice", EditSequentialRequest("Generate 1 image.", 1, IMAGE_SIZES[-1], 5, "standard", "disabled", (URL,))),
]


@pytest.mark.parametrize("case,request_", BODIES, ids=[row[0] for row in BODIES])
def test_the_body_is_valid_json_with_the_schemas_field_names(case, request_):
    request_ = request_.validate()
    body = json.loads(b"".join(request_.body_pieces()))
    assert set(body) == SCHEMA_FIELDS | ({"seed"} if request_.seed is not None else set())
    assert body == {
        "images": [str(image) for image in request_.images],
        "text": request_.text,
        "sequential_image_generation_options": request_.max_images_sent,
        "image_size": request_.image_size,
        "optimize_prompt_options": request_.optimize_prompt,
        "sequential_image_generation": request_.sequential_image_generation,
        **({"seed": request_.seed} if request_.seed is not None else {}),
    }
    check_payload(body, inspect_pixels=False)  # the fake service's own reading of the published schema accepts it


def test_data_references_are_sent_before_urls_as_data_uris():
    request = EditSequentialRequest("Generate 2 images.", max_images=2, images=(URL,)).with_references([PNG])
    images = json.loads(b"".join(request.body_pieces()))["images"]
    assert images == ["data:image/png;base64," + PNG.base64.decode(), URL]


# --- the fingerprint: one name per paid request -----------------------------------------------------------------

BASE = dict(
    model_id="bytedance/seedream-4-0/edit-sequential",
    base_url="https://model-api.runcomfy.net/v1",
    settings=EditSequentialRequest("Generate 3 images.", seed=42).settings(),
    reference_digests=["a" * 64, "b" * 64],
    reference_urls=[URL],
)


def fingerprint(**changes) -> str:
    return request_fingerprint(**(BASE | changes))


def test_the_fingerprint_is_the_same_in_another_process(tmp_path):
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from pack_import import load_pack; load_pack()\n"
        "from runcomfy_seedream.api.records import request_fingerprint\n"
        "print(request_fingerprint(**json.loads(sys.argv[2])))\n"
    )
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    for hash_seed in ("0", "12345"):  # no dependence on hash randomisation or set order
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", script, scripts, json.dumps(BASE)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == fingerprint()


def test_the_fingerprint_takes_no_token_and_reveals_nothing_of_the_request():
    import inspect

    assert not any("token" in name or "credential" in name for name in inspect.signature(request_fingerprint).parameters)
    key = fingerprint()
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "spelling",
    [
        "https://model-api.runcomfy.net/v1",
        "https://MODEL-API.RunComfy.NET/v1",
        "HTTPS://model-api.runcomfy.net/v1",
        "https://model-api.runcomfy.net:443/v1",
        "https://model-api.runcomfy.net./v1",
        "https://model-api.runcomfy.net/v1/",
        "  https://model-api.runcomfy.net/v1\n",
    ],
)
def test_spellings_of_one_service_give_one_fingerprint(spelling):
    assert fingerprint(base_url=spelling) == fingerprint()


@pytest.mark.parametrize(
    "first,second",
    [
        ("http://127.0.0.1:80/v1", "http://127.0.0.1/v1"),
        ("http://[::1]:8765/v1", "http://[::1]:8765/v1/"),
        ("http://LOCALHOST.:8765", "http://localhost:8765/v1"),
    ],
)
def test_local_services_spelled_differently_are_one_service(first, second):
    assert fingerprint(base_url=first) == fingerprint(base_url=second)


def _changed_settings():
    settings = BASE["settings"]
    return [
        ("prompt", settings | {"prompt": settings["prompt"] + " "}),
        ("max_images", settings | {"max_images": 4}),
        ("image_size", settings | {"image_size": IMAGE_SIZES[0]}),
        ("seed", settings | {"seed": 43}),
        ("no seed", settings | {"seed": None}),
        ("optimize_prompt", settings | {"optimize_prompt": "standard"}),
        ("sequential_image_generation", settings | {"sequential_image_generation": "disabled"}),
        ("reference_format", settings | {"reference_format": "jpeg"}),
    ]


DIFFERENT = [
    *((f"setting {name}", {"settings": value}) for name, value in _changed_settings()),
    ("a pixel digest", {"reference_digests": ["a" * 64, "c" * 64]}),
    ("the references' order", {"reference_digests": ["b" * 64, "a" * 64]}),
    ("one reference fewer", {"reference_digests": ["a" * 64]}),
    ("a URL", {"reference_urls": ["https://example.com/other.png"]}),
    ("no URL", {"reference_urls": []}),
    ("a URL's case", {"reference_urls": [URL.upper()]}),
    ("the model", {"model_id": "bytedance/seedream-4-0/edit"}),
    ("another host", {"base_url": "https://model-api.example.com/v1"}),
    ("another port", {"base_url": "https://model-api.runcomfy.net:8443/v1"}),
    ("plain http", {"base_url": "http://model-api.runcomfy.net/v1"}),
]


@pytest.mark.parametrize("case,changes", DIFFERENT, ids=[row[0] for row in DIFFERENT])
def test_any_change_to_what_is_paid_for_gives_another_fingerprint(case, changes):
    assert fingerprint(**changes) != fingerprint()


def test_the_order_settings_are_listed_in_does_not_matter():
    reordered = dict(reversed(list(BASE["settings"].items())))
    assert list(reordered) != list(BASE["settings"]) and fingerprint(settings=reordered) == fingerprint()
    assert fingerprint(reference_digests=tuple(BASE["reference_digests"]), reference_urls=tuple(BASE["reference_urls"])) == fingerprint()


# --- how a batch names its failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "numbers,named",
    [([3], "item 3"), ([1, 2, 3], "items 1-3"), ([7, 2, 5, 6], "items 2, 5-7"), ([1, 3], "items 1, 3"), ([4, 5], "items 4-5")],
)
def test_item_numbers_are_named_in_order_with_runs_joined(numbers, named):
    assert item_numbers(numbers) == named


def test_items_failing_alike_share_one_reason_and_the_list_is_bounded():
    same = [(n, "", "max_images: too many") for n in range(1, 13)]
    assert failure_list(same) == "items 1-12: max_images: too many"
    with_ids = [(1, " (request a)", "HTTP 500"), (2, " (request b)", "HTTP 500")]
    assert failure_list(with_ids) == "item 1 (request a): HTTP 500; item 2 (request b): HTTP 500"  # each job its own line
    many = [(n, "", f"reason {n % 12}") for n in range(1, 25)]  # 12 reasons, two items each
    listed = failure_list(many)
    assert listed.count("reason") == MAX_LISTED_FAILURES and listed.endswith("; and 4 more items")


@pytest.mark.parametrize(
    "address,public",
    [
        ("64:ff9b::8.8.8.8", True),  # a public IPv4 host seen through DNS64/NAT64 on an IPv6-only network
        ("64:ff9b::1.1.1.1", True),
        ("64:ff9b::10.0.0.1", False),  # the gateway would reach a private network for us
        ("64:ff9b::127.0.0.1", False),
        ("64:ff9b::169.254.169.254", False),
    ],
)
def test_a_nat64_address_is_judged_by_the_ipv4_address_it_embeds(address, public):
    """On an IPv6-only network (DNS64), every IPv4-only result host resolves into 64:ff9b::/96: it was refused as not
    public, so no paid result could ever be fetched there (Python before 3.12.4 calls the prefix not global)."""
    assert is_public_address(address) is public


# --- whether a catalog price can check a spending limit -------------------------------------------------------------


@pytest.mark.parametrize(
    "reported,last,usd,said",
    [
        (0.03, None, 0.03, None),  # a sound price, nothing seen before
        (0.03, 0.03, 0.03, None),
        (0.05, 0.03, 0.05, None),  # a rise is always trusted: it only makes the limit stricter
        (0.01, 0.03, 0.01, None),  # a cut to a third: still this model's price
        (0.0, None, None, "refused"),
        (0.0001, None, None, "refused"),
        (0.0049, None, None, "refused"),
        (0.0, 0.03, 0.03, "last"),
        (0.0001, 0.03, 0.03, "last"),
        (0.006, 0.03, 0.03, "last"),  # far below the last sound price: a broken answer, not a price cut
        (0.0, 0.0001, None, "refused"),  # a last price that is not sound is no fallback
    ],
)
def test_a_price_that_cannot_be_right_is_not_trusted(reported, last, usd, said):
    from runcomfy_seedream.api.spending import judge_price

    verdict = judge_price(reported, last)
    assert verdict.usd == usd and verdict.trusted == (said is None)
    if said == "refused":
        assert "does not look right for this model" in verdict.refusal and verdict.note is None
    elif said == "last":
        assert f"last sound price seen, ${last:.3f} per image" in verdict.note and verdict.refusal is None


def test_a_charge_is_above_its_estimate_only_past_rounding():
    from runcomfy_seedream.api.spending import overcharged, per_image

    assert overcharged(0.15, 0.09) and not overcharged(0.094, 0.09) and not overcharged(None, 0.09) and not overcharged(0.5, None)
    assert [per_image(v) for v in (0, 0.0001, 0.0049, 0.03, 1.5)] == ["$0", "$0.0001", "$0.0049", "$0.030", "$1.500"]
