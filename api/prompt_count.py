"""Reading the number of images a prompt asks for, in English ("Generate 4 images of …") or Chinese ("生成4张图片"):
the model takes its count from the prompt, and `max_images` is only the most it may make and what is charged."""

from __future__ import annotations

import re

from .wording import plural

_NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen").split()
_QUANTITIES = {"single": 1, "pair of": 2, "couple of": 2, "trio of": 3, "dozen": 12}  # "a single image", "a pair of shots"
_NUMBER = r"(?<![\w.:×/-])(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")(?![\w.:×%/])"
_QUANTITY = r"\ba (" + "|".join(_QUANTITIES) + r")"
_IMAGE_NOUN = (
    r"(?:image|picture|pic|photo|photograph|shot|frame|illustration|render|rendering|variation|variant|version|view|"
    r"panel|scene|portrait|pose|keyframe|still|selfie|thumbnail|angle|option)s?"
)
_FILLER_WORD = r"(?:(?!(?:of|in|on|at|with|and|or|for|from|to|the|a|an|per|each)\b)[\w][\w'-]*,?\s+)"
COUNT_PHRASES = (
    re.compile(r"(?:" + _NUMBER + "|" + _QUANTITY + r")\s+" + _FILLER_WORD + r"{0,3}" + _IMAGE_NOUN + r"\b", re.I),  # "4 images"
    re.compile(r"\b(?:set|series|sequence|collection|batch|grid|group|total) of\s+" + _NUMBER, re.I),  # "a set of 6"
    re.compile(_NUMBER + r"-(?:image|panel|frame|shot|picture|photo|page)\b", re.I),  # "a 4-panel storyboard"
)
_RATIO = re.compile(r"\d+\s*[x×:：/]\s*\d+", re.I)  # 16:9, 800 x 600, 4/5: sizes and ratios, never counts

# Chinese (simplified, and the traditional forms of the same words). A count is a number, in digits (also full-width)
# or a numeral from 一 to 十五 or 两, with a measure word of pictures: 张 / 幅 / 帧 ("4张图片", "生成四幅", "一组6张"),
# 个 with a word for a frame ("4个画面", "3个镜头"), "N宫格" and "N格漫画".
_ZH_NUMERALS = ("一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四", "十五")
_ZH_NUMBER = r"(?P<number>\d{1,3}|十[一二三四五]|[一二三四五六七八九十两兩])"
_ZH_ANY_NUMERAL = "零〇一二三四五六七八九十百千万萬两兩几幾"
# Not a count when the number follows these: a decimal, a range ("3到4张", "3-4张", "一两张", "3或4张"), an ordinal
# ("第2张"), "each" (每), part of the set ("前2张", "其中2张", "另外2张"), or the reference images ("这3张", "参考3张").
_ZH_NOT_AFTER_WORDS = "其中 另外 参考 參考 参照 參照 按照 依照 根据 根據 基于 基於 上传的 上傳的 输入的 輸入的".split()
_ZH_NOT_AFTER = rf"(?<![\d.．:：/×xX~～\-－—到至或第每前后後另余餘剩这這那此该該同{_ZH_ANY_NUMERAL}A-Za-z_])" + "".join(
    f"(?<!{word})" for word in _ZH_NOT_AFTER_WORDS
)
_ZH_SHEET = r"(?P<measure>[张張幅帧幀])(?!(?P=measure))"  # a measure word that by itself means pictures: "生成4张" (not "一张张")
_ZH_IMAGE_NOUN = (  # 图 covers 图片 / 图像 / 产品图 / 效果图; 画 covers 画面 / 插画 / 油画; 照 covers 照片 / 全身照
    r"(?:[图圖][片像]|[图圖](?!案)|[画畫][面作]|[画畫](?![家笔筆风風师師布框室廊])|照片|(?<![按参參对對依遵])照(?![明射亮耀着著])|相片|"
    r"海报|海報|壁纸|壁紙|"
    r"头像|頭像|肖像|写真|寫真|分镜|分鏡|素描|封面|立绘|立繪|表情包)"
)
_ZH_FRAME_NOUN = r"(?:画面|畫面|镜头|鏡頭|分镜|分鏡|场景|場景|版本|视角|視角|角度|姿势|姿勢|姿态|姿態|变体|變體|方案)"  # after 个
# Up to twelve characters between the measure and the noun ("4张赛博朋克风格的城市海报"), none of them a clause break,
# "and"/"or", another number with its measure, or words of the references ("3张参考图").
_ZH_FILLER = (
    rf"(?:(?![{_ZH_ANY_NUMERAL}\d]\s*[张張幅帧幀个個组組套])(?!参考|參考|输入|輸入|原图|原圖)"
    r"[^\n，。、；：！？,.;:!?（）()\[\]【】「」『』\"“”‘’和与與及或跟并並且而还還]){0,12}?"
)
_ZH_NOT_THE_REFERENCES = r"(?![片像]?[中里裏内內]的)"  # "3张图中的人物": the characters of 3 given images
_ZH_CLAUSE_END = r"(?=\s*(?:[\n，。、；：！？,.;:!?…）)\]】」』\"”]|$|一组|一組|一套|为一组|為一組))"
_ZH_VERB = r"(?:生成|绘制|繪製|制作|製作|创作|創作|输出|輸出|创建|創建|产出|產出|设计|設計|画出?|畫出?|做出?|给我|給我|来|來|出)"
_ZH_VERB_TAIL = r"(?:出|了|一组|一組|一套|一系列|总共|總共|一共|共计|共計|合计|合計|共)?"
_ZH_SET = r"(?:一组|一組|一套|一系列|一共|总共|總共|共)"  # "一组6张" is 6, "共6张" too
ZH_COUNT_PHRASE = re.compile(
    rf"(?:(?P<verb>{_ZH_VERB}{_ZH_VERB_TAIL}\s*)|{_ZH_SET}\s*)?{_ZH_NOT_AFTER}{_ZH_NUMBER}\s*(?:"
    # "生成4张", "4张图片", "4张不同角度的产品图", "共6张。", "6张一组"
    rf"{_ZH_SHEET}(?(verb)(?:{_ZH_FILLER}{_ZH_IMAGE_NOUN}{_ZH_NOT_THE_REFERENCES})?|(?:{_ZH_FILLER}{_ZH_IMAGE_NOUN}{_ZH_NOT_THE_REFERENCES}|{_ZH_CLAUSE_END}))"
    rf"|[个個](?:不同|独立|獨立|连续|連續)?的?{_ZH_FRAME_NOUN}"  # "4个画面", "3个不同的角度"
    r"|[宫宮]格|格(?:漫画|漫畫|分镜|分鏡|条漫|條漫)"  # "九宫格", "四格漫画"
    r")"
)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def _value(word: str) -> int:
    word = " ".join(word.lower().split())
    if word.isdigit():
        return int(word)  # also full-width digits: int("６") == 6
    if word in ("两", "兩"):
        return 2
    if word in _ZH_NUMERALS:
        return _ZH_NUMERALS.index(word) + 1
    return _QUANTITIES[word] if word in _QUANTITIES else _NUMBER_WORDS.index(word) + 1


def stated_counts(prompt: str) -> tuple[tuple[int, str], ...]:
    """Every distinct number of images the prompt states, each with the words that first state it ("6张图片",
    "4 images"), in order of appearance (empty when it states none). See `stated_image_counts` for what counts."""
    text = _RATIO.sub(lambda ratio: " " * len(ratio.group()), prompt)  # same length: the words quoted are the prompt's
    found: list[tuple[int, int, str]] = []
    for phrase in (*COUNT_PHRASES, ZH_COUNT_PHRASE):
        for match in phrase.finditer(text):
            word = match.group("number") if phrase is ZH_COUNT_PHRASE else next(group for group in match.groups() if group)
            if _value(word) > 0:
                found.append((match.start(), _value(word), prompt[match.start() : match.end()].strip()))
    firsts: dict[int, str] = {}
    for _, value, words in sorted(found):
        firsts.setdefault(value, words)
    return tuple(firsts.items())


def stated_image_counts(prompt: str) -> tuple[int, ...]:
    """Every distinct number of images the prompt states, in order of appearance (empty when it states none).

    English: a number in digits or a word from one to fifteen, or "a single / a pair of / a couple of / a trio of /
    a dozen", in "N images" (also pictures, photos, shots, frames, illustrations, renders, variations, variants,
    versions, views, panels, scenes, portraits, poses, keyframes, stills, selfies, thumbnails, angles, options; up to
    three words between, as in "3 consistent character portraits"), "a set / series / sequence / collection / batch /
    grid / group / total of N", and "an N-panel / N-image / N-frame …". Numbers in ratios, sizes, decimals and
    hyphenated numbers (16:9, 800 x 600, 1.5, twenty-one) are not counts.

    Chinese: a number in digits or a numeral from 一 to 十五 or 两 with 张 / 幅 / 帧 after a verb of making ("生成4张",
    "画两幅", "一组6张") or before a word for pictures ("4张图片", "三幅插画", up to twelve characters between, as in
    "4张不同角度的产品图") or at the end of a clause ("共6张。"); "N个画面 / 镜头 / 分镜 / 场景 / 版本 / 视角 / 角度 /
    姿势 / 变体 / 方案"; "N宫格" and "N格漫画". Not counts: other measures ("3个人", "5岁", "2024年"), ordinals ("第2张"),
    ranges ("3到4张", "一两张", "十几张"), "each" ("每张"), part of the set ("其中2张", "前2张") and the reference
    images ("这3张图", "参考3张图片", "3张参考图", "3张图中的人物").
    """
    return tuple(value for value, _ in stated_counts(prompt))


def writes_chinese(prompt: str) -> bool:
    """Whether the prompt is written in Chinese: at least as many Chinese characters as Latin words, and no Japanese kana."""
    return not _KANA.search(prompt) and 0 < len(_HAN.findall(prompt)) >= len(_LATIN_WORD.findall(prompt))


def count_sentence(count: int, chinese: bool = False) -> str:
    """The sentence added to a prompt that states no number of images, in the prompt's language."""
    return f"生成{count}张图片。" if chinese else f"Generate {plural(count, 'image')}."
