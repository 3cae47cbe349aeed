"""What a run delivers and what it says it cost: a list's memory checked before anything is sent, a job collected
again never shown as a new charge, a paid result on a host this machine refuses kept collectable, a result
listing more files than asked for, and a full user folder that says what a restart would cost."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import image_batch, node_inputs, run_list, run_node
from runcomfy_seedream.api import Limits
from runcomfy_seedream.api.errors import DownloadError, InputError
from runcomfy_seedream.fake_service import Fault

BLOCK_PAGE = b"<!DOCTYPE html><html><body>This site is blocked by your organisation.</body></html>"
ONE_ITEM_BYTES = 3 * 2560 * 1440 * 3 * 4  # 3 images at the default 2560:1440, float32 RGB: what a list item needs


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cache" / "runcomfy-seedream"  # HOME is tmp_path in these tests


def items(count: int) -> list[dict]:
    return [node_inputs(image_1=image_batch(1, 48, 64, seed=seed), unique_id="9") for seed in range(count)]


def test_a_list_whose_outputs_cannot_fit_is_refused_before_anything_is_sent(fake, comfy):
    budget = Limits(batch_max_bytes=int(2.5 * ONE_ITEM_BYTES))  # room for two items' outputs, not three
    refused = run_list(items(3), limits=budget)
    assert isinstance(refused, InputError) and refused.field == "max_images"
    message = str(refused)
    assert (
        "would need 380 MiB" in message
        and "over the 316 MiB budget" in message
        and "3 distinct items" in message
        and "9 images" in message
        and "2560x1440" in message
    )
    assert "Split the list" in message and "lower max_images" in message and "RUNCOMFY_SEEDREAM_BATCH_MB" in message
    assert fake.submits == 0 and fake.requests == [] and comfy.progress_texts()[-1] == message  # said under the node too


def test_a_list_that_fits_runs_and_its_rerun_collects_within_the_same_budget(fake, comfy):
    budget = Limits(batch_max_bytes=int(2.5 * ONE_ITEM_BYTES))
    first = run_list(items(2), limits=budget)
    assert isinstance(first, list) and fake.submits == 2
    again = run_list(items(2), limits=budget)  # the saved results: the same outputs, the same check
    assert isinstance(again, list) and fake.submits == 2
    assert comfy.progress_texts()[-1] == "Batch of 2 done: every item reused saved images (nothing charged now) (today: $0.18 over 2 jobs)"
    identical = run_list(items(1) * 3, limits=budget)  # three identical items are one job, one set of outputs
    assert isinstance(identical, list) and fake.submits == 2


def test_a_job_collected_again_says_what_it_cost_when_it_ran_and_that_nothing_is_charged_now(fake, comfy, tmp_path):
    fake.behaviour.price_per_image_usd = 0.02
    *_, request_id = run_node(**node_inputs())
    assert comfy.progress_texts()[-1].startswith(f"Done: 3 images, request {request_id}, cost $0.06")
    shutil.rmtree(state_dir(tmp_path) / "results")  # the saved images evicted; the journal still has the request
    *_, collected_id = run_node(**node_inputs())
    final = comfy.progress_texts()[-1]
    assert collected_id == request_id and fake.submits == 1
    assert final.startswith(f"Done: 3 images, request {request_id}, paid $0.06 when it ran (nothing charged now)"), final
    assert "cost $" not in final


def test_a_list_collected_again_counts_no_new_job_in_its_total(fake, comfy, tmp_path):
    fake.behaviour.price_per_image_usd = 0.02
    run_list(items(2))
    assert comfy.progress_texts()[-1] == "Batch of 2 done: 2 jobs, cost $0.12 (today: $0.12 over 2 jobs)"
    shutil.rmtree(state_dir(tmp_path) / "results")
    again = run_list(items(2))
    assert isinstance(again, list) and fake.submits == 2
    assert (
        comfy.progress_texts()[-1]
        == "Batch of 2 done: no new job; 2 jobs paid for by an earlier run collected (nothing charged now) (today: $0.12 over 2 jobs)"
    )


@pytest.mark.parametrize(
    "url,why",
    [
        ("https://10.1.2.3/out.png", "not a public host"),  # what a DNS filter's sinkhole looks like from here
        ("https://cdn.example.com/out\x00.png", "control character"),
        ("https://cdn.example.com/out .png", "space"),
    ],
    ids=["resolves to a private address", "a NUL in the URL", "a space in the URL"],
)
def test_a_paid_result_this_machine_refuses_to_fetch_stays_collectable(fake, comfy, url, why):
    fake.behaviour.result_urls = [url]
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs(max_images=1))
    message = str(caught.value)
    (request_id,) = fake.jobs
    assert why in message and request_id in message and caught.value.request_id == request_id
    assert "is paid" in message and "collects them without paying again" in message
    assert comfy.progress_texts()[-1] == message  # under the node, not "Downloading 0/1"

    fake.behaviour.result_urls = None  # the host can be reached now: the same inputs collect the paid job
    images, _, _, collected_id = run_node(**node_inputs(max_images=1))
    assert collected_id == request_id and fake.submits == 1 and images.shape[0] == 1


def test_a_result_listing_more_files_than_asked_for_is_cut_to_max_images(fake, comfy, tmp_path):
    fake.behaviour.images_returned = 2
    fake.behaviour.listed_again = 998  # 1000 URLs for max_images 2
    images, image_list, urls, _ = run_node(**node_inputs(max_images=2))
    assert images.shape[0] == 2 == len(image_list) == len(urls.splitlines())
    assert len([r for r in fake.requests if r.path.startswith("/files/")]) == 2, "only two files were downloaded"
    assert "the service listed 1000 images for max_images 2; the first 2 were kept" in comfy.progress_texts()[-1]
    (saved,) = (state_dir(tmp_path) / "results").iterdir()
    assert len(list(saved.glob("*.img"))) == 2


def test_a_full_user_folder_says_a_restart_before_collecting_pays_again(fake, comfy, tmp_path):
    state = state_dir(tmp_path)
    state.parent.mkdir(parents=True)
    state.write_text("a file where the folder should be")  # nothing can be written there, as on a full disk
    run_node(**node_inputs())
    warning = next(line for line in comfy.progress_texts()[-1].splitlines() if line.startswith("Warning"))
    assert "kept in memory only" in warning and "closing ComfyUI before this job is collected means the next run pays again" in warning


def test_a_refused_result_link_is_shown_without_its_password_or_signature(fake, comfy):
    fake.behaviour.result_urls = ["http://user:pw-77f1@cdn.example.com/out.png?X-Amz-Signature=sig-4b2e"]
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs(max_images=1))
    message = str(caught.value)
    assert "only https" in message and "cdn.example.com/out.png" in message
    assert "pw-77f1" not in message and "sig-4b2e" not in message and "user:" not in message


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "image/png"], ids=["labelled html", "labelled png"])
def test_a_block_page_served_for_a_result_file_keeps_the_paid_job_collectable(fake, comfy, content_type):
    """A filtering proxy answers the result download 200 with its own page: the job is paid, and a re-run must collect it
    instead of submitting (and paying for) a new one."""
    fake.behaviour.inject("file", *[Fault("http", status=200, body=BLOCK_PAGE, content_type=content_type)] * 3)
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "web page" in message and "is paid" in message and "without paying again" in message
    (request_id,) = fake.jobs
    fake.behaviour.faults.clear()  # a page a cancelled download did not take stays out of the re-run
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1 and fake.submit_attempts == 1


@pytest.mark.parametrize(
    "body",
    [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"x" * 3_000_000],
    ids=["not an image", "over the size cap"],
)
def test_a_finished_job_whose_files_cannot_be_used_says_it_may_be_charged_and_what_a_re_run_does(fake, comfy, body):
    fake.behaviour.inject("file", Fault("body", body=body))
    with pytest.raises(DownloadError) as caught:
        run_node(limits=Limits(max_download_bytes=2 * 2**20), **node_inputs())
    (request_id,) = fake.jobs
    message = str(caught.value)
    assert f"Request {request_id} finished at RunComfy and may be charged" in message
    assert "submits a new job, which is charged again" in message


def test_a_result_url_whose_host_no_name_encoding_allows_is_refused_as_collectable(fake, comfy):
    """https://xn--n3h/ (the punycode of a snowman, refused by IDNA 2008) made the download raise the idna library's own
    error through the node, with no word on the paid job."""
    fake.behaviour.result_urls = ["https://xn--n3h/out.png"]
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "host is malformed" in message and "is paid" in message and "without paying again" in message
    fake.behaviour.result_urls = None
    run_node(**node_inputs())
    assert fake.submits == 1


def test_a_redirect_loop_on_a_result_url_keeps_the_paid_job_collectable(fake, comfy):
    """Six same-origin redirects made the paid job "not kept", and running again paid for a new one: a redirect loop is
    network trouble between this machine and the file, like a non-public host, not a file that can never be used."""
    fake.behaviour.result_urls = [f"{fake.origin}/loop/out.png"]
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "redirect loop" in message and "is paid" in message and "without paying again" in message
    assert "charged again" not in message and caught.value.collectable
    (request_id,) = fake.jobs
    fake.behaviour.result_urls = None  # the files can be had now
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1 and fake.submit_attempts == 1


def test_an_image_labelled_as_a_web_page_is_still_the_image(fake, comfy):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="PNG")
    fake.behaviour.inject("file", *[Fault("http", status=200, body=buffer.getvalue(), content_type="text/html")] * 3)
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3 and fake.submits == 1
    assert images[0, 0, 0].tolist() == pytest.approx([200 / 255, 10 / 255, 10 / 255])


COMMENTED_PAGE = b"<!-- served by the web filter -->\n<!DOCTYPE html><html><body>Blocked by policy</body></html>"


@pytest.mark.parametrize(
    "body",
    [
        COMMENTED_PAGE,
        b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"><html></html>',
        b"<head><title>Sign in</title></head><body>Sign in to continue</body>",
        "<html><body>Blocked</body></html>".encode("utf-16"),  # with its byte-order mark
    ],
    ids=["a comment first", "an xml prolog first", "no html tag", "utf-16"],
)
def test_a_page_mislabelled_as_an_image_for_a_result_file_keeps_the_paid_job_collectable(fake, comfy, body):
    """A page that opens with a comment, an XML prolog or its <head>, sent as image/png, was decoded as a result file:
    "not an image", the paid job forgotten, and running again paid for a new one."""
    fake.behaviour.inject("file", *[Fault("http", status=200, body=body, content_type="image/png")] * 3)
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "web page" in message and "is paid" in message and "without paying again" in message
    (request_id,) = fake.jobs
    fake.behaviour.faults.clear()  # the files can be had now
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1


def test_an_empty_result_file_keeps_the_paid_job_collectable(fake, comfy):
    """A 200 with no body delivered nothing: it says nothing about the images, so the paid job must not be forgotten."""
    fake.behaviour.inject("file", *[Fault("http", status=200, body=b"", content_type="image/png")] * 12)
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "empty" in message and "without paying again" in message and "may be charged" not in message
    (request_id,) = fake.jobs
    fake.behaviour.faults.clear()
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1


def test_a_list_refused_for_memory_says_how_many_items_fit_at_its_size_and_max_images(fake, comfy):
    """Before: the refusal gave the figures but never how many items would fit, so a user learnt it by trial."""
    budget = Limits(batch_max_bytes=int(2.5 * ONE_ITEM_BYTES))  # 7.5 images at 2560x1440
    message = str(run_list(items(3), limits=budget))
    assert "at 2560x1440, 2 items of up to 3 images fit (7 at max_images 1)" in message, message
    assert fake.submits == 0


def test_prompt_lines_refuses_more_lines_than_the_outputs_budget_can_ever_hold(monkeypatch):
    """Before: Prompt lines took 100 lines, and the default 3 GiB output budget refuses any list of more than 64-72
    items, so such a list could never run."""
    from runcomfy_seedream.nodes.prompt_lines import RunComfyPromptLines

    monkeypatch.delenv("RUNCOMFY_SEEDREAM_BATCH_MB", raising=False)
    node = RunComfyPromptLines()
    (prompts,) = node.split("\n".join(f"Generate 1 image of fox {i}." for i in range(72)))
    assert len(prompts) == 72
    with pytest.raises(InputError) as caught:
        node.split("\n".join(f"Generate 1 image of fox {i}." for i in range(73)))
    message = str(caught.value)
    assert "has 73 prompts" in message and "at most 72 lines" in message and "3,072 MiB" in message
    assert "RUNCOMFY_SEEDREAM_BATCH_MB" in message and "24 at max_images 3" in message
    tooltip = RunComfyPromptLines.INPUT_TYPES()["required"]["text"][1]["tooltip"]
    assert "72" in tooltip and "max_images" in tooltip
    monkeypatch.setenv("RUNCOMFY_SEEDREAM_BATCH_MB", "8192")  # room for more: the paid-job cap of 100 lines is what is left
    assert len(node.split("\n".join(f"Generate 1 image of fox {i}." for i in range(100)))[0]) == 100


def test_a_proxy_asking_for_its_password_on_a_result_file_keeps_the_paid_job_collectable(fake, comfy):
    """Before: any HTTP status without a rule of its own (407, a 302 without a Location, 400) forgot the paid job, and
    running again paid for a new one."""
    fake.behaviour.inject("file", *[Fault("http", status=407)] * 3)
    with pytest.raises(DownloadError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "HTTP 407" in message and "is paid" in message and "without paying again" in message
    (request_id,) = fake.jobs
    fake.behaviour.faults.clear()
    _, _, _, collected = run_node(**node_inputs())
    assert collected == request_id and fake.submits == 1


def test_prompt_lines_always_takes_one_line_however_small_the_budget(monkeypatch):
    from runcomfy_seedream.nodes.prompt_lines import RunComfyPromptLines

    monkeypatch.setenv("RUNCOMFY_SEEDREAM_BATCH_MB", "1")  # a single run is fitted into any budget; a list of two is not
    assert RunComfyPromptLines().split("Generate 1 image of a fox.") == (["Generate 1 image of a fox."],)
    with pytest.raises(InputError, match="has 2 prompts"):
        RunComfyPromptLines().split("Generate 1 image of a fox.\nGenerate 1 image of a hare.")
