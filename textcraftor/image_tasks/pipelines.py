"""diffusers' own image-to-image and inpainting pipelines on a loaded ``models.Pipeline``, with
a chosen text encoder, and one call of each on float images with one seed per image.

The sampling is diffusers' (``StableDiffusionImg2ImgPipeline``,
``StableDiffusionInpaintPipeline``; its 4-channel UNet path: after each DDIM step the latents
outside the mask are replaced by the input's latents noised to the next timestep, and by the
input's own latents after the last). What is done here:

- **Images go in as latents**, the VAE posterior's mean × ``scaling_factor`` (as the trainer's
  direct mode encodes them), through the pipelines' documented latents input (an ``image``
  with the VAE's latent channels is not encoded again). Given pixels, diffusers *samples*
  the posterior (``retrieve_latents``' default); the ShapesWorld VAE's posterior standard
  deviation is about 1 (it was trained without a useful KL term), so a sample is mostly noise:
  its round trip changed a clean render by 0.137 mean absolute pixel value against 0.007 for
  the mean, and the oracle read ten shapes in a one-shape image (measured here; DESIGN.md).
  SD's VAE has a small posterior spread, where the two hardly differ.
- **One CPU ``torch.Generator`` per image**, seeded by its noise seed: an image's noise depends
  on its seed alone (diffusers draws each sample from its own generator when given a list), so
  the base and the tuned encoder edit every image from the same noise, whatever the batch.
- ``eta`` 0 (deterministic DDIM): the seed only sets the noise that strength adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)
from transformers import CLIPTextModel

from textcraftor.models import Pipeline

from .config import check_strength
from .masks import check_mask


@dataclass(frozen=True)
class EditPipelines:
    """diffusers' two editing pipelines sharing one model's modules and one text encoder."""

    img2img: StableDiffusionImg2ImgPipeline  # image-to-image (SDEdit)
    inpaint: StableDiffusionInpaintPipeline  # inpainting, 4-channel UNet path

    @property
    def side(self) -> int:
        """The image side in pixels the UNet's latents decode to."""
        return self.img2img.unet.config.sample_size * self.img2img.vae_scale_factor


def edit_pipelines(pipeline: Pipeline, text_encoder: CLIPTextModel) -> EditPipelines:
    """The img2img and inpainting pipelines on ``pipeline``'s tokenizer, UNet and VAE (shared,
    not copied) and each its own copy of the DDIM scheduler, with ``text_encoder`` encoding
    the prompts and the empty prompt of classifier-free guidance alike: the base encoder
    (``pipeline.original_text_encoder``) or a tuned one. No safety checker, no download.
    Raises ValueError for a UNet that does not take 4 latent channels (a 9-channel inpainting
    UNet takes another path)."""
    if pipeline.unet.config.in_channels != pipeline.vae.config.latent_channels:
        raise ValueError(f"model.source {pipeline.source}: its UNet takes "
                         f"{pipeline.unet.config.in_channels} channels; these tasks use the "
                         f"{pipeline.vae.config.latent_channels}-channel path")
    text_encoder.requires_grad_(False).eval()
    pipes = []
    for cls in (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline):
        pipe = cls(vae=pipeline.vae, text_encoder=text_encoder, tokenizer=pipeline.tokenizer,
                   unet=pipeline.unet,
                   scheduler=DDIMScheduler.from_config(pipeline.scheduler.config),
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipes.append(pipe)
    return EditPipelines(*pipes)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Float images [B, 3, H, W] in [0, 1] → the VAE posterior's mean × scaling_factor,
    [B, C, H/f, W/f] (C latent channels, f the VAE factor), on the VAE's device and dtype."""
    param = next(vae.parameters())
    pixels = images.to(param.device, param.dtype) * 2 - 1
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def _check_batch(images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int],
                 side: int) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, side, side):
        raise ValueError(f"images: shape {tuple(images.shape)} is not allowed; allowed: "
                         f"[B, 3, {side}, {side}] (the model's image size)")
    if not (len(prompts) == len(seeds) == images.shape[0]):
        raise ValueError(f"{images.shape[0]} images need as many prompts and seeds, got "
                         f"{len(prompts)} prompts and {len(seeds)} seeds")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images: values in [{images.min().item():g}, "
                         f"{images.max().item():g}] are not allowed; allowed: [0, 1]")


def img2img(pipes: EditPipelines, images: torch.Tensor, prompts: Sequence[str],
            seeds: Sequence[int], strength: float, num_steps: int,
            guidance_scale: float) -> torch.Tensor:
    """Edit each image [B, 3, H, W] in [0, 1] towards its prompt: the input's latents noised
    to step int(strength·T) of T = ``num_steps`` DDIM steps, then denoised (SDEdit).
    Returns float [B, 3, H, W] in [0, 1] on the CPU. Raises ConfigError (a ValueError) naming
    ``strength`` outside (0, 1] or running no step, ValueError for images or lengths that do
    not fit, all before any sampling."""
    check_strength(strength, num_steps, "strength")
    _check_batch(images, prompts, seeds, pipes.side)
    latents = encode_latents(pipes.img2img.vae, images)
    out = pipes.img2img(prompt=list(prompts), image=latents, strength=strength,
                        num_inference_steps=num_steps, guidance_scale=guidance_scale, eta=0.0,
                        generator=_generators(seeds), output_type="pt")
    return out.images.float().cpu()


def inpaint(pipes: EditPipelines, images: torch.Tensor, masks: torch.Tensor | np.ndarray,
            prompts: Sequence[str], seeds: Sequence[int], num_steps: int,
            guidance_scale: float, strength: float = 1.0) -> torch.Tensor:
    """Repaint the masked pixels of each image [B, 3, H, W] in [0, 1] to fit its prompt;
    ``masks`` [B, 1, H, W] or [B, H, W], 1 = repaint (``masks.check_mask``). Returns float
    [B, 3, H, W] in [0, 1] on the CPU. Raises ValueError naming ``mask_image`` for a mask of
    the wrong size or all zeros, ConfigError naming ``strength``, before any sampling."""
    check_strength(strength, num_steps, "strength")
    side = pipes.side
    _check_batch(images, prompts, seeds, side)
    mask = check_mask(masks, side, side, count=images.shape[0])
    pipe = pipes.inpaint
    latents = encode_latents(pipe.vae, images)
    # The 4-channel UNet never reads the masked image's latents; the pipeline still prepares
    # them, so they are given as what it would compute (the input with the mask cleared).
    cells = torch.nn.functional.interpolate(mask, size=latents.shape[-2:]).to(latents)
    out = pipe(prompt=list(prompts), image=latents, mask_image=mask.to(latents.device),
               masked_image_latents=latents * (1 - cells), height=side, width=side,
               strength=strength, num_inference_steps=num_steps, guidance_scale=guidance_scale,
               eta=0.0, generator=_generators(seeds), output_type="pt")
    return out.images.float().cpu()


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """decode(encode_latents(images)) as float [B, 3, H, W] in [0, 1] on the CPU: what the
    inpainting pipeline returns where it keeps the input's latents."""
    latents = encode_latents(vae, images)
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    return (decoded.float().cpu() / 2 + 0.5).clamp(0, 1)
