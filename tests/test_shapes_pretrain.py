"""The ShapesWorld pretraining command on a few steps: every stage trains, the result is SD's
on-disk layout that the one pipeline loader reads, and the card records what happened."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
import torch
import torch.nn.functional as F

from textcraftor.models import load_pipeline, sd15_scheduler
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.pretrain import main, pretrain
from textcraftor.shapes.pretraining.clip_stage import (
    train_clip,
    word_classes,
    word_identity_loss,
)
from textcraftor.shapes.pretraining.config import PretrainConfig
from textcraftor.shapes.pretraining.loop import batches, run_stage, schedule, stage_clock
from textcraftor.shapes.pretraining.unet_stage import (
    MIN_SNR_GAMMA,
    UNET_SHAPE_WEIGHT,
    unet_loss_weights,
)
from textcraftor.shapes.pretraining.vae_stage import shape_weights, shape_windows
from textcraftor.shapes.world import ShapesDataset, caption, describe, sample_scene
from textcraftor.tokenizer import build_clip_tokenizer


def test_pretrain_writes_a_loadable_pipeline_and_a_card(tmp_path):
    out = pretrain(PretrainConfig(out=str(tmp_path / "shapes"), clip_steps=3, vae_steps=3,
                                  unet_steps=4, aesthetic_steps=3, batch_size=4,
                                  vae_batch_size=2, pool_size=8, aesthetic_images=20,
                                  eval_every=2, eval_prompts=4, eval_steps=2, threads=1))
    card = json.loads((out / "card.json").read_text())
    for stage, steps in (("clip", 3), ("aesthetic", 3), ("vae", 3), ("unet", 4)):
        stats = card["stages"][stage]
        assert stats["steps"] == steps and stats["last_loss"] == stats["last_loss"]  # finite
    assert [p["step"] for p in card["stages"]["unet"]["progress"]] == [2]
    assert 0 <= card["oracle"]["colour"] <= 1 and card["oracle"]["unscored"] == 0
    # the VAE's ceiling is measured on renders whose every attribute is known
    assert card["vae_reconstruction_oracle"]["unscored"] == 0
    readme = (out / "README.md").read_text()
    assert "VAE's own reconstructions" in readme and "trained on 32 px windows" in readme
    reliance = card["attribute_reliance"]
    assert set(reliance) == {"shape", "colour", "size", "position", "background"}
    assert all(r["text_change"] > 0 for r in reliance.values())  # every swap changes the text
    assert (out / "samples.png").is_file()

    pipeline = load_pipeline(str(out))
    assert pipeline.vae.config.scaling_factor == card["stages"]["vae"]["scaling_factor"] != 0.18215
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    # the pipeline's text encoder is the CLIP's text tower, weight for weight
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(out / "clip")
    tower = clip.text_model.state_dict()
    for name, weight in pipeline.text_encoder.state_dict().items():
        assert torch.equal(weight, tower[name]), name


def test_unet_loss_weights_favour_shapes_and_cap_the_easy_timesteps():
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler.from_config(sd15_scheduler().config)
    t = torch.tensor([0, 500, 999])
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[:, :, 1, 1] = True
    weights = unet_loss_weights(schedule, t, masks)
    assert weights.shape == (3, 1, 4, 4)
    assert torch.allclose(weights[:, 0, 1, 1], (1 + UNET_SHAPE_WEIGHT) * weights[:, 0, 0, 0])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    # near t = 0 the SNR is in the hundreds: its weight is γ / SNR; at t = 999 it stays 1
    assert snr[0] > MIN_SNR_GAMMA > snr[2]
    assert torch.allclose(weights[:, 0, 0, 0], torch.stack([MIN_SNR_GAMMA / snr[0],
                                                            torch.tensor(1.0),
                                                            torch.tensor(1.0)]).float())


def test_vae_windows_hold_a_shape_and_carry_their_pixel_weights():
    images, _, _ = ShapesDataset(seed=4).batch(0, 48)
    full = images.float() / 127.5 - 1
    weights = shape_weights(full)  # from whole images: a window's corner may lie on a shape
    windows, window_weights = shape_windows(full, weights, 32, torch.Generator().manual_seed(0))
    assert windows.shape == (48, 3, 32, 32) and window_weights.shape == (48, 1, 32, 32)
    assert (window_weights > 1).flatten(1).any(1).all()  # every window holds a shape pixel
    for image, weight, window, window_weight in zip(full, weights, windows, window_weights):
        # each window is a true cut of its own image, and its weights are the same cut's
        cuts = image.unfold(1, 32, 1).unfold(2, 32, 1)  # [3, 33, 33, 32, 32]
        where = (cuts == window[:, None, None]).flatten(-2).all(-1).all(0).nonzero()
        assert len(where) >= 1
        top, left = where[0].tolist()
        assert torch.equal(window_weight, weight[:, top:top + 32, left:left + 32])
    again, _ = shape_windows(full, weights, 32, torch.Generator().manual_seed(0))
    other, _ = shape_windows(full, weights, 32, torch.Generator().manual_seed(1))
    assert torch.equal(windows, again) and not torch.equal(windows, other)
    assert shape_windows(full, weights, 64, torch.Generator())[0] is full  # whole images


def test_the_learning_rate_warms_up_from_zero_then_decays_to_a_tenth_of_the_peak():
    peak, warmup, steps = 1e-3, 100, 1000
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    lr = schedule(optimizer, steps, warmup)
    seen = []
    for _ in range(steps + 1):  # the rate of step i is the one step i updates with
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr.step()

    def closed_form(i: int) -> float:
        if i < warmup:
            return peak * i / warmup
        progress = (i - warmup) / (steps - warmup)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    midway = (warmup + steps) // 2
    for i in (0, warmup // 2, warmup, midway, steps):
        assert seen[i] == pytest.approx(closed_form(i), rel=1e-9, abs=1e-15), i
    assert seen[0] == 0 and seen[warmup] == pytest.approx(peak)
    assert seen[midway] == pytest.approx(peak * 0.55) and seen[steps] == pytest.approx(peak / 10)
    assert all(a < b for a, b in zip(seen[:warmup], seen[1:warmup + 1]))  # rises to the peak
    assert all(a > b for a, b in zip(seen[warmup:steps], seen[warmup + 1:]))  # then only falls


def test_the_stages_leave_the_final_minutes_for_saving_and_the_card(capsys):
    # measured: v4's stages ran to the 60-minute cap and its card's evaluation ended at 61.0
    nearly_spent = PretrainConfig(out="unused", max_minutes=1.0, final_minutes=1.0 - 1e-7)
    clock = stage_clock(nearly_spent)
    time.sleep(0.01)
    assert clock.out_of_time()
    assert run_stage("unet", 5, clock, lambda _: 1.0)["steps"] == 0
    assert not stage_clock(PretrainConfig(out="unused")).out_of_time()
    with pytest.raises(ValueError, match=r"final_minutes must be in \[0, max_minutes = 2\)"):
        PretrainConfig(out="unused", max_minutes=2.0, final_minutes=2.0)
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--final-minutes", "-1"])
    assert "final_minutes must be in [0, max_minutes = 60), got -1" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value", "message"), [
    ("unet_steps", 0, "unet_steps must be an integer >= 1, got 0"),
    ("batch_size", 1, "batch_size must be an integer >= 2, got 1"),
    ("pool_size", 16, "pool_size must be an integer >= 32 (batch_size), got 16"),
    ("lr", 0.0, "lr must be > 0, got 0"),
    ("vae_lr", float("nan"), "vae_lr must be > 0, got nan"),
    ("caption_dropout", 1.0, "caption_dropout must be in [0, 1), got 1"),
    ("offset_noise", -0.1, "offset_noise must be >= 0, got -0.1"),
    ("vae_window", 30, "vae_window must be a multiple of 4 in [8, 64]"),
    ("threads", 0, "threads must be an integer >= 1, got 0"),
    ("word_identity_weight", -1.0, "word_identity_weight must be >= 0 (0 turns it off), got -1"),
])
def test_every_bad_setting_is_named_before_any_training(field, value, message, capsys):
    with pytest.raises(ValueError) as error:
        PretrainConfig(out="unused", **{field: value})
    assert message in str(error.value)
    flag = f"--{field.replace('_', '-')}"
    with pytest.raises(SystemExit):
        main(["--out", "unused", flag, str(value)])
    assert message in capsys.readouterr().err


def world_captions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return [caption(scene, rng) for scene in scenes] + [describe(scene) for scene in scenes]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer")


def test_every_caption_token_has_a_word_class_and_other_tokens_none(tokenizer):
    classes = word_classes(tokenizer)
    ids = PromptTokenizer(tokenizer)(world_captions(400, seed=3))
    assert (classes[ids] >= 0).all()  # the world's words, ':', start and end of text
    used = classes[classes >= 0]
    assert torch.equal(used.sort().values, torch.arange(len(used)))  # one class per token id
    outside = tokenizer("zebra violet hexagon", add_special_tokens=False).input_ids
    assert (classes[torch.tensor(outside)] == -100).all()


def test_the_word_identity_loss_ignores_the_pads_after_the_end_of_text(tokenizer):
    classes = word_classes(tokenizer)
    ids = PromptTokenizer(tokenizer)(["a red star", "two shapes: a blue cross and a pink square"])
    torch.manual_seed(0)
    probe = torch.nn.Linear(8, int(classes.max()) + 1)
    hidden = torch.randn(2, ids.shape[1], 8)
    loss = word_identity_loss(hidden, ids, classes, probe, tokenizer.eos_token_id)
    first_end = (ids == tokenizer.eos_token_id).int().argmax(1)
    pads_changed = hidden.clone()
    pads_changed[0, first_end[0] + 1:] += 5.0
    assert word_identity_loss(pads_changed, ids, classes, probe,
                              tokenizer.eos_token_id) == loss
    word_changed = hidden.clone()
    word_changed[0, 3] += 5.0  # "star"
    assert word_identity_loss(word_changed, ids, classes, probe,
                              tokenizer.eos_token_id) != loss


def same_word_contrast(text_tower, tokens: PromptTokenizer, classes: torch.Tensor) -> float:
    """Mean cosine between one word's states in different captions, minus the mean cosine
    between distinct words' mean states: high when each state is its word, not its context."""
    ids = tokens(world_captions(64, seed=5))
    with torch.no_grad():
        states = F.normalize(text_tower(input_ids=ids).last_hidden_state, dim=-1)
    word = classes[ids].masked_fill(ids == tokens.tokenizer.eos_token_id, -100)
    same, means = [], []
    for w in word[word >= 0].unique():
        own = states[word == w]
        same.append((own @ own.T).mean())
        means.append(F.normalize(own.mean(0), dim=0))
    between = torch.stack(means) @ torch.stack(means).T
    off_diagonal = (between.sum() - between.diagonal().sum()) / (len(means) ** 2 - len(means))
    return float(torch.stack(same).mean() - off_diagonal)


def test_the_word_identity_term_keeps_each_word_in_its_own_hidden_state(tokenizer):
    tokens, classes = PromptTokenizer(tokenizer), word_classes(tokenizer)
    steps, contrast = 60, {}
    for weight in (0.0, 1.0):
        config = PretrainConfig(out="unused", clip_steps=steps, batch_size=16,
                                word_identity_weight=weight)
        data = batches(ShapesDataset(seed=0, image_size=64), 16)
        clip, stats = train_clip(config, stage_clock(config), tokens, data)
        assert stats["steps"] == steps
        contrast[weight] = same_word_contrast(clip.text_model, tokens, classes)
    assert contrast[1.0] > contrast[0.0] + 0.1, contrast  # measured: 0.16 against -0.02


def test_components_from_trains_only_a_unet_of_the_asked_width_and_links_the_rest(tmp_path):
    from textcraftor.shapes.pretraining.card import sha256
    from textcraftor.shapes_weights import SHAPES_WEIGHTS, shapes_folder

    before = {p: sha256(p) for p in (SHAPES_WEIGHTS / "vae").iterdir()}
    out = pretrain(PretrainConfig(out=str(tmp_path / "small"), unet_width=16, unet_steps=2,
                                  batch_size=4, pool_size=8, eval_every=0, eval_prompts=2,
                                  eval_steps=2, threads=1,
                                  components_from=str(SHAPES_WEIGHTS)))
    for name in ("clip", "text_encoder", "tokenizer", "vae", "aesthetic"):
        link = out / name
        assert link.is_symlink() and link.resolve() == (SHAPES_WEIGHTS / name).resolve(), name
    assert not (out / "unet").is_symlink()
    # nothing was written through the links into the reused model
    assert {p: sha256(p) for p in (SHAPES_WEIGHTS / "vae").iterdir()} == before
    shapes_folder()
    card = json.loads((out / "card.json").read_text())
    source = json.loads((SHAPES_WEIGHTS / "card.json").read_text())
    for stage in ("clip", "aesthetic", "vae"):
        reused = card["stages"][stage]["reused_from"]  # relative, as the links are
        assert (out / reused).resolve() == SHAPES_WEIGHTS.resolve() and reused.startswith("..")
        assert card["stages"][stage]["steps"] == source["stages"][stage]["steps"]
    assert card["stages"]["unet"]["steps"] == 2 and "reused_from" not in card["stages"]["unet"]
    # the checksums cover the linked files too: a change in the reused model is caught
    checksums = json.loads((out / "checksums.json").read_text())
    assert "text_encoder/model.safetensors" in checksums and "unet/config.json" in checksums
    assert "--unet-width 16" in (out / "README.md").read_text()

    small, large = load_pipeline(str(out)), load_pipeline(str(SHAPES_WEIGHTS))
    assert list(small.unet.config.block_out_channels) == [16, 32]
    assert sum(p.numel() for p in small.unet.parameters()) == card["stages"]["unet"][
        "parameters"] < sum(p.numel() for p in large.unet.parameters()) / 4
    for name, weight in small.text_encoder.state_dict().items():
        assert torch.equal(weight, large.text_encoder.state_dict()[name]), name


@pytest.mark.parametrize(("field", "value", "message"), [
    ("unet_width", 20, "unet_width must be a multiple of 8 (attention heads of 8 channels), "
                       ">= 8, got 20"),
    ("unet_width", 0, "unet_width must be a multiple of 8"),
    ("components_from", "/no/such/model", "components_from '/no/such/model' lacks clip, "
                                          "text_encoder, tokenizer, vae, aesthetic, card.json"),
])
def test_a_bad_unet_width_or_reused_folder_is_named_before_any_training(field, value, message,
                                                                       capsys):
    with pytest.raises(ValueError) as error:
        PretrainConfig(out="unused", **{field: value})
    assert message in str(error.value)
    with pytest.raises(SystemExit):
        main(["--out", "unused", f"--{field.replace('_', '-')}", str(value)])
    assert message in capsys.readouterr().err
