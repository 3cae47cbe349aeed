"""The prompt states the count: what is recognised, the sentence added when it is missing, and the warning when
the prompt and max_images disagree."""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node, submitted_payloads
from runcomfy_seedream.api.errors import InputError
from runcomfy_seedream.api.prompt_count import stated_image_counts

RECOGNISED = [
    ("Generate 4 images of a cat", (4,)),
    ("make four pictures of the shop", (4,)),
    ("A set of 6 product shots on marble", (6,)),
    ("a series of seven frames", (7,)),
    ("Fifteen frames of a sunrise", (15,)),
    ("three consistent character portraits", (3,)),
    ("a 4-panel storyboard", (4,)),
    ("one image, please", (1,)),
    ("Create 12 variations of the logo", (12,)),
    ("2 cats in 3 images", (3,)),  # the number of cats is not a count of images
    ("20 photos of the room", (20,)),
    ("Generate images of a cat", ()),
    ("two cats in a garden", ()),
    ("a photo of 3 people", ()),
    ("16:9 images of the sea", ()),
    ("2048x2048 images", ()),
    ("1.5 shots of espresso", ()),
    ("Generate 3 consistent character reference images of this girl", (3,)),  # three words between
    ("Generate three high-quality, consistent images", (3,)),
    ("Make 4 ultra-realistic 3D renders", (4,)),
    ("Generate 6 poses of this character", (6,)),
    ("a single image of the shop", (1,)),
    ("a pair of portraits", (2,)),
    ("Generate 800 x 600 images", ()),
    ("16 : 9 images", ()),
    ("16：9 images", ()),
    ("4/5 portraits", ()),
    ("twenty-one images", ()),
    ("Generate 0 images", ()),
    ("Make 2 wide shots and 2 close-up shots", (2,)),  # the same number twice is one count
    ("make 3 variations and 2 close-up shots", (3, 2)),  # two different numbers, in order of appearance
    ("a dozen stills of the product", (12,)),
    ("a couple of selfies", (2,)),
    ("a trio of thumbnails", (3,)),
    ("a collection of 5", (5,)),
    ("a batch of 8", (8,)),
    ("a grid of 9 tiles", (9,)),
    ("a total of 4", (4,)),
    ("an 8-frame animation", (8,)),
    ("a 6-image carousel", (6,)),
    ("Generate 5 IMAGES", (5,)),
    ("100 images", (100,)),  # stated as asked; max_images decides what is made
    ("1000 images", ()),  # more than three digits: not read as a count
    ("sixteen images", ()),  # number words go up to fifteen
    ("4 very soft warm evening photos", ()),  # four words between: too far apart
    ("4 of the images", ()),
    ("5% images", ()),
    ("Generate 4 images and a set of 4", (4,)),
]


@pytest.mark.parametrize("prompt,counts", RECOGNISED, ids=[row[0] for row in RECOGNISED])
def test_what_counts_as_a_stated_number_of_images(prompt, counts):
    assert stated_image_counts(prompt) == counts


@pytest.mark.parametrize(
    "prompt,sent",
    [
        ("At the beach", "At the beach. Generate 3 images."),
        ("At the beach.", "At the beach. Generate 3 images."),
        ("At the beach, ", "At the beach. Generate 3 images."),
        ("At the beach…", "At the beach… Generate 3 images."),
        ("海边的这个角色", "海边的这个角色。Generate 3 images."),
    ],
)
def test_the_sentence_is_joined_as_a_sentence(prompt, sent):
    from runcomfy_seedream.api.schema import EditSequentialRequest

    assert EditSequentialRequest(prompt).text == sent


def test_several_different_numbers_are_pointed_out_and_nothing_is_added():
    from runcomfy_seedream.api.schema import EditSequentialRequest

    request = EditSequentialRequest("make 3 variations and 2 close-up shots", max_images=5)
    assert request.text == request.prompt
    assert request.count_notes() == ("the prompt mentions 3 and 2 images; max_images is 5: at most 5 will be made and charged",)
    one = EditSequentialRequest("Generate 4 images", max_images=1)
    assert one.count_notes() == ("the prompt asks for 4 images, max_images is 1: at most 1 will be made and 1 is charged",)


def test_a_prompt_without_a_count_gets_one_sentence_and_the_user_sees_it(fake, comfy):
    run_node(**node_inputs(prompt="This character at the beach", max_images=4))
    (payload,) = submitted_payloads(fake)
    assert payload["text"] == "This character at the beach. Generate 4 images."
    assert any("Added to the prompt: 'Generate 4 images.'" in text for text in comfy.progress_texts())
    assert "added to the prompt: 'Generate 4 images.'" in comfy.progress_texts()[-1]


@pytest.mark.parametrize(
    "inputs",
    [
        dict(prompt="This character at the beach", count_in_prompt="as written"),
        dict(prompt="Generate 3 images of this character at the beach."),
        dict(prompt="This character at the beach", sequential_image_generation="disabled"),
    ],
    ids=["as written", "already stated", "a single image"],
)
def test_the_prompt_is_sent_unchanged_when_nothing_is_to_be_added(fake, comfy, inputs):
    run_node(**node_inputs(**inputs))
    assert submitted_payloads(fake)[0]["text"] == inputs["prompt"]


def test_a_count_that_differs_from_max_images_is_pointed_out_before_submitting_and_does_not_block(fake, comfy):
    run_node(**node_inputs(prompt="Generate 6 images of this scene", max_images=4))
    texts = comfy.progress_texts()
    warning = "The prompt asks for 6 images, max_images is 4: at most 4 will be made and 4 are charged"
    first = next(i for i, text in enumerate(texts) if warning in text)
    assert first < next(i for i, text in enumerate(texts) if text.startswith("Submitting"))
    assert fake.submits == 1 and submitted_payloads(fake)[0]["text"] == "Generate 6 images of this scene"


def test_an_added_sentence_must_fit_in_600_characters(fake, comfy):
    prompt = "a" * 590
    with pytest.raises(InputError) as caught:
        run_node(**node_inputs(prompt=prompt, max_images=3))
    message = str(caught.value)
    assert (
        message.startswith("prompt:") and "600" in message and "makes 610" in message and "Shorten it by 10 characters" in message
    )  # 590 + ". " + 18
    assert "as written" in message and fake.submits == 0 and not fake.requests


def test_the_added_sentence_is_part_of_what_is_paid_for(fake, comfy):
    run_node(**node_inputs(prompt="This character at the beach"))
    run_node(**node_inputs(prompt="This character at the beach", count_in_prompt="as written"))  # other text sent
    run_node(**node_inputs(prompt="This character at the beach. Generate 3 images.", count_in_prompt="as written"))  # same
    assert fake.submits == 2


def test_a_workflow_saved_before_the_widget_existed_runs_with_the_default(fake, comfy):
    inputs = node_inputs(prompt="This character at the beach")
    inputs.pop("count_in_prompt", None)
    run_node(**inputs)
    assert submitted_payloads(fake)[0]["text"].endswith("Generate 3 images.")
