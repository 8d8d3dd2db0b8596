"""A differentiable DDIM chain with classifier-free guidance and truncated backpropagation.

Symbols follow the paper: the chain runs T DDIM steps from noise x_T; which steps carry gradient
to the text embedding is the gradient estimator's draw (``Truncation``): the last K steps (the
paper), a window of steps, one late step predicting x̂0 (ReFL), DRaFT-LV's re-noised last step,
or DRTune's sparse steps with a stop-gradient on the UNet's input.
"""

from __future__ import annotations

import logging
import math
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
    """How one batch's gradient flows through the T-step chain (one gradient estimator's draw).

    ``grad_steps``: the steps (0-based, ascending) whose guided UNet call carries gradient into
    the context (and a trained UNet); the chain runs to step ``last`` and returns x_0 there, or
    x̂0 predicted at ``last`` with ``x0_at_last``. Steps before the first gradient step run under
    no_grad. ``detach_unet_input`` (DRTune): every UNet call sees sg(x_t), so gradient reaches
    earlier steps only along DDIM's linear path x_t → x_{t−1}, and steps between the gradient
    steps run their UNet under no_grad while the latents keep their graph. ``renoise`` (DRaFT-LV):
    n more gradient calls after the chain, each on sg(x_0) re-noised to the last timestep.
    """

    grad_steps: tuple[int, ...]  # steps whose UNet call carries gradient, ascending
    last: int  # the chain's last step (T − 1: the whole chain)
    x0_at_last: bool = False  # return x̂0 predicted at ``last`` instead of x_{t−1}
    detach_unet_input: bool = False  # DRTune: ε_θ(sg(x_t), t, c)
    renoise: int = 0  # DRaFT-LV: n re-noisings of sg(x_0), one gradient call each

    @property
    def grad_from(self) -> int:
        """The first step with gradient (the steps before it need no graph at all)."""
        return self.grad_steps[0]

    def carries_grad(self, step: int) -> bool:
        return step in self.grad_steps

    def grad_calls(self) -> int:
        """Guided UNet calls that carry gradient: the chain's plus DRaFT-LV's re-noisings."""
        return len(self.grad_steps) + self.renoise

    def unet_calls(self) -> int:
        """Guided UNet calls in the forward pass (each on the CFG-doubled batch)."""
        return self.last + 1 + self.renoise

    @classmethod
    def last_k(cls, num_steps: int, k: int) -> Truncation:
        """The paper's truncation: the last K of T steps carry gradient."""
        return cls(tuple(range(num_steps - k, num_steps)), num_steps - 1)


def drtune_steps(num_steps: int, k: int, offset: int, stop: int) -> tuple[int, ...]:
    """DRTune's K sparse training steps: offset + j·⌊T/K⌋ for j < K (offset < ⌊T/K⌋), those
    before the stop step, and the stop step itself (its x̂0 prediction carries gradient)."""
    interval = num_steps // k
    sparse = (offset + j * interval for j in range(k))
    return tuple(sorted({i for i in sparse if i < stop} | {stop}))


def draw_truncation(config: SampleConfig, rng: random.Random) -> Truncation:
    """The truncation of one batch under ``sample.truncation`` (the estimator), drawn once per
    batch (never per step): last_k (the paper), random_k (DRaFT/AlignProp: K ∈ [k_min, k_max]),
    x0_shortcut (ReFL: one step predicting x̂0), window (steps first..last), draft_lv (DRaFT-LV:
    K = 1 plus n re-noisings), drtune (DRTune: K sparse steps with a random offset, a random
    early stop)."""
    t, mode = config.num_steps, config.truncation
    if mode == "last_k":
        return Truncation.last_k(t, config.k)
    if mode == "window":
        last = config.window_last_step()
        return Truncation(tuple(range(config.window_first, last + 1)), last,
                          x0_at_last=last < t - 1)
    if mode == "draft_lv":
        return Truncation((t - 1,), t - 1, renoise=config.draft_lv_renoise)
    if mode == "drtune":
        # stop among the last ⌈ratio·T⌉ steps (ratio 0: the whole chain)
        stop = t - 1 - rng.randint(0, max(math.ceil(config.drtune_stop_ratio * t) - 1, 0))
        offset = rng.randint(0, t // config.drtune_k - 1)
        return Truncation(drtune_steps(t, config.drtune_k, offset, stop), stop,
                          x0_at_last=True, detach_unet_input=True)
    k = rng.randint(config.k_min, config.k_max)
    if mode == "x0_shortcut":
        return Truncation((t - k,), t - k, x0_at_last=True)
    return Truncation.last_k(t, k)


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
    """Run the DDIM chain from x_T; returns x_0 latents (or x̂0 predicted at the truncation's
    last step with ``x0_at_last``).

    ``start``/``stop``: run only steps start ≤ i < stop (default all T): ``latents`` is then
    the chain's state before step ``start`` and the result its state before step ``stop`` —
    one chain run in pieces gives the same latents as run whole (``noise`` continues its
    streams).

    With ``eta`` > 0 each step adds fresh noise, drawn from ``noise`` (the samples' own
    generators, which drew x_T); ValueError without it.

    Steps ``i < switch_at`` are conditioned on ``early_context``, the rest on ``late_context``.
    With ``truncation=None`` nothing carries gradient. Otherwise (``Truncation``) steps before
    its first gradient step run under no_grad, its gradient steps' UNet calls carry gradient
    into ``late_context`` (and a trained UNet), and the chain ends at its last step.
    ``scheduler.timesteps`` must already be set to T steps.
    """
    if eta > 0 and noise is None:
        raise ValueError("denoise with eta > 0 needs the samples' SampleNoise for DDIM's noise")
    t_count = len(scheduler.timesteps)
    grad_from = t_count if truncation is None else truncation.grad_from
    last = t_count - 1 if truncation is None else truncation.last
    stop = min(t_count if stop is None else stop, last + 1)
    for i, t in enumerate(scheduler.timesteps):
        if not start <= i < stop:
            continue
        context = early_context if i < switch_at else late_context
        if i < grad_from:  # before the first gradient step: no graph at all
            with torch.no_grad():
                eps = guided_noise(unet, latents, t, context, guidance_scale)
                latents = ddim_step(scheduler, eps, t, latents, eta, noise).prev_sample
            continue
        # DRTune: ε_θ(sg(x_t)); x_t keeps its graph only through the step's linear path
        unet_input = latents.detach() if truncation.detach_unet_input else latents
        if not truncation.carries_grad(i):
            with torch.no_grad():
                eps = guided_noise(unet, unet_input, t, context, guidance_scale)
        elif checkpointing:
            eps = _checkpointed_noise(unet, unet_input, t, context, guidance_scale)
        else:
            eps = guided_noise(unet, unet_input, t, context, guidance_scale)
        out = ddim_step(scheduler, eps, t, latents, eta, noise)
        if i == last and truncation.x0_at_last:
            return out.pred_original_sample
        latents = out.prev_sample
    return latents


def ddim_step(scheduler: DDIMScheduler, eps: torch.Tensor, t: torch.Tensor,
              latents: torch.Tensor, eta: float, noise: SampleNoise | None):
    """One DDIM step x_t → x_{t−1} (diffusers' ``DDIMScheduler.step``), its fresh noise at
    ``eta`` > 0 the next draw of each sample's own stream."""
    fresh = noise.draw(latents.shape[1:]).to(latents.dtype) if eta > 0 else None
    return scheduler.step(eps, t, latents, eta=eta, variance_noise=fresh)


def renoised_last_steps(
    unet: UNet2DConditionModel, scheduler: DDIMScheduler, x0: torch.Tensor,
    context: torch.Tensor, guidance_scale: float, n: int, noise: SampleNoise, eta: float = 0.0,
    checkpointing: bool = True,
) -> torch.Tensor:
    """DRaFT-LV (Clark et al., ICLR 2024, Alg. 1): n times, the final sample sg(x_0) [B, C, h, w]
    re-noised to the last timestep t_1, x_1 = √ᾱ_1·sg(x_0) + √(1−ᾱ_1)·ε with ε the next draw of
    each sample's stream, then one guided DDIM step with gradient. Returns the n new samples
    [n·B, C, h, w] (re-noising j of every sample, then j + 1, ...): n UNet calls with gradient,
    one per re-noising."""
    t = scheduler.timesteps[-1]
    base = x0.detach()
    samples = []
    for _ in range(n):
        noisy = scheduler.add_noise(base, noise.draw(base.shape[1:]).to(base.dtype), t[None])
        if checkpointing:
            eps = _checkpointed_noise(unet, noisy, t, context, guidance_scale)
        else:
            eps = guided_noise(unet, noisy, t, context, guidance_scale)
        samples.append(ddim_step(scheduler, eps, t, noisy, eta, noise).prev_sample)
    return torch.cat(samples)


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
