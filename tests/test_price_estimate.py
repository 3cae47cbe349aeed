"""The estimated cost is shown before submitting and stays visible; a failed price lookup never blocks a run."""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node
from runcomfy_seedream.api import shared
from runcomfy_seedream.fake_service import Fault


@pytest.fixture(autouse=True)
def fresh_price_cache():
    shared.PRICES.reset()
    yield
    shared.PRICES.reset()


def test_the_estimate_comes_before_the_submit_and_stays_under_later_messages(fake, comfy):
    fake.behaviour.price_per_image_usd = 0.04
    run_node(**node_inputs(max_images=3))
    texts = comfy.progress_texts()
    estimate = "Estimated cost: up to $0.12 (3 x $0.040 per image)"
    first = next(i for i, t in enumerate(texts) if estimate in t)
    submitting = next(i for i, t in enumerate(texts) if t.startswith("Submitting"))
    assert first < submitting
    assert all(estimate in t for t in texts[first:-1])  # pinned until the final summary
    assert "cost $0.12" in texts[-1]  # the actual cost, from the service


def test_a_failed_price_lookup_does_not_block_the_run(fake, comfy):
    fake.behaviour.inject("catalog", *[Fault("http", status=500)] * 4)  # as many as the lookup tries (quick timing: 4)
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3 and fake.submits == 1
    assert not any("Estimated cost" in t for t in comfy.progress_texts())
