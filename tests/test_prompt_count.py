"""The prompt states the count, in English or Chinese: what is recognised, the sentence added when it is missing (in
the prompt's language), and the warning when the prompt and max_images disagree, quoting the prompt's words."""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node, submitted_payloads
from runcomfy_seedream.api.errors import InputError
from runcomfy_seedream.api.schema import EditSequentialRequest, stated_counts, stated_image_counts, writes_chinese

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


# Chinese: the prompt, the counts it states, and the words that state each (what the note quotes).
RECOGNISED_CHINESE = [
    ("生成6张图片：海边的这个角色", ((6, "生成6张图片"),)),
    ("生成四张图片：海边的这个角色", ((4, "生成四张图片"),)),
    ("海边的这个角色", ()),
    ("生成4张", ((4, "生成4张"),)),
    ("生成4张，分别是春夏秋冬", ((4, "生成4张"),)),
    ("生成4张不同风格的猫", ((4, "生成4张"),)),  # after a verb of making, 张 alone means pictures
    ("4张图", ((4, "4张图"),)),
    ("三张照片", ((3, "三张照片"),)),
    ("画两幅画", ((2, "画两幅画"),)),
    ("生成两幅", ((2, "生成两幅"),)),
    ("一组6张", ((6, "一组6张"),)),  # a set of 6: not 1
    ("生成一组四张产品图", ((4, "生成一组四张产品图"),)),
    ("一组图，共6张。", ((6, "共6张"),)),
    ("6张一组", ((6, "6张"),)),
    ("一套5张海报", ((5, "一套5张海报"),)),
    ("生成一系列4张插画", ((4, "生成一系列4张插画"),)),
    ("4个画面", ((4, "4个画面"),)),
    ("4个镜头", ((4, "4个镜头"),)),
    ("四个分镜", ((4, "四个分镜"),)),
    ("3个不同的角度", ((3, "3个不同的角度"),)),
    ("四格漫画", ((4, "四格漫画"),)),
    ("九宫格", ((9, "九宫格"),)),
    ("生成4帧动画", ((4, "生成4帧动画"),)),
    ("生成十张", ((10, "生成十张"),)),
    ("十二张图片", ((12, "十二张图片"),)),
    ("生成十五张图片", ((15, "生成十五张图片"),)),
    ("生成两张不同角度的产品图", ((2, "生成两张不同角度的产品图"),)),
    ("生成4张赛博朋克风格的城市夜景海报", ((4, "生成4张赛博朋克风格的城市夜景海报"),)),  # eleven characters between
    ("4张Q版头像", ((4, "4张Q版头像"),)),
    ("生成4张画风统一的插画", ((4, "生成4张画风统一的插画"),)),  # 画风 (style) is not the picture
    ("输出３张图片", ((3, "输出３张图片"),)),  # full-width digit
    ("生成 4 张图片", ((4, "生成 4 张图片"),)),
    ("一张图", ((1, "一张图"),)),
    ("在一张图中展示4个角色", ((1, "一张图"),)),  # one picture; 4 characters are not pictures
    ("16:9的4张图", ((4, "4张图"),)),
    ("4K画质的3张图", ((3, "3张图"),)),
    ("一个5岁女孩的3张照片", ((3, "3张照片"),)),
    ("生成6張圖片", ((6, "生成6張圖片"),)),  # traditional characters
    ("兩幅畫", ((2, "兩幅畫"),)),
    ("生成4张图片，其中2张是特写", ((4, "生成4张图片"),)),  # 2 of the 4: not a second count
    ("4张全身照和4张特写照", ((4, "4张全身照"),)),  # the same number twice is one count
    ("生成3张白天的图和2张夜晚的图", ((3, "生成3张白天的图"), (2, "2张夜晚的图"))),  # in order of appearance
    ("生成4张图片 Generate 4 images", ((4, "生成4张图片"),)),
    ("Generate 6 images of this scene", ((6, "6 images"),)),  # English is quoted the same way
    # not a number of images
    ("3个人", ()),
    ("两个女孩在海边", ()),
    ("3张桌子", ()),
    ("4种风格", ()),
    ("3组图片", ()),  # three sets, of no stated size
    ("生成一组图片", ()),
    ("第2张图片", ()),
    ("第二张", ()),
    ("2024年3月5日的海边", ()),
    ("5岁的女孩", ()),
    ("每张图片都是16:9", ()),
    ("每张图片有3个人", ()),
    ("单张图片的分辨率为2048x2048", ()),
    ("同一个画面中有两个人", ()),
    ("4张图案", ()),  # a pattern
    ("一张张照片", ()),  # one after another
    ("其中2张是特写", ()),
    ("前2张是白天", ()),
    ("另外2张是夜景", ()),
    # the reference images, not the ones to make
    ("这两张图", ()),
    ("参考这两张图中的人物", ()),
    ("参考3张图片", ()),
    ("根据上传的3张图片", ()),
    ("3张参考图", ()),
    ("3张图中的人物", ()),
    # not a definite number
    ("几张图片", ()),
    ("多张图片", ()),
    ("十几张图片", ()),
    ("四五张图片", ()),
    ("一两张图片", ()),
    ("3到4张图片", ()),
    ("3-4张图片", ()),
    ("3或4张图片", ()),
    ("1.5张图", ()),
    ("0张图片", ()),
    # beyond the numerals read: 一 to 十五 and three digits, as in English
    ("十六张图片", ()),
    ("二十张图片", ()),
    ("一百张图片", ()),
    ("1000张图片", ()),
]


@pytest.mark.parametrize("prompt,stated", RECOGNISED_CHINESE, ids=[row[0] for row in RECOGNISED_CHINESE])
def test_what_counts_as_a_stated_number_of_images_in_chinese(prompt, stated):
    assert stated_counts(prompt) == stated
    assert stated_image_counts(prompt) == tuple(count for count, _ in stated)


@pytest.mark.parametrize(
    "prompt,chinese",
    [
        ("海边的这个角色", True),
        ("海边的女孩，穿着红色连衣裙，cinematic lighting", True),
        ("一只猫, cute cat, masterpiece, best quality", False),  # mostly English tags
        ("This character at the beach", False),
        ("海辺のキャラクター", False),  # Japanese
        ("", False),
    ],
)
def test_a_prompt_is_chinese_when_chinese_characters_outnumber_latin_words(prompt, chinese):
    assert writes_chinese(prompt) is chinese


@pytest.mark.parametrize(
    "prompt,sent",
    [
        ("At the beach", "At the beach. Generate 3 images."),
        ("At the beach.", "At the beach. Generate 3 images."),
        ("At the beach, ", "At the beach. Generate 3 images."),
        ("At the beach…", "At the beach… Generate 3 images."),
        ("海边的这个角色", "海边的这个角色。生成3张图片。"),
        ("海边的这个角色。", "海边的这个角色。生成3张图片。"),
        ("海边的这个角色，", "海边的这个角色。生成3张图片。"),
        ("海边的女孩，穿着红色连衣裙，cinematic", "海边的女孩，穿着红色连衣裙，cinematic。生成3张图片。"),
        ("海辺のキャラクター", "海辺のキャラクター。Generate 3 images."),
    ],
)
def test_the_sentence_is_joined_as_a_sentence_in_the_prompts_language(prompt, sent):
    assert EditSequentialRequest(prompt).text == sent


def test_several_different_numbers_are_pointed_out_and_nothing_is_added():
    request = EditSequentialRequest("make 3 variations and 2 close-up shots", max_images=5)
    assert request.text == request.prompt
    assert request.count_notes() == (
        "the prompt mentions 3 and 2 images ('3 variations', '2 close-up shots'); max_images is 5: at most 5 will be made and charged",
    )
    one = EditSequentialRequest("Generate 4 images", max_images=1)
    assert one.count_notes() == ("the prompt asks for 4 images ('4 images'), max_images is 1: at most 1 will be made and 1 is charged",)


CHINESE_NOTES = [
    (
        "生成6张图片：海边的这个角色",
        4,
        "the prompt asks for 6 images ('生成6张图片'), max_images is 4: at most 4 will be made and 4 are charged",
    ),
    ("生成四张图片：海边的这个角色", 4, None),
    ("海边的这个角色", 4, "added to the prompt: '生成4张图片。'"),
    ("一组两张海报", 4, "the prompt asks for 2 images ('一组两张海报'), max_images is 4: at most 2 will be made and 4 are charged"),
    (
        "生成3张白天的图和2张夜晚的图",
        5,
        "the prompt mentions 3 and 2 images ('生成3张白天的图', '2张夜晚的图'); max_images is 5: at most 5 will be made and charged",
    ),
]


@pytest.mark.parametrize("prompt,max_images,note", CHINESE_NOTES, ids=[row[0] for row in CHINESE_NOTES])
def test_a_chinese_count_is_read_before_paying_and_a_different_one_is_quoted(prompt, max_images, note):
    request = EditSequentialRequest(prompt, max_images=max_images)
    assert request.count_notes() == (() if note is None else (note,))
    assert request.text == (prompt + "。生成4张图片。" if note and note.startswith("added") else prompt)


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
    warning = "The prompt asks for 6 images ('6 images'), max_images is 4: at most 4 will be made and 4 are charged"
    first = next(i for i, text in enumerate(texts) if warning in text)
    assert first < next(i for i, text in enumerate(texts) if text.startswith("Submitting"))
    assert fake.submits == 1 and submitted_payloads(fake)[0]["text"] == "Generate 6 images of this scene"


@pytest.mark.parametrize(
    "prompt,sent,told",
    [
        (
            "生成6张图片：海边的这个角色",
            "生成6张图片：海边的这个角色",
            "The prompt asks for 6 images ('生成6张图片'), max_images is 4: at most 4 will be made and 4 are charged",
        ),
        ("生成四张图片：海边的这个角色", "生成四张图片：海边的这个角色", None),
        ("海边的这个角色", "海边的这个角色。生成4张图片。", "Added to the prompt: '生成4张图片。'"),
    ],
    ids=["6 asked of 4", "4 asked of 4", "no count"],
)
def test_a_chinese_prompt_through_the_node(fake, comfy, prompt, sent, told):
    run_node(**node_inputs(prompt=prompt, max_images=4))
    assert [payload["text"] for payload in submitted_payloads(fake)] == [sent]
    texts = comfy.progress_texts()
    submitting = next(i for i, text in enumerate(texts) if text.startswith("Submitting"))
    if told is None:
        assert not any("prompt" in text.lower() for text in texts)
    else:
        assert any(told in text for text in texts[:submitting]) and told[1:] in texts[-1]  # before paying, and still in view


def test_an_added_chinese_sentence_must_fit_in_600_characters_too(fake, comfy):
    with pytest.raises(InputError) as caught:
        run_node(**node_inputs(prompt="海" * 595, max_images=3))
    message = str(caught.value)
    assert "adding '生成3张图片。'" in message and "makes 603" in message and "Shorten it by 3 characters" in message  # 595 + 。 + 7
    assert fake.submits == 0 and not fake.requests
    run_node(**node_inputs(prompt="海" * 592, max_images=3))
    assert len(submitted_payloads(fake)[0]["text"]) == 600


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
