"""Policy gradient on the text encoder: DDPO's PPO update (Black et al. 2023, "Training
Diffusion Models with Reinforcement Learning", DDPO_IS with clipping), applied to the encoder as
TexForce does. Needs no reward gradient, so any reward trains — the ShapesWorld oracle's 0/1
accuracy included.

The DDIM chain with η > 0 is a policy: each step draws x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), with μ_θ
the DDIM mean (the guided ε̂ from the encoder's context c_θ) and σ_t = η·σ_DDPM(t). One training
step: roll the chain out without gradient, recording x_t, the noise and log p_θ(x_{t−1} | x_t);
score the final images; normalise the rewards per prompt into advantages A; then, at a subset
of the T steps, recompute log p_θ with gradient through c_θ and minimise PPO's clipped
surrogate  mean(max(−A·r, −A·clip(r, 1−ε, 1+ε))),  r = p_θ / p_θ_old.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from textcraftor.config import PolicyGradientConfig, SampleConfig
from textcraftor.sampler import SampleNoise, decode, guidance_context, guided_noise

MIN_PROMPT_COUNT = 2  # fewer samples of a prompt in a step: its advantages use the batch's stats
STD_EPS = 1e-6  # DDPO's stat tracker: A = (r − mean) / (std + 1e-6)


def ddim_sigma(scheduler: DDIMScheduler, t: torch.Tensor | int, eta: float) -> float:
    """σ_t = η·sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)) (DDIM eq. 16), ᾱ_prev the
    cumulative alpha of the step's target (``final_alpha_cumprod`` past the chain's end), as
    diffusers' ``DDIMScheduler.step`` computes it."""
    t = int(t)
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar = float(scheduler.alphas_cumprod[t])
    alpha_bar_prev = (float(scheduler.alphas_cumprod[prev]) if prev >= 0
                      else float(scheduler.final_alpha_cumprod))
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    return eta * math.sqrt(max(variance, 0.0))


def ddim_step_mean(scheduler: DDIMScheduler, eps: torch.Tensor, t: torch.Tensor,
                   latents: torch.Tensor, eta: float) -> torch.Tensor:
    """μ_θ(x_t, t): diffusers' own DDIM step with zero variance noise (so exactly its mean at
    this η: the direction term sqrt(1 − ᾱ_prev − σ_t²)·ε̂ depends on η). Differentiable in
    ``eps``."""
    zero = torch.zeros_like(latents)
    return scheduler.step(eps, t, latents, eta=eta, variance_noise=zero).prev_sample


def ddim_step_log_prob(scheduler: DDIMScheduler, eps: torch.Tensor, t: torch.Tensor,
                       latents: torch.Tensor, prev_latents: torch.Tensor,
                       eta: float) -> torch.Tensor:
    """log N(x_{t−1}; μ_θ(x_t, t), σ_t² I), summed over the latent dimensions: [B], float32.

    eps: ε̂ [B,C,h,w] at x_t = ``latents`` and timestep ``t``; prev_latents: x_{t−1}. Gradient
    flows through ``eps`` (the context that produced it). ValueError where σ_t = 0 (η = 0, or a
    last step to ᾱ = 1): the step is deterministic and has no density."""
    sigma = ddim_sigma(scheduler, t, eta)
    if sigma <= 0:
        raise ValueError(f"DDIM step at t={int(t)} with eta={eta} is deterministic (sigma_t = "
                         f"0): its log-probability is undefined")
    mean = ddim_step_mean(scheduler, eps.float(), t, latents.float(), eta)
    z = (prev_latents.float() - mean) / sigma
    per_dim = -0.5 * z ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return per_dim.flatten(1).sum(dim=1)


@dataclass
class Trajectory:
    """One rollout of the chain, B samples, T steps (step i goes from latents[i] to
    latents[i+1]; latents[0] = x_T, latents[T] = x_0)."""

    latents: torch.Tensor  # [T+1, B, C, h, w] float32
    timesteps: torch.Tensor  # [T] the scheduler's timesteps
    log_probs: torch.Tensor  # [T, B] log p(x_{t−1} | x_t), summed over dims (NaN where σ_t = 0)
    noises: torch.Tensor  # [T, B, C, h, w] z of x_{t−1} = μ + σ_t·z, from each sample's seed


@torch.no_grad()
def sample_trajectory(unet: UNet2DConditionModel, scheduler: DDIMScheduler,
                      context: torch.Tensor, noise: SampleNoise, latent_shape: Sequence[int],
                      guidance_scale: float, eta: float) -> Trajectory:
    """The DDIM chain from x_T with η > 0, no gradient, recording every step.

    x_T and each step's fresh noise are the next draws of each sample's own stream (``noise``,
    in the order ``sampler.denoise`` draws them), so a sample's trajectory depends on its seed
    alone. context: ``guidance_context`` of the policy's encoder. ``scheduler.timesteps`` must
    be set to T steps."""
    latents = noise.draw(latent_shape).float()  # x_T
    path, log_probs, noises = [latents], [], []
    for t in scheduler.timesteps:
        eps = guided_noise(unet, latents, t, context, guidance_scale).float()
        z = noise.draw(latents.shape[1:]).float()
        prev = scheduler.step(eps, t, latents, eta=eta, variance_noise=z).prev_sample
        if ddim_sigma(scheduler, t, eta) > 0:
            log_probs.append(ddim_step_log_prob(scheduler, eps, t, latents, prev, eta))
        else:
            log_probs.append(torch.full(latents.shape[:1], math.nan, device=latents.device))
        path.append(prev)
        noises.append(z)
        latents = prev
    return Trajectory(torch.stack(path), scheduler.timesteps.clone(), torch.stack(log_probs),
                      torch.stack(noises))


def per_prompt_advantages(rewards: torch.Tensor, prompts: Sequence[str],
                          min_count: int = MIN_PROMPT_COUNT) -> torch.Tensor:
    """DDPO's per-prompt normalisation: A = (r − mean_p)/(std_p + 1e-6) over the samples of the
    same prompt p (population std); a prompt with fewer than ``min_count`` samples uses the
    whole batch's mean and std. rewards: [N], one per prompt in ``prompts``; returns [N]."""
    rewards = rewards.float()
    if len(prompts) != rewards.shape[0]:
        raise ValueError(f"one prompt per reward: {rewards.shape[0]} rewards, "
                         f"{len(prompts)} prompts")
    advantages = torch.empty_like(rewards)
    batch_mean, batch_std = rewards.mean(), rewards.std(unbiased=False)
    for prompt in dict.fromkeys(prompts):
        index = torch.tensor([i for i, p in enumerate(prompts) if p == prompt],
                             device=rewards.device)
        own = rewards[index]
        if len(index) >= min_count:
            mean, std = own.mean(), own.std(unbiased=False)
        else:
            mean, std = batch_mean, batch_std
        advantages[index] = (own - mean) / (std + STD_EPS)
    return advantages


def train_steps(num_steps: int, fraction: float, trainable: Sequence[bool],
                rng: random.Random) -> list[int]:
    """The chain steps (0-based, of T) one PPO pass trains: DDPO's timestep_fraction, a random
    subset of max(1, ⌊fraction·T⌋) steps among those with σ_t > 0 (``trainable``), sorted."""
    candidates = [i for i in range(num_steps) if trainable[i]]
    if not candidates:
        raise ValueError("no DDIM step has sigma_t > 0: nothing to train by policy gradient")
    count = min(len(candidates), max(1, int(num_steps * fraction)))
    return sorted(rng.sample(candidates, count))


def ppo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
             clip_range: float, dims: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, mean(max(−A·r, −A·clip(r, 1−ε, 1+ε))), r = exp(Δ/D).

    log_prob, old_log_prob: [B] summed over the D = ``dims`` latent dimensions; the ratio uses
    their per-dimension mean, as DDPO's ``ddim_step_with_logprob`` does (so ε = 1e-4 means what
    it means there). Returns (loss, {pg_clip_fraction, approx_kl}) — approx_kl is DDPO's
    ½·mean(Δ²), Δ per dimension; both detached."""
    delta = (log_prob - old_log_prob) / dims
    ratio = torch.exp(delta)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {"pg_clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean().detach(),
             "approx_kl": (0.5 * delta.detach() ** 2).mean()}
    return loss, stats


@dataclass
class Rollout:
    """One micro-batch's samples: prompts (each repeated samples_per_prompt times), their token
    ids, the trajectory, the raw rewards {name: [B]} and the per-image objective Σ wᵢ·sᵢ·Rᵢ."""

    prompts: list[str]
    ids: torch.Tensor
    trajectory: Trajectory
    scores: dict[str, torch.Tensor]
    rewards: torch.Tensor
    advantages: torch.Tensor | None = None


class PolicyGradient:
    """DDPO's rollouts and PPO losses for one run (the trainer owns the loop and the update).

    ``pipeline`` needs unet, vae, scheduler (timesteps set) and text_encoder (the policy: its
    parameters, or a LoRA on them, are what trains); ``objective`` scores images by name with
    no gradient needed; ``autocast`` is the trainer's mixed-precision context factory."""

    def __init__(self, pipeline, objective, tokens: Callable[[Sequence[str]], torch.Tensor],
                 empty_ids: torch.Tensor, sample: SampleConfig, policy: PolicyGradientConfig,
                 latent_shape: Sequence[int], device: torch.device,
                 autocast: Callable[[], AbstractContextManager]):
        self.pipeline, self.objective, self.tokens = pipeline, objective, tokens
        self.empty_ids, self.sample, self.policy = empty_ids, sample, policy
        self.latent_shape, self.device, self.autocast = tuple(latent_shape), device, autocast

    def context(self, ids: torch.Tensor) -> torch.Tensor:
        """c_θ: the policy encoder's guided context [2B, L, d] (with gradient if enabled)."""
        return guidance_context(self.pipeline.text_encoder, ids, self.empty_ids,
                                self.sample.guidance_scale)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], seeds: Sequence[int]) -> Rollout:
        """Sample one image per (prompt, seed) with the current encoder, no gradient; score."""
        pipe, s = self.pipeline, self.sample
        ids = self.tokens(prompts)
        with self.autocast():
            trajectory = sample_trajectory(pipe.unet, pipe.scheduler, self.context(ids),
                                           SampleNoise(seeds, self.device), self.latent_shape,
                                           s.guidance_scale, s.eta)
            images = decode(pipe.vae, trajectory.latents[-1])
            scores = self.objective.score(images.float(), list(prompts), self.objective.trained)
        scores = {k: v.detach().float() for k, v in scores.items()}
        rewards = self.objective.train_objective(scores)
        return Rollout(list(prompts), ids, trajectory, scores, rewards)

    def normalise(self, rollouts: Sequence[Rollout]) -> None:
        """Set each rollout's advantages: rewards normalised per prompt over all of this step's
        rollouts, then clipped to ±policy.adv_clip_max."""
        prompts = [p for r in rollouts for p in r.prompts]
        advantages = per_prompt_advantages(torch.cat([r.rewards for r in rollouts]), prompts)
        advantages = advantages.clamp(-self.policy.adv_clip_max, self.policy.adv_clip_max)
        for r, a in zip(rollouts, advantages.split([len(r.prompts) for r in rollouts])):
            r.advantages = a

    def trained_context(self, ids: torch.Tensor) -> torch.Tensor:
        """c_θ under the trainer's autocast, with gradient: [2B, L, d]."""
        with self.autocast():
            return self.context(ids)

    def step_loss(self, rollout: Rollout, i: int, context: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped surrogate at chain step ``i``: log p_θ(x_{t−1} | x_t) recomputed with
        gradient through c_θ (and the UNet if it trains), against the rollout's own.
        ``context``: c_θ of ``rollout.ids`` computed once for several steps (the trainer's
        loop; ``trained_context``), else computed here."""
        pipe, s, traj = self.pipeline, self.sample, rollout.trajectory
        t, latents = traj.timesteps[i], traj.latents[i]
        with self.autocast():
            if context is None:
                context = self.context(rollout.ids)
            eps = guided_noise(pipe.unet, latents, t, context, s.guidance_scale)
        log_prob = ddim_step_log_prob(pipe.scheduler, eps, t, latents, traj.latents[i + 1], s.eta)
        return ppo_loss(log_prob, traj.log_probs[i], rollout.advantages, self.policy.clip_range,
                        latents[0].numel())

    def steps(self, rollout: Rollout, rng: random.Random) -> list[int]:
        """The steps one PPO pass trains on this rollout (policy.timestep_fraction)."""
        trainable = (~rollout.trajectory.log_probs.isnan().any(dim=1)).tolist()
        return train_steps(self.sample.num_steps, self.policy.timestep_fraction, trainable, rng)
