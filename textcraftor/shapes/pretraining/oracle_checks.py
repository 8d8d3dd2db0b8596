"""The base model's measurements for the card: the oracle's per-attribute accuracy on the
pipeline's samples, and on the VAE's own reconstructions (the ceiling a UNet could reach)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import save_image

from textcraftor.config import SampleConfig
from textcraftor.generation import sample_images
from textcraftor.models import Pipeline
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.cells import single_shape_scenes
from textcraftor.shapes.oracle import batch_alignment
from textcraftor.shapes.pretraining.config import IMAGE_SIZE
from textcraftor.shapes.world import describe, render


def oracle_accuracy(pipeline: Pipeline, count: int, steps: int, seed: int,
                    guidance_scale: float = 5.0, grid: Path | None = None) -> dict[str, float]:
    """The model on ``count`` single-shape prompts (every attribute named), ``steps`` DDIM
    steps: the oracle's per-attribute accuracy; the sample grid goes to ``grid``."""
    prompts = [describe(scene) for scene in single_shape_scenes(count, seed + 1)]
    sample = SampleConfig(resolution=IMAGE_SIZE, num_steps=steps, guidance_scale=guidance_scale,
                          k=1)
    tokens = PromptTokenizer(pipeline.tokenizer)
    images = torch.cat([
        sample_images(pipeline, pipeline.text_encoder, tokens, prompts[i:i + 16],
                      list(range(i, min(i + 16, count))), sample, alpha=0.0)
        for i in range(0, count, 16)])
    if grid is not None:
        save_image(images[:64], grid, nrow=8)
        (grid.parent / "samples.txt").write_text("\n".join(prompts[:64]) + "\n")
    scores = batch_alignment(images, prompts)
    return {k: round(v, 4) for k, v in scores.items()}


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, count: int, seed: int) -> dict[str, float]:
    """The oracle's per-attribute accuracy on the VAE's reconstructions (decoded posterior
    means) of ``count`` single-shape renders: what a perfect UNet could reach."""
    scenes = single_shape_scenes(count, seed + 2)
    images = torch.stack([pil_to_tensor(render(scene)) for scene in scenes]).float() / 255.0
    decoded = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample
    scores = batch_alignment(((decoded + 1) / 2).clamp(0, 1), [describe(s) for s in scenes])
    return {k: round(v, 4) for k, v in scores.items()}
