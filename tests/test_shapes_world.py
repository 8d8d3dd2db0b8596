"""ShapesWorld: deterministic data, captions that parse back, and an oracle that reads renders."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from textcraftor.shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapesDataset,
    ShapeSpec,
    alignment,
    batch_alignment,
    caption,
    describe,
    parse_prompt,
    read_scene,
    render,
    sample_scene,
)
from textcraftor.shapes.oracle import SCORES
from textcraftor.shapes.world import MIN_GAP, POSITION_PHRASES, shape_box


def _scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_items_are_a_pure_function_of_seed_and_index():
    first, again, other_seed = ShapesDataset(seed=3), ShapesDataset(seed=3), ShapesDataset(seed=4)
    items = [first.item(i) for i in range(6)]
    for index, (image, text, scene) in enumerate(items):
        image_again, text_again, scene_again = again.item(index)
        assert np.array_equal(np.asarray(image), np.asarray(image_again))
        assert (text, scene) == (text_again, scene_again)
    distinct = {(np.asarray(image).tobytes(), text) for image, text, _ in items}
    assert len(distinct) == len(items)
    assert other_seed.scene_and_caption(0) != first.scene_and_caption(0)


def test_batch_and_iteration_match_items():
    dataset = ShapesDataset(seed=1)
    images, texts, scenes = dataset.batch(5, 3)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    image, text, scene = dataset.item(6)
    assert torch.equal(images[1], torch.from_numpy(np.array(image)).permute(2, 0, 1))
    assert (texts[1], scenes[1]) == (text, scene)
    stream = iter(dataset)
    for index in range(2):
        streamed_image, streamed_text = next(stream)
        assert streamed_text == dataset.item(index)[1]
        assert torch.equal(streamed_image, dataset.batch(index, 1)[0][0])


def test_sampled_scenes_keep_their_shapes_apart_and_inside_the_image():
    scenes = _scenes(300)
    for scene in scenes:
        assert 1 <= len(scene.shapes) <= 2
        assert len({s.position for s in scene.shapes}) == len(scene.shapes)
        boxes = [shape_box(spec, 64) for spec in scene.shapes]
        assert all(0 <= x0 and 0 <= y0 and x1 <= 64 and y1 <= 64 for x0, y0, x1, y1 in boxes)
        if len(boxes) == 2:  # separated by at least MIN_GAP along x or along y
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
            assert gap >= MIN_GAP * 64 - 1e-9
    assert {len(s.shapes) for s in scenes} == {1, 2}
    with pytest.raises(ValueError, match="max_shapes must be in 1..2"):
        sample_scene(random.Random(0), max_shapes=3)


def test_captions_name_each_shape_and_colour_and_sometimes_the_rest():
    dataset = ShapesDataset(seed=0)
    texts_and_scenes = [dataset.scene_and_caption(i) for i in range(300)]
    for scene, text in texts_and_scenes:
        assert text.isascii() and text == text.lower()
        for spec in scene.shapes:
            assert spec.colour in text.split() and spec.shape in text, (text, scene)
    texts = [text for _, text in texts_and_scenes]
    assert any(any(size in t.split() for size in SIZES) for t in texts)
    assert any(any(phrase in t for phrase in POSITION_PHRASES.values()) for t in texts)
    assert any("background" in t for t in texts)
    assert any(all(size not in t.split() for size in SIZES) for t in texts)


def test_parse_prompt_reads_back_what_a_caption_mentions():
    dataset = ShapesDataset(seed=2)
    for index in range(300):
        scene, text = dataset.scene_and_caption(index)
        parsed, unknown = parse_prompt(text)
        assert unknown == [], text
        assert parsed is not None and len(parsed.shapes) == len(scene.shapes), text
        for got, want in zip(parsed.shapes, scene.shapes):
            assert (got.shape, got.colour) == (want.shape, want.colour), text
            assert got.size in (None, want.size) and got.position in (None, want.position), text
        assert parsed.background in (None, scene.background), text
    for scene in _scenes(50):
        assert parse_prompt(describe(scene)) == (scene, [])


def test_identical_shapes_are_captioned_in_the_plural():
    twin = ShapeSpec("cross", "red", "small", "left")
    scene = Scene((twin, replace(twin, position="right")), "black")
    plurals = {caption(scene, random.Random(s)) for s in range(40)} & {
        "two red crosses", "two small red crosses", "two red crosses on a black background",
        "a black background with two small red crosses",
    }
    assert plurals
    for text in plurals:
        parsed, unknown = parse_prompt(text)
        assert unknown == [] and parsed is not None and len(parsed.shapes) == 2
        assert all((s.shape, s.colour) == ("cross", "red") for s in parsed.shapes)
        assert alignment(render(scene), text)["all"] == 1.0


def test_parse_prompt_reports_words_the_oracle_cannot_score():
    parsed, unknown = parse_prompt("A red circle next to a dog.")
    assert parsed == Scene((ShapeSpec("circle", "red", None, None),), None)
    assert unknown == ["next", "to", "dog"]
    assert parse_prompt("a photo of a cat") == (None, ["photo", "cat"])
    parsed, unknown = parse_prompt("a white square on a red background")
    assert parsed == Scene((ShapeSpec("square", None, None, None),), None)
    assert unknown == ["white", "red"]
    parsed, unknown = parse_prompt("two big blue stars on a grey background")
    assert parsed == Scene((ShapeSpec("star", "blue", "large", None),) * 2, "gray")
    assert unknown == []
    assert alignment(render(_scenes(1)[0]), "a photo of a cat") == dict.fromkeys(SCORES, None)


def test_oracle_reads_clean_renders():
    totals: dict[str, list[float]] = {name: [] for name in SCORES}
    for scene in _scenes(600, seed=7):
        scores = alignment(render(scene), describe(scene))  # every attribute mentioned
        for name, value in scores.items():
            assert value is not None
            totals[name].append(value)
    accuracy = {name: float(np.mean(values)) for name, values in totals.items()}
    print("oracle accuracy on 600 clean renders:", accuracy)
    assert all(value >= 0.98 for value in accuracy.values()), accuracy


def test_oracle_finds_nothing_in_a_blank_image():
    blank = Image.new("RGB", (64, 64), BACKGROUNDS["gray"])
    assert read_scene(blank) == Scene((), "gray")
    scores = alignment(blank, "a red circle on a gray background")
    assert scores["shape"] == scores["colour"] == scores["count"] == scores["all"] == 0.0
    assert scores["background"] == 1.0 and scores["size"] is None


def test_wrong_colours_and_shapes_score_zero_on_that_attribute():
    rng = random.Random(5)
    for scene in _scenes(40, seed=11):
        recoloured = Scene(
            tuple(replace(s, colour=rng.choice([c for c in COLOURS if c != s.colour]))
                  for s in scene.shapes),
            scene.background,
        )
        reshaped = Scene(
            tuple(replace(s, shape=rng.choice([x for x in SHAPES if x != s.shape]))
                  for s in scene.shapes),
            scene.background,
        )
        scores = alignment(render(recoloured), describe(scene))
        assert scores["colour"] == 0.0 and scores["shape"] == 1.0 and scores["all"] == 0.0
        scores = alignment(render(reshaped), describe(scene))
        assert scores["shape"] == 0.0 and scores["colour"] == 1.0 and scores["all"] == 0.0


def test_two_shapes_are_matched_regardless_of_order():
    scene = Scene((ShapeSpec("circle", "red", "large", "left"),
                   ShapeSpec("square", "blue", "small", "right")), "white")
    image = render(scene)
    assert alignment(image, "a blue square and a red circle")["all"] == 1.0
    scores = alignment(image, "a small blue square on the left and a red circle on the right")
    assert scores["position"] == 0.0 and scores["size"] == 1.0 and scores["shape"] == 1.0
    assert alignment(image, "a red circle")["count"] == 0.0


def test_oracle_tolerates_mild_noise():
    noise = np.random.default_rng(0)
    all_right = []
    for scene in _scenes(60, seed=13):
        pixels = np.asarray(render(scene), dtype=np.float32) + noise.normal(0, 15, (64, 64, 3))
        noisy = np.clip(pixels, 0, 255).astype(np.uint8)
        all_right.append(alignment(noisy, describe(scene))["all"])
    assert np.mean(all_right) >= 0.9


def test_batch_alignment_averages_and_counts_unscorable_prompts():
    images, texts, _ = ShapesDataset(seed=9).batch(0, 8)
    floats = images.float() / 255
    means = batch_alignment(floats, texts)
    assert means["colour"] == means["shape"] == means["count"] == 1.0
    assert means["unscored"] == 0.0 and means["out_of_vocabulary"] == 0.0
    means = batch_alignment(floats[:2], [texts[0], "a photo of a cat"])
    assert means["all"] == 1.0 and means["unscored"] == 1.0 and means["out_of_vocabulary"] == 1.0
    with pytest.raises(ValueError):
        batch_alignment(floats[:2], texts[:3])


def test_vocabulary_is_well_separated():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6 and len(POSITIONS) >= 4
    assert not set(COLOURS) & set(BACKGROUNDS)
    for name, rgb in COLOURS.items():
        others = [*BACKGROUNDS.values(), *(c for n, c in COLOURS.items() if n != name)]
        assert min(np.linalg.norm(np.subtract(rgb, other)) for other in others) > 100


def test_free_attributes_are_what_the_image_shows_of_what_the_prompt_leaves_open():
    from textcraftor.shapes.oracle import free_attributes

    image = render(Scene((ShapeSpec("circle", "red", "large", "left"),), "black"))
    assert free_attributes(image, "a red circle") == {
        "0.size": "large", "0.position": "left", "background": "black"}
    assert free_attributes(image, "a large red circle on the left on a black background") == {}
    # a named shape the image lacks shows nothing of its free attributes
    assert free_attributes(image, "a red circle and a blue square")["1.size"] is None
    assert free_attributes(image, "a photo of a cat") == {}


def test_attribute_diversity_is_0_for_identical_images_and_1_for_all_different():
    from textcraftor.shapes.oracle import attribute_diversity, free_attributes

    prompt = "a red circle"  # free: size, position, background
    def reading(size, position, background):
        return free_attributes(render(Scene((ShapeSpec("circle", "red", size, position),),
                                            background)), prompt)

    same = [reading("large", "left", "white")] * 3
    assert attribute_diversity(same) == 0.0
    # every free attribute different across two images: the most two images can differ
    assert attribute_diversity([reading("large", "left", "white"),
                                reading("small", "right", "black")]) == pytest.approx(1.0)
    # only the position differs among 3 images (left, left, right): one third of the entropy
    # that varies, over the 3 free attributes
    three = [reading("large", "left", "white"), reading("large", "left", "white"),
             reading("large", "right", "white")]
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    assert attribute_diversity(three) == pytest.approx(h / 3)
    assert np.isnan(attribute_diversity(same[:1]))  # one image: no spread to measure
    assert np.isnan(attribute_diversity([{}, {}]))  # nothing left free
