"""Stage 4: a small UNet (``UNet2DConditionModel``) on the VAE's latents of a pool of pairs
encoded once, conditioned on the frozen CLIP text encoder's hidden states: ε-prediction on SD
v1.5's scaled-linear schedule with offset noise (else the backgrounds collapse to grey),
min-SNR-5 timestep weights and extra weight on the shapes' latent cells, 10 % empty captions
so classifier-free guidance works."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from textcraftor.models import sd15_scheduler
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.cells import LATENT_FACTOR, shape_mask
from textcraftor.shapes.pretraining.config import IMAGE_SIZE, WIDTH, PretrainConfig
from textcraftor.shapes.pretraining.loop import Clock, adamw, descend, run_stage
from textcraftor.shapes.world import ShapesDataset

UNET_SHAPE_WEIGHT = 4.0  # UNet loss: extra weight of the latent cells a shape touches
MIN_SNR_GAMMA = 5.0  # UNet loss: timestep weight min(SNR, γ) / SNR


def unet_config(width: int = 48) -> dict:
    """16×16 latents, blocks of ``width`` and 2·``width`` channels, cross-attention at 8×8 only
    (at 16×16 it would triple the step time): 2.2 M parameters at width 48 (``shapes``), 0.6 M
    at 24 (``shapes-s``). Group norm uses 16 groups where the width allows, else 8."""
    return dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(width, 2 * width), cross_attention_dim=WIDTH,
                attention_head_dim=8, norm_num_groups=16 if width % 16 == 0 else 8,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


@dataclass(frozen=True)
class UNetPool:
    latents: torch.Tensor  # [N,4,16,16] scaled VAE latents (posterior means)
    contexts: torch.Tensor  # [N,77,WIDTH] frozen text encoder's last hidden states
    shape_masks: torch.Tensor  # [N,1,16,16] bool: latent cells that a shape's pixels touch
    empty_context: torch.Tensor  # [1,77,WIDTH] hidden states of the empty caption


@torch.no_grad()
def encode_pool(config: PretrainConfig, tokens: PromptTokenizer, text_encoder: CLIPTextModel,
                vae: AutoencoderKL, dataset: ShapesDataset, start: int) -> UNetPool:
    """The UNet's training pairs, encoded once (16,384 contexts take 0.3 GB)."""
    latents, contexts, masks = [], [], []
    for offset in range(0, config.pool_size, 256):
        count = min(256, config.pool_size - offset)
        images, captions, _ = dataset.batch(start + offset, count)
        x = images.float() / 127.5 - 1
        latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        contexts.append(text_encoder(tokens(captions), return_dict=False)[0])
        masks.append(F.max_pool2d(shape_mask(x).float(), LATENT_FACTOR) > 0)
    empty = text_encoder(tokens([""]), return_dict=False)[0]
    return UNetPool(torch.cat(latents), torch.cat(contexts), torch.cat(masks), empty)


def unet_loss_weights(noise_schedule: DDPMScheduler, t: torch.Tensor,
                      shape_masks: torch.Tensor) -> torch.Tensor:
    """[B,1,16,16]: min-SNR-γ weighting over timesteps (Hang et al. 2023: the high-SNR steps
    stop dominating the gradient) times 1 + UNET_SHAPE_WEIGHT on the shapes' latent cells."""
    alpha_bar = noise_schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    per_step = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return per_step.view(-1, 1, 1, 1) * (1 + UNET_SHAPE_WEIGHT * shape_masks.float())


def train_unet(config: PretrainConfig, clock: Clock, tokens: PromptTokenizer,
               text_encoder: CLIPTextModel, vae: AutoencoderKL, dataset: ShapesDataset,
               check: Callable[[UNet2DConditionModel], dict] | None = None,
               ) -> tuple[UNet2DConditionModel, dict]:
    """The UNet after ``config.unet_steps`` steps on the encoded pool (frozen), and the stage's
    statistics; ``check(unet)`` every ``config.eval_every`` steps records progress."""
    started = time.monotonic()
    pool = encode_pool(config, tokens, text_encoder, vae, dataset, start=2 * 10**8)
    encode_seconds = round(time.monotonic() - started, 1)
    torch.manual_seed(config.seed + 2)
    unet = UNet2DConditionModel(**unet_config(config.unet_width))
    noise_schedule = DDPMScheduler.from_config(sd15_scheduler().config)
    optimizer, lr = adamw(unet, config.lr, config.unet_steps)
    generator = torch.Generator().manual_seed(config.seed + 2)

    def step(_: int) -> float:
        pick = torch.randint(0, len(pool.latents), (config.batch_size,), generator=generator)
        dropped = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        context = torch.where(dropped[:, None, None], pool.empty_context, pool.contexts[pick])
        clean = pool.latents[pick]
        # offset noise: a per-channel constant in the noise, or the model never learns to move
        # the image's mean (the background), which SD's schedule leaks through even at t = 999
        noise = torch.randn(clean.shape, generator=generator) + config.offset_noise * torch.randn(
            (config.batch_size, clean.shape[1], 1, 1), generator=generator)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.batch_size,),
                          generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, t)
        error = unet(noisy, t, encoder_hidden_states=context).sample - noise
        weights = unet_loss_weights(noise_schedule, t, pool.shape_masks[pick])
        loss = (weights * error**2).mean()
        return descend(loss, optimizer, lr)

    def progress(_: int) -> dict:
        unet.eval()
        result = check(unet) if check is not None else {}
        unet.train()
        return result

    stats = run_stage("unet", config.unet_steps, clock, step, config.eval_every,
                      progress if check is not None else None)
    return unet.eval().requires_grad_(False), {**stats, "encode_seconds": encode_seconds}
