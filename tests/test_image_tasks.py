"""Image-to-image and inpainting with diffusers' own pipelines on ShapesWorld's real weights
(issue 23, item 5): the pipelines' classes and shared modules, the oracle's task scores on
hand-built images, pixels outside the mask kept, noise that depends on the seed alone, paired
gains of zero for the same encoder, and bad input named before any weight loads or any
sampling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

from textcraftor.checkpoint import save_checkpoint
from textcraftor.configio import ConfigError
from textcraftor.image_tasks import run as cli
from textcraftor.image_tasks.config import TaskConfig, check_strength
from textcraftor.image_tasks.items import inpaint_items, recolour_items, scene_images
from textcraftor.image_tasks.masks import check_mask, position_mask
from textcraftor.image_tasks.pipelines import (
    edit_pipelines,
    img2img,
    inpaint,
    vae_round_trip,
)
from textcraftor.image_tasks.scores import inpaint_scores, recolour_scores
from textcraftor.image_tasks.table import score_rows
from textcraftor.shapes.world import SIZES, Scene, ShapeSpec, parse_prompt, shape_box

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # DDIM steps of a whole chain in these tests (the command's default is 10)


@pytest.fixture(scope="module")
def shapes():
    from textcraftor.models import load_pipeline

    return load_pipeline("shapes")


@pytest.fixture(scope="module")
def base(shapes):
    return edit_pipelines(shapes, shapes.original_text_encoder)


class UNetCalls:
    """Counts the UNet's forward calls (a pre-hook), to show that nothing was sampled."""

    def __init__(self, unet):
        self.count = 0
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1


# ------------------------------------------------------------------------- the pipelines


def test_the_pipelines_are_diffusers_own_classes_on_the_real_shapes_weights(shapes, base):
    from safetensors.torch import load_file

    from textcraftor.shapes_weights import shapes_folder

    assert type(base.img2img) is StableDiffusionImg2ImgPipeline
    assert type(base.inpaint) is StableDiffusionInpaintPipeline
    for pipe in (base.img2img, base.inpaint):
        assert pipe.unet is shapes.unet and pipe.vae is shapes.vae
        assert pipe.text_encoder is shapes.original_text_encoder
        assert pipe.tokenizer is shapes.tokenizer
        assert pipe.safety_checker is None and pipe.feature_extractor is None
        assert pipe.scheduler is not shapes.scheduler  # each its own copy, same config
        assert dict(pipe.scheduler.config) == dict(shapes.scheduler.config)
        assert pipe.vae_scale_factor == 4
    assert base.side == 64 and shapes.unet.config.in_channels == 4
    stored = load_file(shapes_folder("shapes") / "unet" / "diffusion_pytorch_model.safetensors")
    name, weight = next(iter(stored.items()))
    assert torch.equal(shapes.unet.state_dict()[name], weight.float())
    tuned = edit_pipelines(shapes, shapes.text_encoder)
    assert tuned.img2img.text_encoder is shapes.text_encoder
    assert tuned.img2img.unet is base.img2img.unet  # the modules are shared, not copied


def test_an_image_depends_on_its_seed_alone(base):
    items = recolour_items(2)
    images = scene_images([item.source for item in items])
    prompts = [item.prompt for item in items]
    pair = img2img(base, images, prompts, [0, 1], 0.5, STEPS, 5.0)
    alone = img2img(base, images[1:], prompts[1:], [1], 0.5, STEPS, 5.0)
    other = img2img(base, images[1:], prompts[1:], [2], 0.5, STEPS, 5.0)
    assert pair.shape == (2, 3, 64, 64) and 0 <= pair.min() and pair.max() <= 1
    assert torch.allclose(pair[1], alone[0], atol=1e-5)  # another batch, the same image
    assert (pair[1] - other[0]).abs().mean() > 1e-3  # another seed, another image


def test_images_go_in_as_the_posterior_mean_because_a_sample_is_mostly_noise(shapes):
    # why pipelines.encode_latents gives diffusers latents: its default samples the VAE's
    # posterior, whose spread on the world's VAE is about 1 (measured: round trip 0.137 mean
    # absolute change for a sample, 0.007 for the mean)
    images = scene_images([item.source for item in recolour_items(2)])
    posterior = shapes.vae.encode(images * 2 - 1).latent_dist
    assert posterior.std.mean() > 0.5
    sample = shapes.vae.decode(posterior.sample(torch.Generator().manual_seed(0))).sample
    assert ((sample / 2 + 0.5).clamp(0, 1) - images).abs().mean() > 0.05
    assert (vae_round_trip(shapes.vae, images) - images).abs().mean() < 0.02


# --------------------------------------------------------------------------- the tasks


def test_items_are_fixed_by_their_seed_and_prompts_name_the_target():
    assert recolour_items(3, item_seed=5) == recolour_items(3, item_seed=5)
    assert recolour_items(3, item_seed=5) != recolour_items(3, item_seed=6)
    for item in recolour_items(8):
        assert item.target.shapes[0].colour != item.source.shapes[0].colour
        assert parse_prompt(item.prompt) == (item.target, [])
    for item in inpaint_items(16):
        assert parse_prompt(item.prompt) == (item.target, [])
        mask = item.mask(64, 4)
        x0, y0, x1, y1 = shape_box(item.added, 64)
        assert mask[math.ceil(y0):int(y1), math.ceil(x0):int(x1)].all()  # holds the new shape
        x0, y0, x1, y1 = shape_box(item.source.shapes[0], 64)
        assert not mask[int(y0):math.ceil(y1), int(x0):math.ceil(x1)].any()  # not the old one


def test_position_masks_are_the_large_box_on_the_latent_grid():
    mask = position_mask("right", 64, 4)
    rows, cols = np.nonzero(mask)
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (32, 64, 16, 48)
    half = SIZES["large"] * 64 / 2
    assert cols.min() <= 0.75 * 64 - half and rows.min() <= 0.5 * 64 - half
    with pytest.raises(ValueError, match="position: 'middle'"):
        position_mask("middle", 64, 4)


def test_recolour_scores_on_hand_built_images():
    item = recolour_items(1)[0]
    asked = recolour_scores(scene_images([item.target]), [item])
    assert all(v == [1.0] for v in asked.values()), asked  # already the asked colour
    unchanged = recolour_scores(scene_images([item.source]), [item])
    assert unchanged["colour"] == [0.0] and unchanged["all"] == [0.0]
    assert unchanged["shape"] == unchanged["position"] == unchanged["count"] == [1.0]
    other = Scene((ShapeSpec("cross" if item.source.shapes[0].shape != "cross" else "star",
                             *[getattr(item.target.shapes[0], a)
                               for a in ("colour", "size", "position")]),),
                  item.source.background)
    wrong_shape = recolour_scores(scene_images([other]), [item])
    assert wrong_shape["colour"] == [1.0] and wrong_shape["shape"] == [0.0]


def test_inpaint_scores_on_hand_built_images():
    item = inpaint_items(1)[0]
    inputs = scene_images([item.source])
    masks = item.mask(64, 4)[None]
    done = inpaint_scores(scene_images([item.target]), inputs, masks, [item])
    assert done["outside_change"] == [0.0]  # the added shape lies wholly inside the mask
    assert all(done[k] == [1.0] for k in done if k != "outside_change"), done
    nothing = inpaint_scores(inputs, inputs, masks, [item])
    assert nothing["added_count"] == nothing["added_all"] == [0.0]
    assert nothing["kept_all"] == [1.0] and nothing["outside_change"] == [0.0]
    dimmed = inpaint_scores(scene_images([item.target]) * 0.9, inputs, masks, [item])
    assert dimmed["outside_change"][0] > 0.0


def test_inpainting_keeps_the_pixels_outside_the_mask(base):
    items = inpaint_items(3)
    images = scene_images([item.source for item in items])
    masks = np.stack([item.mask(64, 4) for item in items])
    out = inpaint(base, images, torch.from_numpy(masks), [i.prompt for i in items], [0, 0, 0],
                  STEPS, 5.0)
    change = (out - images).abs().mean(dim=1).numpy()
    outside = np.array([c[~m].mean() for c, m in zip(change, masks)])
    inside = np.array([c[m].mean() for c, m in zip(change, masks)])
    floor = (vae_round_trip(base.inpaint.vae, images) - images).abs().mean(dim=1).numpy()
    floor = np.array([f[~m].mean() for f, m in zip(floor, masks)])
    # outside: the VAE's round trip of the kept latents, plus what the new content changes
    # there through the decoder, whose convolutions and GroupNorms span the whole 16×16
    # latent (measured on 8 items: outside 0.009-0.024, round trip 0.009-0.014; inside up to
    # 0.47, or 0.003 where nothing was drawn)
    assert (outside < 0.035).all() and (outside - floor < 0.015).all(), (outside, floor)
    assert np.median(inside) > 3 * np.median(outside), (inside, outside)
    scores = inpaint_scores(out, images, masks, items)
    assert scores["kept_all"] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------ tables and the command


def test_paired_gain_is_zero_when_both_encoders_are_the_same():
    values = {"colour": np.array([[1, 0], [1, 1], [0, 0]]),
              "outside_change": np.array([[0.01, 0.02], [0.03, 0.01], [0.02, 0.02]])}
    rows = score_rows(values, values, frozenset({"outside_change"}))
    for row in rows:
        assert (row["gain"], row["gain_ci_low"], row["gain_ci_high"]) == (0.0, 0.0, 0.0)
        assert row["verdict"] == "indistinguishable" and row["base"] == row["tuned"]
        assert (row["num_items"], row["num_seeds"]) == (3, 2)
    better = score_rows(values, {**values, "outside_change": values["outside_change"] / 2},
                        frozenset({"outside_change"}))
    assert better[1]["verdict"] == "better" and better[1]["direction"] == "min"


@pytest.fixture(scope="module")
def command_out(shapes, tmp_path_factory):
    """What the command writes when the "tuned" encoder is the base one (2 items × 2 seeds)."""
    tmp_path = tmp_path_factory.mktemp("image_tasks")
    folder = save_checkpoint(tmp_path / "run", 1, {
        "text_encoder": shapes.original_text_encoder.state_dict()})
    out = tmp_path / "out"
    code = cli.main(["--text-encoder-from", str(folder), "--items", "2", "--seeds", "0,1",
                     "--strengths", "0.5", "--num-steps", str(STEPS), "--batch-size", "3",
                     "--out", str(out)])
    assert code == 0
    return out


def test_the_command_with_the_base_encoder_as_tuned_gives_zero_gains(command_out):
    recolour = json.loads((command_out / "recolour.json").read_text())
    painted = json.loads((command_out / "inpaint.json").read_text())
    assert [s["strength"] for s in recolour["settings"]] == [0.5]
    assert recolour["settings"][0]["denoising_steps"] == 2
    for data in (recolour, painted):
        setting = data["settings"][0]
        assert data["num_items"] == 2 and data["seeds"] == [0, 1]
        assert setting["values"]["base"] == setting["values"]["tuned"]
        for row in setting["rows"]:
            assert row["gain"] == row["gain_ci_low"] == row["gain_ci_high"] == 0.0, row
            assert (row["num_items"], row["num_seeds"]) == (2, 2)
        assert (command_out / setting["grid"]).is_file()
    assert painted["settings"][0]["reference"]["vae_round_trip_outside_change"] > 0


def test_notebook_07_reads_the_tables_and_ends_with_a_computed_reading(command_out, tmp_path):
    import nbformat
    import papermill

    from analysis.image_tasks import load_tables, reading

    table = load_tables(command_out)
    assert set(table["task"]) == {"recolour", "inpaint"} and (table["gain"] == 0).all()
    assert "0 are better with the tuned encoder, 0 worse and 8 indistinguishable" in reading(
        table)
    better = table.assign(verdict="better", gain=0.1)
    assert "carries over to these tasks" in reading(better)
    notebook = REPO / "analysis" / "notebooks" / "07_other_tasks.ipynb"
    papermill.execute_notebook(str(notebook), str(tmp_path / "07.ipynb"), kernel_name="python3",
                               parameters={"out": str(command_out)}, cwd=str(REPO),
                               progress_bar=False)
    cells = nbformat.read(tmp_path / "07.ipynb", as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.outputs]
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "No measurable difference at this N" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    with pytest.raises(FileNotFoundError, match="python -m textcraftor.image_tasks"):
        load_tables(tmp_path / "nothing")


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("strength", [0.0, 1.5, math.nan, -0.1])
def test_a_strength_outside_0_1_is_named(strength):
    with pytest.raises(ConfigError, match=r"--strengths: .* allowed: a number in \(0, 1\]"):
        TaskConfig(strengths=(0.5, strength))
    with pytest.raises(ConfigError, match=r"--inpaint-strength: .*\(0, 1\]"):
        TaskConfig(inpaint_strength=strength)


def test_a_strength_that_runs_no_step_is_named():
    with pytest.raises(ConfigError, match=r"--strengths: 0.05 .* at least 1/--num-steps = 0.1"):
        TaskConfig(strengths=(0.05,), num_steps=10)
    check_strength(0.1, 10)  # one step: allowed


@pytest.mark.parametrize("argv, named", [
    (["--strengths", "0"], "--strengths: 0.0 is not allowed"),
    (["--strengths", "1.5"], "--strengths: 1.5 is not allowed"),
    (["--strengths", "nan"], "--strengths: nan is not allowed"),
    (["--strengths", "0.5,,0.7"], "--strengths: '0.5,,0.7' has an empty item"),
    (["--items", "0"], "--items: 0 is not allowed; allowed: an integer ≥ 1"),
    (["--items", "2.5"], "--items: '2.5' is not allowed; allowed: an integer"),
    (["--seeds", "0,0"], "--seeds: 0,0 is not allowed; allowed: distinct seeds"),
    (["--tasks", "outpaint"], "--tasks: 'outpaint' is not allowed; allowed: one of recolour"),
    (["--model", "tiny"], "--model: 'tiny' is not allowed; allowed: shapes, shapes-s"),
    (["--num-steps", "1000"], "--num-steps: 1000 is not allowed; allowed: 1 … 999"),
    (["--text-encoder-from", "/no/such/run"], "--text-encoder-from /no/such/run: no such"),
])
def test_bad_options_are_named_before_any_weight_loads(argv, named, tmp_path, monkeypatch,
                                                       capsys):
    import textcraftor.models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded before the options were checked")

    monkeypatch.setattr(textcraftor.models, "load_pipeline", no_loading)
    checkpoint = tmp_path / "checkpoint"  # what resolve_checkpoint accepts, no weights read
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text("{}")
    args = {"--text-encoder-from": str(checkpoint), "--out": str(tmp_path / "out")}
    args.update(dict(zip(argv[::2], argv[1::2])))
    assert cli.main([x for kv in args.items() for x in kv]) == 2
    error = capsys.readouterr().err
    assert named in error, error
    assert not (tmp_path / "out").exists()


def test_a_mask_of_the_wrong_size_or_all_zeros_is_named_before_sampling(base):
    with pytest.raises(ValueError, match=r"mask_image: shape \(2, 1, 32, 32\) is not allowed; "
                       r"allowed: \[B, 1, 64, 64\] or \[B, 64, 64\] with B = 2"):
        check_mask(torch.ones(2, 1, 32, 32), 64, 64, count=2)
    empty = torch.ones(2, 64, 64)
    empty[1] = 0.4  # below diffusers' 0.5 threshold: nothing to repaint
    with pytest.raises(ValueError, match=r"mask_image: mask 1 \(of 2\) is all zeros"):
        check_mask(empty, 64, 64)
    with pytest.raises(ValueError, match=r"values in \[2, 2\] .* allowed: \[0, 1\]"):
        check_mask(torch.full((1, 64, 64), 2.0), 64, 64)
    assert check_mask(np.ones((1, 64, 64), dtype=bool), 64, 64).shape == (1, 1, 64, 64)

    items = inpaint_items(2)
    images = scene_images([item.source for item in items])
    prompts = [item.prompt for item in items]
    calls = UNetCalls(base.inpaint.unet)
    try:
        with pytest.raises(ValueError, match="mask_image: shape"):
            inpaint(base, images, torch.ones(2, 1, 32, 32), prompts, [0, 0], STEPS, 5.0)
        with pytest.raises(ValueError, match="mask_image: mask 0 .* all zeros"):
            inpaint(base, images, torch.zeros(2, 64, 64), prompts, [0, 0], STEPS, 5.0)
        with pytest.raises(ConfigError, match=r"strength: 1.5 .*\(0, 1\]"):
            img2img(base, images, prompts, [0, 0], 1.5, STEPS, 5.0)
        with pytest.raises(ConfigError, match=r"strength: 0"):
            img2img(base, images, prompts, [0, 0], 0, STEPS, 5.0)
        assert calls.count == 0
    finally:
        calls.handle.remove()
