"""A differentiable DDIM chain with classifier-free guidance and truncated backpropagation.

Symbols follow the paper: the chain runs T DDIM steps from noise x_T; only the last K steps
(or, for ``x0_shortcut``, one late step predicting x̂0) carry gradient to the text embedding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextModel, CLIPTokenizer

from textcraftor.config import SampleConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Truncation:
    """Which of the T steps carry gradient: steps ``grad_from .. T-1`` (K = T − grad_from)."""

    grad_from: int  # index of the first step with gradient
    stop_at_x0: bool = False  # x0_shortcut: return x̂0 predicted at step grad_from (one grad step)

    def grad_steps(self, num_steps: int) -> int:
        return 1 if self.stop_at_x0 else num_steps - self.grad_from


def draw_truncation(config: SampleConfig, rng: random.Random) -> Truncation:
    """The truncation of one batch: fixed K, or K drawn once per batch (never per step)."""
    t = config.num_steps
    if config.truncation == "last_k":
        return Truncation(t - config.k)
    k = rng.randint(config.k_min, config.k_max)
    return Truncation(t - k, stop_at_x0=config.truncation == "x0_shortcut")


class PromptTokenizer:
    """Token ids for prompts, cached per prompt; prompts over the limit are truncated, with one
    warning."""

    def __init__(self, tokenizer: CLIPTokenizer, device: torch.device | str = "cpu"):
        self.tokenizer = tokenizer
        self.max_length = tokenizer.model_max_length
        self.device = device
        self._cache: dict[str, torch.Tensor] = {}
        self._warned = False

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, max_length] int64 on ``device``."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            # verbose=False: transformers would add its own "indexing errors" warning here
            full = self.tokenizer(list(missing), truncation=False, verbose=False).input_ids
            too_long = [p for p, ids in zip(missing, full) if len(ids) > self.max_length]
            if too_long and not self._warned:
                log.warning("%d prompt(s) exceed %d tokens and are truncated, e.g. %r",
                            len(too_long), self.max_length, too_long[0][:80])
                self._warned = True
            ids = self.tokenizer(list(missing), padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._cache.update(zip(missing, ids))
        return torch.stack([self._cache[p] for p in prompts])


def guidance_context(
    text_encoder: CLIPTextModel, prompt_ids: torch.Tensor, empty_ids: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Encoder hidden states for one guided UNet call: [2B, L, d] = [uncond; cond], or [B, L, d]
    without guidance. One encoder call covers the prompts and the empty prompt."""
    if guidance_scale <= 1.0:
        return text_encoder(prompt_ids, return_dict=False)[0]
    hidden = text_encoder(torch.cat([empty_ids[None], prompt_ids]), return_dict=False)[0]
    uncond, cond = hidden[:1], hidden[1:]
    return torch.cat([uncond.expand_as(cond), cond])


def interpolate_context(original: torch.Tensor, finetuned: torch.Tensor, alpha: float):
    """a·E_ft + (1−a)·E_orig; exactly E_orig at a=0 and exactly E_ft at a=1 (torch.lerp)."""
    return torch.lerp(original, finetuned, alpha)


def guided_noise(
    unet: UNet2DConditionModel, latents: torch.Tensor, timestep: torch.Tensor,
    context: torch.Tensor, guidance_scale: float,
) -> torch.Tensor:
    """ε̂ = ε_u + w(ε_c − ε_u) from one UNet call on the doubled batch. ``timestep``: a scalar
    tensor, or [B] (one t per sample, direct fine-tuning)."""
    if context.shape[0] == latents.shape[0]:
        return unet(latents, timestep, encoder_hidden_states=context, return_dict=False)[0]
    if timestep.ndim == 1:
        timestep = torch.cat([timestep, timestep])
    eps = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=context,
               return_dict=False)[0]
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def _checkpointed_noise(unet, latents, timestep, context, guidance_scale):
    # The reentrant form is much cheaper per call (no per-tensor Python hooks), but it only
    # back-propagates when an input requires grad; a trained UNet with a frozen encoder has none.
    reentrant = latents.requires_grad or context.requires_grad
    return checkpoint(guided_noise, unet, latents, timestep, context, guidance_scale,
                      use_reentrant=reentrant)


class SampleNoise:
    """Every random draw of a batch, each sample from its own CPU generator seeded by its noise
    seed: x_T first, then (eta > 0) DDIM's fresh noise at each step, or direct fine-tuning's t
    and noise. So a sample's image depends on its seed alone — never on its batch-mates, the
    batch size or the device — and the same seed gives the same draws at every alpha.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.device, self.dtype = device, dtype

    def draw(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal [B, *shape] on the device, the next draw of each sample's stream."""
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=self.dtype)
                            for g in self.generators]).to(self.device)

    def integers(self, low: int, high: int) -> torch.Tensor:
        """[B] int64 (CPU), uniform in [low, high] inclusive, one per sample's stream."""
        return torch.cat([torch.randint(low, high + 1, (1,), generator=g)
                          for g in self.generators])

    def fork(self) -> SampleNoise:
        """A copy whose streams continue from where these are now, independently: several
        continuations of one chain (``textcraftor.dials``) draw the same noise."""
        copy = SampleNoise([], self.device, self.dtype)
        for g in self.generators:
            forked = torch.Generator()
            forked.set_state(g.get_state())
            copy.generators.append(forked)
        return copy


def initial_noise(
    seeds: Sequence[int], shape: tuple[int, int, int], device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T [B, *shape]: each sample's first draw from its own seed (``SampleNoise``)."""
    return SampleNoise(seeds, device, dtype).draw(shape)


def denoise(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    early_context: torch.Tensor,
    late_context: torch.Tensor,
    switch_at: int,
    truncation: Truncation | None,
    guidance_scale: float,
    eta: float = 0.0,
    checkpointing: bool = True,
    noise: SampleNoise | None = None,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Run the DDIM chain from x_T; returns x_0 latents (or x̂0 for ``stop_at_x0``).

    ``start``/``stop``: run only steps start ≤ i < stop (default all T): ``latents`` is then
    the chain's state before step ``start`` and the result its state before step ``stop`` —
    one chain run in pieces gives the same latents as run whole (``noise`` continues its
    streams).

    With ``eta`` > 0 each step adds fresh noise, drawn from ``noise`` (the samples' own
    generators, which drew x_T); ValueError without it.

    Steps ``i < switch_at`` are conditioned on ``early_context``, the rest on ``late_context``.
    With ``truncation=None`` nothing carries gradient. Otherwise steps before ``grad_from`` run
    under no_grad and gradient flows into ``late_context`` (and a trained UNet) only through the
    last steps. ``scheduler.timesteps`` must already be set to T steps.
    """
    if eta > 0 and noise is None:
        raise ValueError("denoise with eta > 0 needs the samples' SampleNoise for DDIM's noise")

    def step(eps, t, latents):
        fresh = noise.draw(latents.shape[1:]).to(latents.dtype) if eta > 0 else None
        return scheduler.step(eps, t, latents, eta=eta, variance_noise=fresh)

    grad_from = len(scheduler.timesteps) if truncation is None else truncation.grad_from
    stop = len(scheduler.timesteps) if stop is None else stop
    for i, t in enumerate(scheduler.timesteps):
        if not start <= i < stop:
            continue
        context = early_context if i < switch_at else late_context
        if i < grad_from:
            with torch.no_grad():
                eps = guided_noise(unet, latents, t, context, guidance_scale)
                latents = step(eps, t, latents).prev_sample
            continue
        if checkpointing:
            eps = _checkpointed_noise(unet, latents, t, context, guidance_scale)
        else:
            eps = guided_noise(unet, latents, t, context, guidance_scale)
        out = step(eps, t, latents)
        if truncation.stop_at_x0:
            return out.pred_original_sample
        latents = out.prev_sample
    return latents


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents → images, float NCHW in [0, 1] (differentiable; clamped like the reference)."""
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (images * 0.5 + 0.5).clamp(0, 1)


def noise_seeds(*key: object, count: int) -> list[int]:
    """``count`` consecutive noise seeds derived from ``key`` (e.g. seed, step, micro-batch,
    rank): each sample of a training batch gets its own."""
    base = random.Random(":".join(map(str, key))).getrandbits(62)
    return [base + i for i in range(count)]


def latent_shape(vae: AutoencoderKL, unet: UNet2DConditionModel, resolution: int):
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (unet.config.in_channels, resolution // factor, resolution // factor)
