"""Every random draw that belongs to a sample comes from that sample's own generator: its image
never depends on its batch-mates or the batch size — at eta > 0, in generation, evaluation and
training, and in direct fine-tuning's per-sample t and noise."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from torchvision.io import read_image

from textcraftor.config import SampleConfig
from textcraftor.generate import main as generate_main
from textcraftor.generation import sample_images
from textcraftor.sampler import PromptTokenizer, Truncation

STOCHASTIC = SampleConfig(resolution=32, num_steps=4, k=2, eta=1.0)
CAR, FOX = "a blue car", "a red fox in snow"
# float32 kernels round differently for another batch size even without any randomness (the
# tiny pipeline at eta = 0: up to 2.4e-6 of an image in [0, 1]); a draw shared across the
# batch moved an image by up to 0.44 before each sample had its own generator
TOLERANCE = 1e-5


def images(pipeline, prompts, seeds, config=STOCHASTIC) -> torch.Tensor:
    return sample_images(pipeline, pipeline.text_encoder, PromptTokenizer(pipeline.tokenizer),
                         prompts, seeds, config)


def test_a_sample_at_eta_1_does_not_depend_on_its_batch_mates(pipeline):
    deterministic = SampleConfig(resolution=32, num_steps=4, k=2)
    alone = images(pipeline, [CAR], [22])
    with_mate = images(pipeline, [FOX, CAR], [11, 22])
    floor = (images(pipeline, [CAR], [22], deterministic)[0]
             - images(pipeline, [FOX, CAR], [11, 22], deterministic)[1]).abs().max()
    difference = (alone[0] - with_mate[1]).abs().max()
    print(f"seed 22 alone vs beside seed 11: max |Δ| {difference:.2e} at eta=1, "
          f"{floor:.2e} at eta=0")
    assert difference < TOLERANCE and difference <= 2 * floor + 1e-7
    # and the noise after x_T matters: eta = 0 gives another image from the same x_T
    assert (alone - images(pipeline, [CAR], [22], deterministic)).abs().max() > 1e-3


def test_stochastic_ddim_matches_diffusers_with_one_generator_per_sample(pipeline):
    """diffusers' pipeline given a list of generators draws x_T and every step's noise per
    sample from its own generator: the same stream as ours."""
    seeds = [11, 22]
    ours = sample_images(pipeline, pipeline.original_text_encoder,
                         PromptTokenizer(pipeline.tokenizer), [FOX, CAR], seeds, STOCHASTIC)
    reference = StableDiffusionPipeline(
        vae=pipeline.vae, text_encoder=pipeline.original_text_encoder,
        tokenizer=pipeline.tokenizer, unet=pipeline.unet, scheduler=pipeline.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference([FOX, CAR], height=32, width=32, num_inference_steps=4,
                         guidance_scale=STOCHASTIC.guidance_scale, eta=1.0, output_type="pt",
                         generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_generate_cli_gives_seed_22_the_same_image_alone_or_with_seed_11(tmp_path):
    common = ["--prompt", CAR, "--set", "sample.eta=1.0", "--set", "sample.num_steps=4",
              "--set", "sample.resolution=32", "--set", "sample.k=2"]
    assert generate_main([*common, "--seeds", "22", "--out", str(tmp_path / "one")]) == 0
    assert generate_main([*common, "--seeds", "11,22", "--out", str(tmp_path / "two")]) == 0
    one = read_image(str(tmp_path / "one" / "000_seed22_alpha1.png")).int()
    two = read_image(str(tmp_path / "two" / "001_seed22_alpha1.png")).int()
    # 8-bit files: a float difference of ~1e-6 can still cross a rounding boundary
    assert (one - two).abs().max() <= 1
    seed_11 = read_image(str(tmp_path / "two" / "000_seed11_alpha1.png")).int()
    assert (one - seed_11).abs().max() > 10


def test_evaluation_does_not_depend_on_the_evaluation_batch_size(make_trainer):
    overrides = ("sample.eta=1.0", "data.heldout_count=2", "data.eval_seeds=[0,1]")
    one = make_trainer(*overrides, "train.eval_batch_size=1").evaluate()
    four = make_trainer(*overrides, "train.eval_batch_size=4").evaluate()
    print(f"eta=1, eval_batch_size 1 vs 4: max |Δ image| "
          f"{(one.images - four.images).abs().max():.2e}")
    assert (one.images - four.images).abs().max() < TOLERANCE
    for name, value in one.metrics.items():
        assert abs(value - four.metrics[name]) < 1e-5, name


def test_a_training_sample_does_not_depend_on_its_batch_mates(make_trainer):
    trainer = make_trainer("sample.eta=1.0")
    last_two = Truncation.last_k(4, 2)
    _, both = trainer.forward_loss([FOX, CAR], [11, 22], last_two)
    _, alone = trainer.forward_loss([CAR], [22], last_two)
    assert abs(float(both["aesthetic"][1] - alone["aesthetic"][0])) < TOLERANCE
    _, other_seed = trainer.forward_loss([CAR], [23], last_two)
    assert abs(float(other_seed["aesthetic"][0] - alone["aesthetic"][0])) > TOLERANCE


def test_a_direct_pair_draws_its_own_t_and_noise(make_trainer):
    trainer = make_trainer("sample.truncation=direct", "data.pairs=shapes")
    pictures, captions = trainer.pairs.batch(0, 2)
    _, both = trainer.direct_loss(pictures, captions, [11, 22])
    _, alone = trainer.direct_loss(pictures[1:], captions[1:], [22])
    assert abs(float(both["aesthetic"][1] - alone["aesthetic"][0])) < TOLERANCE
    _, reseeded = trainer.direct_loss(pictures[1:], captions[1:], [23])
    assert abs(float(reseeded["aesthetic"][0] - alone["aesthetic"][0])) > TOLERANCE
