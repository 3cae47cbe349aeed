"""The node driven as ComfyUI drives it, through real HTTP to the local fake service."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import data_uri_size, image_batch, node_inputs, run_node, submitted_payloads


def test_references_in_socket_then_batch_order_give_a_batch_of_generated_images(fake, comfy):
    fake.behaviour.queue_s, fake.behaviour.run_s = 0.6, 1.2  # long enough to see each state at least once
    first = image_batch(2, 64, 96, seed=1)  # two frames on image_1
    second = image_batch(1, 120, 80, seed=2)  # a different size on image_2
    images, image_list, urls, request_id = run_node(
        **node_inputs(image_1=first, image_2=second, prompt="Generate 3 images of the two friends hiking.")
    )

    assert images.dtype == torch.float32 and images.shape == (3, 90, 160, 3)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.std()) > 0.01  # real picture content, not a blank canvas
    assert len(image_list) == 3 and all(item.shape == (1, 90, 160, 3) for item in image_list)
    assert urls.splitlines() == list(fake.result_body(fake.jobs[request_id], include_cost=False)["output"]["images"])

    (payload,) = submitted_payloads(fake)
    assert [data_uri_size(uri) for uri in payload["images"]] == [(96, 64), (96, 64), (80, 120)]
    assert {k: v for k, v in payload.items() if k != "images"} == {
        "text": "Generate 3 images of the two friends hiking.",
        "sequential_image_generation_options": 3,
        "image_size": "2560:1440 (16:9)",
        "seed": 42,
        "optimize_prompt_options": "fast",
        "sequential_image_generation": "auto",
    }
    texts = comfy.progress_texts()
    assert texts[0].startswith("Preparing references") and any(t.startswith("Encoding references") for t in texts)
    assert any(t.startswith("Queued at RunComfy (position") for t in texts)
    assert any(t.startswith("Generating") for t in texts)
    assert any(t.startswith("Downloading 3/3") for t in texts)
    assert texts[-1].startswith(f"Done: 3 images, request {request_id}")
    assert comfy.bar_values[-1] == (100, 100)


def test_outputs_are_the_pixels_the_service_returned(fake, comfy):
    images, image_list, urls, _ = run_node(**node_inputs())
    import io

    import httpx
    from PIL import Image

    first_png = httpx.get(urls.splitlines()[0]).content
    expected = np.asarray(Image.open(io.BytesIO(first_png)).convert("RGB"), dtype=np.float32) / 255.0
    assert np.allclose(images[0].numpy(), expected, atol=1e-6)


def test_other_widget_values_are_sent_exactly(fake, comfy):
    run_node(
        **node_inputs(
            image_size="3024:1296 (21:9)",
            seed=2147483647,
            optimize_prompt="standard",
            max_images=5,
            prompt="Generate 5 images of a storyboard.",
        )
    )
    (payload,) = submitted_payloads(fake)
    assert payload["image_size"] == "3024:1296 (21:9)"
    assert payload["seed"] == 2147483647
    assert payload["optimize_prompt_options"] == "standard"
    assert payload["sequential_image_generation_options"] == 5


def test_disabled_sequential_generation_asks_for_and_returns_one_image(fake, comfy):
    images, image_list, urls, _ = run_node(**node_inputs(sequential_image_generation="disabled", max_images=8))
    (payload,) = submitted_payloads(fake)
    assert payload["sequential_image_generation"] == "disabled"
    assert payload["sequential_image_generation_options"] == 1
    assert images.shape[0] == 1 and len(image_list) == 1


@pytest.mark.parametrize("behaviour_images", [2])
def test_fewer_images_than_the_maximum_are_returned_and_reported(fake, comfy, behaviour_images):
    fake.behaviour.images_returned = behaviour_images
    images, image_list, urls, _ = run_node(**node_inputs(max_images=6, prompt="Generate 6 images of a cat."))
    assert images.shape[0] == 2 and len(image_list) == 2 and len(urls.splitlines()) == 2
    assert "the model returned 2 of up to 6 images" in comfy.progress_texts()[-1]


def test_mixed_output_sizes_are_padded_in_the_batch_and_native_in_the_list(fake, comfy):
    fake.behaviour.mixed_sizes = True
    images, image_list, _, _ = run_node(**node_inputs())
    assert images.shape == (3, 90, 160, 3)
    assert [tuple(item.shape) for item in image_list] == [(1, 90, 160, 3), (1, 45, 80, 3), (1, 90, 160, 3)]
    small = image_list[1][0]
    assert torch.equal(images[1, 22:67, 40:120], small)  # centred, not stretched
    assert float(images[1, :22].abs().max()) == 0.0  # black border above
    assert "padded onto 160x90" in comfy.progress_texts()[-1]


def test_image_urls_follow_the_connected_images_unchanged(fake, comfy):
    url = "https://cdn.example.com/refs/portrait.png?X-Signature=abc"
    run_node(**node_inputs(image_urls=f"\n{url}\n# a comment\n"))
    (payload,) = submitted_payloads(fake)
    assert len(payload["images"]) == 2
    assert payload["images"][0].startswith("data:image/png;base64,")
    assert payload["images"][1] == url


def test_rgba_grey_and_out_of_range_references_are_sent_as_clean_rgb(fake, comfy):
    rgba = image_batch(1, 40, 40, channels=4)
    grey = image_batch(1, 40, 40, channels=1)
    wild = image_batch(1, 40, 40) * 3 - 1
    wild[0, 0, 0, 0] = float("nan")
    wild[0, 0, 1, 0] = float("inf")
    run_node(**node_inputs(image_1=rgba, image_2=grey, image_3=wild))
    (payload,) = submitted_payloads(fake)
    import base64
    import io

    from PIL import Image

    modes = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).mode for u in payload["images"]]
    assert modes == ["RGB", "RGB", "RGB"]
    assert any("clipped" in t for t in comfy.progress_texts())


def test_works_without_comfyui_modules(fake):
    images, image_list, urls, request_id = run_node(**node_inputs())
    assert images.shape[0] == 3 and request_id in fake.jobs


def test_cost_is_reported_when_the_service_gives_it(fake, comfy):
    run_node(**node_inputs())
    assert "cost $0.09" in comfy.progress_texts()[-1]
