"""Images from the base encoder, a fine-tuned one, or an interpolation of the two.

The quality dial of the paper: E(a) = a·E_ft + (1−a)·E_orig drives the last M of T steps (the
original encoder the first T−M). a=0 is exactly the base model, a=1 exactly the fine-tuned one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPTextModel

from textcraftor.config import SampleConfig
from textcraftor.models import Pipeline
from textcraftor.sampler import (
    PromptTokenizer,
    SampleNoise,
    decode,
    denoise,
    guidance_context,
    interpolate_context,
    latent_shape,
)


@torch.no_grad()
def sample_images(
    pipeline: Pipeline,
    finetuned_encoder: CLIPTextModel,
    tokens: PromptTokenizer,
    prompts: Sequence[str],
    noise_seeds: Sequence[int],
    sample: SampleConfig,
    alpha: float = 1.0,
    finetuned_steps: int | None = None,
) -> torch.Tensor:
    """[B,3,H,W] in [0,1]. ``finetuned_steps`` (M) defaults to ``sample.test_finetuned_steps``
    (0 there means all T steps)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = sample.num_steps
    m = sample.test_finetuned_steps if finetuned_steps is None else finetuned_steps
    if not 0 <= m <= t:
        raise ValueError(f"finetuned_steps must be in [0, {t}], got {m}")
    m = m or t
    device = tokens.device
    ids, empty = tokens(prompts), tokens([""])[0]
    original = guidance_context(pipeline.original_text_encoder, ids, empty, sample.guidance_scale)
    if alpha == 0.0:
        late = original
    else:
        finetuned = guidance_context(finetuned_encoder, ids, empty, sample.guidance_scale)
        late = interpolate_context(original, finetuned, alpha)
    if pipeline.scheduler.num_inference_steps != t:
        pipeline.scheduler.set_timesteps(t, device=device)
    shape = latent_shape(pipeline.vae, pipeline.unet, sample.resolution)
    # each sample's x_T and (eta > 0) DDIM noise from its own seed: the same draws at every
    # alpha, whatever else shares the batch
    noise = SampleNoise(noise_seeds, device)
    latents = noise.draw(shape)
    x0 = denoise(pipeline.unet, pipeline.scheduler, latents, original, late, t - m, None,
                 sample.guidance_scale, sample.eta, noise=noise)
    return decode(pipeline.vae, x0).float()
