"""Sampling images: the base model matches diffusers' own pipeline, the interpolation dial
a·E_ft + (1−a)·E_orig is exact at its ends, and M fine-tuned steps means the last M."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline

from textcraftor.config import SampleConfig
from textcraftor.generate import main as generate_main
from textcraftor.generation import sample_images
from textcraftor.sampler import PromptTokenizer, guidance_context, initial_noise, latent_shape

PROMPTS = ["a lighthouse on a cliff at dusk", "a bowl of ramen, studio lighting"]
SEEDS = [3, 4]
T = 4
SAMPLE = SampleConfig(resolution=32, num_steps=T, k=1)


@pytest.fixture
def tuned(pipeline):
    """The tiny pipeline with its trainable encoder moved away from the original."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipeline.text_encoder.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    pipeline.text_encoder.eval()
    return pipeline


def sample(pipeline, encoder=None, **kwargs) -> torch.Tensor:
    tokens = PromptTokenizer(pipeline.tokenizer)
    return sample_images(pipeline, encoder or pipeline.text_encoder, tokens, PROMPTS, SEEDS,
                         kwargs.pop("config", SAMPLE), **kwargs)


class Contexts:
    """encoder_hidden_states of every UNet call."""

    def __init__(self, unet):
        self.seen: list[torch.Tensor] = []
        unet.register_forward_hook(
            lambda m, a, kw, out: self.seen.append(kw["encoder_hidden_states"].clone()),
            with_kwargs=True)


def test_base_images_match_the_diffusers_pipeline(pipeline):
    """alpha=0 is the base model: the same images as diffusers' StableDiffusionPipeline with
    the same components, DDIM (eta 0), guidance 7.5 and starting noise."""
    images = sample(pipeline, alpha=0.0)
    reference = StableDiffusionPipeline(
        vae=pipeline.vae, text_encoder=pipeline.original_text_encoder,
        tokenizer=pipeline.tokenizer, unet=pipeline.unet, scheduler=pipeline.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    latents = initial_noise(SEEDS, latent_shape(pipeline.vae, pipeline.unet, 32), "cpu")
    expected = reference(PROMPTS, height=32, width=32, num_inference_steps=T, guidance_scale=7.5,
                         eta=0.0, latents=latents, output_type="pt").images
    assert images.shape == (2, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_alpha_ends_reproduce_base_and_finetuned_exactly(tuned):
    base = sample(tuned, encoder=tuned.original_text_encoder)  # sampling with the original
    finetuned = sample(replace(tuned, original_text_encoder=tuned.text_encoder))  # E_ft only
    assert not torch.equal(base, finetuned)
    assert torch.equal(sample(tuned, alpha=0.0), base)
    assert torch.equal(sample(tuned, alpha=1.0), finetuned)
    middle = sample(tuned, alpha=0.5)
    assert not torch.equal(middle, base) and not torch.equal(middle, finetuned)


def test_intermediate_alpha_conditions_on_the_interpolated_embedding(tuned):
    tokens = PromptTokenizer(tuned.tokenizer)
    ids, empty = tokens(PROMPTS), tokens([""])[0]
    with torch.no_grad():
        original = guidance_context(tuned.original_text_encoder, ids, empty, 7.5)
        finetuned = guidance_context(tuned.text_encoder, ids, empty, 7.5)
    contexts = Contexts(tuned.unet)
    sample(tuned, alpha=0.25)
    assert len(contexts.seen) == T
    for seen in contexts.seen:
        torch.testing.assert_close(seen, 0.75 * original + 0.25 * finetuned)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_finetuned_encoder_drives_only_the_last_m_steps(tuned, m):
    tokens = PromptTokenizer(tuned.tokenizer)
    ids, empty = tokens(PROMPTS), tokens([""])[0]
    with torch.no_grad():
        original = guidance_context(tuned.original_text_encoder, ids, empty, 7.5)
        finetuned = guidance_context(tuned.text_encoder, ids, empty, 7.5)
    contexts = Contexts(tuned.unet)
    images = sample(tuned, finetuned_steps=m)
    assert [torch.equal(c, finetuned) for c in contexts.seen] == [False] * (T - m) + [True] * m
    assert all(torch.equal(c, original) for c in contexts.seen[: T - m])
    # the config's test_finetuned_steps is the default M
    assert torch.equal(sample(tuned, config=replace(SAMPLE, test_finetuned_steps=m)), images)


def test_zero_finetuned_steps_means_all(tuned):
    everything = sample(tuned, finetuned_steps=T)
    assert torch.equal(sample(tuned, finetuned_steps=0), everything)
    assert torch.equal(sample(tuned), everything)  # test_finetuned_steps defaults to 0
    assert not torch.equal(sample(tuned, finetuned_steps=2), everything)


def test_stochastic_ddim_is_seeded_and_alpha_zero_stays_exact(tuned):
    config = replace(SAMPLE, eta=0.7)
    base = sample(tuned, encoder=tuned.original_text_encoder, config=config)
    assert torch.equal(sample(tuned, alpha=0.0, config=config), base)
    assert torch.equal(sample(tuned, encoder=tuned.original_text_encoder, config=config), base)
    assert not torch.equal(base, sample(tuned, encoder=tuned.original_text_encoder))


def test_bad_alpha_and_m_are_rejected(pipeline):
    with pytest.raises(ValueError, match="alpha must be in"):
        sample(pipeline, alpha=1.5)
    with pytest.raises(ValueError, match="finetuned_steps must be in"):
        sample(pipeline, finetuned_steps=T + 1)


def png_bytes(folder) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.png"))]


def test_generate_cli_from_a_run_folder(make_trainer, tmp_path):
    trainer = make_trainer("train.steps=1", "train.lr=0.1", "train.eval_every=0")
    trainer.fit()
    run = str(trainer.run_dir)
    common = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seeds", "0,1"]
    assert generate_main([*common, "--run", run, "--alpha", "1", "--out",
                          str(tmp_path / "tuned")]) == 0
    assert generate_main([*common, "--run", run, "--alpha", "0", "--out",
                          str(tmp_path / "alpha0")]) == 0
    base_args = [*common, "--out", str(tmp_path / "base"), *(
        a for o in ("sample.num_steps=4", "sample.resolution=32", "sample.k=2")
        for a in ("--set", o))]
    assert generate_main(base_args) == 0

    listing = json.loads((tmp_path / "tuned" / "prompts.json").read_text())
    assert [(e["prompt"], e["seed"]) for e in listing] == [
        (PROMPTS[0], 0), (PROMPTS[0], 1), (PROMPTS[1], 0), (PROMPTS[1], 1)]
    assert len(png_bytes(tmp_path / "tuned")) == 4
    # alpha=0 with a fine-tuned run is exactly the base model; alpha=1 is not
    assert png_bytes(tmp_path / "alpha0") == png_bytes(tmp_path / "base")
    assert png_bytes(tmp_path / "tuned") != png_bytes(tmp_path / "base")


def test_sample_images_leaves_the_pipeline_untouched(tuned):
    before = copy.deepcopy(tuned.text_encoder.state_dict())
    images = sample(tuned, alpha=0.5)
    assert not images.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in tuned.text_encoder.state_dict().items())


def test_a_text_encoder_transfers_to_a_model_with_the_same_text_tower(make_trainer, tmp_path):
    """``--text-encoder-from``: a tuned encoder drives another pipeline of the same text tower
    (here the same tiny model: the images are those of ``--run``); a tuned encoder of another
    hidden size and tokenizer (tiny's into ShapesWorld's) is refused, naming both models."""
    trainer = make_trainer("train.steps=1", "train.lr=0.1", "train.eval_every=0")
    trainer.fit()
    run = str(trainer.run_dir)
    common = ["--prompt", PROMPTS[0], "--seeds", "0,1", *(
        a for o in ("sample.num_steps=4", "sample.resolution=32", "sample.k=2")
        for a in ("--set", o))]
    assert generate_main([*common, "--run", run, "--out", str(tmp_path / "tuned")]) == 0
    assert generate_main([*common, "--set", "model.source=tiny", "--text-encoder-from", run,
                          "--out", str(tmp_path / "moved")]) == 0
    assert generate_main([*common, "--set", "model.source=tiny",
                          "--out", str(tmp_path / "base")]) == 0
    assert png_bytes(tmp_path / "moved") == png_bytes(tmp_path / "tuned")
    assert png_bytes(tmp_path / "moved") != png_bytes(tmp_path / "base")


def test_a_text_encoder_of_another_tower_is_refused_naming_both(make_trainer, tmp_path,
                                                               capsys):
    from textcraftor.configio import ConfigError
    from textcraftor.models import load_pipeline, load_tokenizer
    from textcraftor.transfer import check_text_encoder_fits

    trainer = make_trainer("train.steps=1", "train.eval_every=0")
    trainer.fit()
    run = str(trainer.run_dir)
    code = generate_main(["--prompt", "a red circle", "--set", "model.source=shapes",
                          "--set", "sample.num_steps=2", "--set", "sample.k=2",
                          "--text-encoder-from", run,
                          "--out", str(tmp_path / "x")])
    message = capsys.readouterr().err
    assert code == 2
    assert f"--text-encoder-from {run} (model.source=tiny): its text encoder (hidden size 32" in \
        message and "the pipeline of model.source=shapes, whose text encoder has hidden size 64" \
        in message, message
    # same shapes, other token ids (a real CLIPTokenizer whose tokenizer.json swaps two
    # tokens' ids): the tokenizers are compared
    from transformers import CLIPTokenizer

    tiny = load_pipeline("tiny")
    weights = tiny.text_encoder.state_dict()
    folder = tmp_path / "swapped"
    load_tokenizer("tiny").save_pretrained(str(folder))
    saved = json.loads((folder / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]
    vocab["red</w>"], vocab["blue</w>"] = vocab["blue</w>"], vocab["red</w>"]
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    other = CLIPTokenizer.from_pretrained(str(folder))
    assert other("red")["input_ids"] != tiny.tokenizer("red")["input_ids"]
    with pytest.raises(ConfigError, match="maps tokens to other ids than the tokenizer of B"):
        check_text_encoder_fits(weights, "A", tiny.text_encoder, tiny.tokenizer, "B", other)
    check_text_encoder_fits(weights, "A", tiny.text_encoder, tiny.tokenizer, "B",
                            load_tokenizer("tiny"))
    with pytest.raises(ConfigError, match="not a CLIP text encoder"):
        check_text_encoder_fits({"x": torch.zeros(1)}, "A", tiny.text_encoder, tiny.tokenizer,
                                "B")
    missing = generate_main(["--prompt", "p", "--text-encoder-from", str(tmp_path / "nope"),
                             "--out", str(tmp_path / "y")])
    assert missing == 2 and "--text-encoder-from" in capsys.readouterr().err
