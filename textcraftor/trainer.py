"""One TextCraftor run: sample → reward → backward → step, with evaluation and checkpoints.

Knows nothing of Ray or MLflow: progress goes to ``metrics.jsonl`` in the run folder and to a
callback the caller passes in (the study plugs Ray Train and MLflow in there).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from textcraftor.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from textcraftor.config import RunConfig
from textcraftor.configio import to_dict
from textcraftor.eval_images import EvalImages
from textcraftor.evaluation import EvalResult, Evaluator
from textcraftor.events import TrainCallback, TrainEvent
from textcraftor.limits import check_model_limits
from textcraftor.models import Pipeline, load_pipeline
from textcraftor.objective import Objective, build_objective, build_rewards, check_reward_sources
from textcraftor.pairs import SHAPES_PAIRS, load_pairs
from textcraftor.policy_gradient import PolicyGradient
from textcraftor.prompts import PromptSampler, run_prompts, split_prompts
from textcraftor.replicas import Replicas, from_first_rank
from textcraftor.run_folder import RunFolder
from textcraftor.sampler import (
    PromptTokenizer,
    SampleNoise,
    decode,
    denoise,
    draw_truncation,
    guidance_context,
    guided_noise,
    latent_shape,
    noise_seeds,
    renoised_last_steps,
)
from textcraftor.trainable import (
    adapter_folders,
    apply_update,
    autocast,
    autocast_dtype,
    build_optimizer,
    load_trained_weights,
    set_vae_checkpointing,
    trained_weights,
)

log = logging.getLogger(__name__)


class TextCraftor:
    """Pipeline, objective, prompts and optimizer of one run; ``fit()`` trains it."""

    def __init__(
        self,
        config: RunConfig,
        callback: TrainCallback | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        pipeline: Pipeline | None = None,
        objective: Objective | None = None,
        show_progress: bool = True,
    ):
        self.config = config
        self.callback = callback
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.run_dir = Path(config.output_dir)
        self.folder = RunFolder(self.run_dir, rank)
        self.show_progress = show_progress and rank == 0
        self.step = 0
        self.unet_passes = 0.0  # UNet passes of every step so far (train.unet_pass_budget)
        self.stop_requested = False  # set by request_stop: end after this step's checkpoint
        self._last_checkpoint: Path | None = None
        m, d = config.model, config.data
        self.autocast = autocast_dtype(m.mixed_precision, self.device)
        # Everything cheap and checkable first: a bad prompt file fails before models load.
        self.split = split_prompts(run_prompts(d, m.source), heldout_count=d.heldout_count,
                                   seed=config.held_out_split_seed())
        self.prompt_sampler = PromptSampler(self.split.train, config.train.batch_size,
                                            config.train.seed, rank, world_size)
        self.pairs = None  # direct fine-tuning's image–caption pairs
        if config.sample.truncation == "direct":
            self.pairs = load_pairs(d.pairs or SHAPES_PAIRS, config.sample.resolution,
                                    config.train.seed)
        check_model_limits(config, pipeline)  # what the scheduler/VAE refuse, from configs
        if objective is None:
            check_reward_sources(config.reward)
        if m.text_encoder_from:  # its checkpoint holds an encoder or a usable LoRA
            from textcraftor.generate import check_text_encoder_source

            check_text_encoder_source(m.text_encoder_from, "model.text_encoder_from")
        self.pipeline = (pipeline or load_pipeline(m.source, m.cache_dir, m.revision,
                                                   self.device)).to(self.device)
        if m.text_encoder_from:  # a tuned encoder to start from (checked against the tower)
            from textcraftor.generate import transfer_text_encoder

            transfer_text_encoder(self.pipeline, m.text_encoder_from, m.source,
                                  "model.text_encoder_from")
            self.pipeline.text_encoder.train()
        set_vae_checkpointing(self.pipeline.vae, config.sample.vae_checkpointing)
        self.objective = (objective or build_objective(config.reward, m.source, m.cache_dir,
                                                       self.device)).to(self.device)
        self.tokens = PromptTokenizer(self.pipeline.tokenizer, self.device)
        self.empty_ids = self.tokens([""])[0]
        self.pipeline.scheduler.set_timesteps(config.sample.num_steps, device=self.device)
        self.latent_shape = latent_shape(self.pipeline.vae, self.pipeline.unet,
                                         config.sample.resolution)
        self.optimizer, self.trainable = build_optimizer(self.pipeline, m, config.train)
        # every trained tensor identical on every rank: rank 0's start, averaged gradients
        self.replicas = Replicas(self.trainable, world_size)
        self.replicas.broadcast_from_first()
        # fp16 only: the scaler skips a step whose gradients overflow and lowers its scale
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.autocast is torch.float16)
        self.evaluator = Evaluator(config, self.objective, self.device, partial(
            build_rewards, config.reward, m.source, m.cache_dir, device=self.device))
        self.eval_images = EvalImages(config, self.pipeline, self.tokens, self.evaluator,
                                      self._autocast)
        self.last_eval: EvalResult | None = None  # the last evaluation (rank 0), at:
        self.last_eval_step = -1
        self.policy = None  # sample.truncation=policy_gradient: DDPO's rollouts and PPO loss
        if config.sample.truncation == "policy_gradient":
            self.policy = PolicyGradient(self.pipeline, self.objective, self.tokens,
                                         self.empty_ids, config.sample, config.policy,
                                         self.latent_shape, self.device, self._autocast)

    def _autocast(self):
        return autocast(self.device, self.autocast)

    # --- one optimizer step ----------------------------------------------------------------

    def forward_loss(self, prompts: Sequence[str], noise_seeds: Sequence[int], truncation):
        """Sample from x_T with gradient where the truncation (the estimator's draw) puts it,
        decode, score.

        Returns (loss, {reward: [B] scores}; [(n+1)·B] under DRaFT-LV, whose n re-noised
        samples are scored beside the chain's). Gradient reaches the trainable encoder's
        context (and a trained UNet) only through the truncation's gradient steps.
        """
        pipe, s = self.pipeline, self.config.sample
        ids = self.tokens(prompts)
        with self._autocast():
            late = guidance_context(pipe.text_encoder, ids, self.empty_ids, s.guidance_scale)
            if truncation.grad_from == 0:
                early = late
            elif s.no_grad_encoder == "original":
                with torch.no_grad():
                    early = guidance_context(pipe.original_text_encoder, ids, self.empty_ids,
                                             s.guidance_scale)
            else:
                early = late.detach()
            noise = SampleNoise(noise_seeds, self.device)
            latents = noise.draw(self.latent_shape)  # x_T
            x0 = denoise(pipe.unet, pipe.scheduler, latents, early, late, truncation.grad_from,
                         truncation, s.guidance_scale, s.eta, s.checkpointing, noise=noise)
            if truncation.renoise:  # DRaFT-LV: n more samples from sg(x_0), scored alike
                x0 = torch.cat([x0, renoised_last_steps(
                    pipe.unet, pipe.scheduler, x0, late, s.guidance_scale, truncation.renoise,
                    noise, s.eta, s.checkpointing)])
                prompts = list(prompts) * (truncation.renoise + 1)
            images = decode(pipe.vae, x0)
            return self.objective(images, prompts)

    def direct_loss(self, images: torch.Tensor, captions: Sequence[str],
                    noise_seeds: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Direct fine-tuning: each paired image [B,3,H,W] in [0,1] noised to its own t (drawn
        in [direct_t_min, direct_t_max] from its own seed, as its noise is), x̂0 predicted in one
        guided UNet call whose context comes from the trainable encoder, decoded and scored
        against the captions. Gradient reaches the encoder through that one call."""
        pipe, s = self.pipeline, self.config.sample
        ids = self.tokens(captions)
        draws = SampleNoise(noise_seeds, self.device)
        t = draws.integers(s.direct_t_min, s.direct_t_max)  # [B]
        with self._autocast():
            context = guidance_context(pipe.text_encoder, ids, self.empty_ids, s.guidance_scale)
            with torch.no_grad():
                clean = pipe.vae.encode(images.to(self.device) * 2 - 1).latent_dist.mean
                clean = clean * pipe.vae.config.scaling_factor
            noise = draws.draw(clean.shape[1:])
            noisy = pipe.scheduler.add_noise(clean, noise, t.to(self.device))  # x_t
            alpha_bar = pipe.scheduler.alphas_cumprod[t].to(self.device).view(-1, 1, 1, 1)
            eps = guided_noise(pipe.unet, noisy, t.to(self.device), context, s.guidance_scale)
            x0 = (noisy - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
            return self.objective(decode(pipe.vae, x0), captions)

    def train_step(self, step: int) -> dict[str, float]:
        """Gradient accumulation over micro-batches, clipping, one AdamW step; returns metrics."""
        t, s = self.config.train, self.config.sample
        if self.device.type == "cuda":  # the step's peak memory (_cost), either estimator
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.policy is not None:
            return self.policy_gradient_step(step)
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        ks, calls, grad_calls, passes = [], 0, 0, 0
        for micro in range(t.grad_accum):
            index = (step - 1) * t.grad_accum + micro
            # each sample's noise (x_T, DDIM's noise at eta > 0, direct mode's t and noise)
            # comes from its own seed, so it never depends on its batch-mates
            seeds = noise_seeds(t.seed, step, micro, self.rank, count=t.batch_size)
            if self.pairs is not None:
                ks.append(1)
                calls, grad_calls = calls + 1, grad_calls + 1
                passes += 2 * t.batch_size  # one call, its backward (no checkpointing)
                start = (index * self.world_size + self.rank) * t.batch_size
                images, captions = self.pairs.batch(start, t.batch_size)
                loss, scores = self.direct_loss(images, captions, seeds)
            else:
                # K is drawn once per micro-batch, the same on every rank
                truncation = draw_truncation(s, random.Random(f"k:{t.seed}:{step}:{micro}"))
                ks.append(len(truncation.grad_steps))
                calls += truncation.unet_calls()
                grad_calls += truncation.grad_calls()
                recompute = 1 if s.checkpointing else 0
                passes += t.batch_size * (truncation.unet_calls()
                                          + (1 + recompute) * truncation.grad_calls())
                prompts = [p.text for p in self.prompt_sampler.batch(index)]
                loss, scores = self.forward_loss(prompts, seeds, truncation)
            if step == t.inject_nan_at:
                loss = loss * float("nan")
            self.scaler.scale(loss / t.grad_accum).backward()
            for name, value in {"loss": loss, **scores}.items():
                sums[name] = sums.get(name, 0) + value.detach().float().mean() / t.grad_accum
        metrics = apply_update(step, sums, self.optimizer, self.scaler, self.replicas,
                               t.max_grad_norm, self._last_checkpoint)
        elapsed = time.perf_counter() - started
        images = t.batch_size * t.grad_accum * self.world_size
        metrics = {("train/" + k if k not in ("loss", "grad_norm") and "/" not in k else k): v
                   for k, v in metrics.items()}
        # the K this step drew (steps of the chain with gradient; random_k, x0_shortcut and
        # drtune draw it; mean over accumulated batches): a metric name no config path can
        # take, unlike the searched sample.k
        return {**metrics, "train/k_drawn": sum(ks) / len(ks),
                **self._cost(calls, grad_calls, passes), "step_s": elapsed,
                "images_per_s": images / elapsed}

    def _cost(self, calls: int, grad_calls: int, passes: int) -> dict[str, float]:
        """What one step cost this rank: guided UNet calls (each on a micro-batch, CFG-doubled;
        summed over accumulation), those with gradient, UNet passes (forward calls, backward
        passes and checkpoint recomputations, each counted once per latent it runs on: the unit
        of ``train.unet_pass_budget``), and on CUDA the step's peak memory."""
        self.unet_passes += passes
        cost = {"train/unet_calls": float(calls), "train/unet_grad_calls": float(grad_calls),
                "train/unet_passes": float(passes), "train/unet_passes_total": self.unet_passes}
        if self.device.type == "cuda":
            cost["train/peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
        return cost

    def policy_gradient_step(self, step: int) -> dict[str, float]:
        """sample.truncation=policy_gradient (``textcraftor.policy_gradient``): roll out every
        micro-batch with the current encoder, no gradient (each prompt policy.samples_per_prompt
        times, each image its own seed); normalise the rewards per prompt; then
        policy.ppo_epochs optimizer steps, each back-propagating the clipped surrogate at a
        random subset of the chain's steps of every micro-batch. Metrics are the last epoch's,
        with the rollouts' rewards."""
        t, p = self.config.train, self.config.policy
        started = time.perf_counter()
        rollouts = []
        calls = grad_calls = passes = 0
        for micro in range(t.grad_accum):
            index = (step - 1) * t.grad_accum + micro
            prompts = [q.text for q in self.prompt_sampler.batch(index)
                       for _ in range(p.samples_per_prompt)]
            seeds = noise_seeds(t.seed, step, micro, self.rank, count=len(prompts))
            rollouts.append(self.policy.rollout(prompts, seeds))
            calls += self.config.sample.num_steps  # the rollout's chain, no gradient
            passes += self.config.sample.num_steps * len(prompts)
        self.policy.normalise(rollouts)
        rewards = {name: torch.cat([r.scores[name] for r in rollouts]).mean()
                   for name in rollouts[0].scores}
        for epoch in range(p.ppo_epochs):
            sums: dict[str, torch.Tensor] = {}
            counts = []
            for micro, rollout in enumerate(rollouts):
                rng = random.Random(f"pg:{t.seed}:{step}:{micro}:{epoch}:{self.rank}")
                chosen = self.policy.steps(rollout, rng)
                counts.append(len(chosen))
                # each chosen step: one UNet call with gradient and its backward
                calls, grad_calls = calls + len(chosen), grad_calls + len(chosen)
                passes += 2 * len(chosen) * len(rollout.prompts)
                # c_θ once per micro-batch and epoch (the weights change only at the epoch's
                # update): each step's backward stops at a detached copy, whose summed gradient
                # then goes back through the encoder once
                context = self.policy.trained_context(rollout.ids)
                shared = context.detach().requires_grad_(context.requires_grad)
                for i in chosen:  # one backward per step: one UNet call's activations at once
                    loss, stats = self.policy.step_loss(rollout, i, shared)
                    if step == t.inject_nan_at:
                        loss = loss * float("nan")
                    share = t.grad_accum * len(chosen)
                    self.scaler.scale(loss / share).backward()
                    for name, value in {"loss": loss, **stats}.items():
                        sums[name] = sums.get(name, 0) + value.detach().float() / share
                if shared.grad is not None:
                    context.backward(shared.grad)
            metrics = apply_update(step, {**sums, **rewards}, self.optimizer, self.scaler,
                                   self.replicas, t.max_grad_norm, self._last_checkpoint)
        elapsed = time.perf_counter() - started
        metrics = {("train/" + k if k not in ("loss", "grad_norm") and "/" not in k else k): v
                   for k, v in metrics.items()}
        images = sum(len(r.prompts) for r in rollouts) * self.world_size
        # train/k_drawn: the chain steps trained per micro-batch (policy.timestep_fraction·T)
        return {**metrics, "train/k_drawn": sum(counts) / len(counts),
                **self._cost(calls, grad_calls, passes), "step_s": elapsed,
                "images_per_s": images / elapsed}

    # --- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, alpha: float = 1.0) -> EvalResult:
        """Held-out prompts × evaluation seeds: each reward, the quality scores, diversity and
        KID/FID against the reference set. ``alpha`` < 1 evaluates the interpolated encoder."""
        heldout, seeds = self.split.heldout, self.config.data.eval_seeds
        prompts = [p.text for p in heldout]
        was_training = self.pipeline.text_encoder.training
        self.pipeline.text_encoder.eval()
        images, scores = self.eval_images.images(prompts, seeds, alpha)
        untuned = self.step == 0 and self._last_checkpoint is None
        reference = self.eval_images.reference(images, alpha, untuned, prompts)
        self.pipeline.text_encoder.train(was_training)
        return self.evaluator(images, scores, prompts, seeds, [p.category for p in heldout],
                              reference)

    # --- checkpoints -----------------------------------------------------------------------

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        m, t = self.config.model, self.config.train
        weights = trained_weights(self.pipeline, m)
        path = save_checkpoint(self.run_dir, self.step, weights, self.optimizer,
                               extra={"source": m.source, "unet_passes": self.unet_passes},
                               keep=t.keep_checkpoints,
                               files=self.folder.evaluation_files(self.step),
                               folders=adapter_folders(self.pipeline, m))
        self._last_checkpoint = path
        return path

    def restore(self, path: str | Path) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG and the step count."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        load_trained_weights(self.pipeline, checkpoint.weights)
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.rng is not None:
            restore_rng(checkpoint.rng)
        self.step = checkpoint.step
        self.unet_passes = float(checkpoint.extra.get("unet_passes", 0.0))
        self._last_checkpoint = Path(path)
        log.info("resumed from %s at step %d", path, self.step)

    def fit(self) -> dict[str, float]:
        """Train to ``train.steps`` (or until ``train.unet_pass_budget`` is spent); returns the
        final metrics (last step + last evaluation)."""
        t = self.config.train
        self.folder.prepare(to_dict(self.config), self.step if self._last_checkpoint else -1)
        log.info("run %s: %d prompts train / %d held-out, world %d, device %s", self.run_dir,
                 len(self.split.train), len(self.split.heldout), self.world_size, self.device)
        last: dict[str, float] = {}
        if self.step == 0 and t.eval_at_start:
            last.update(self._evaluate_and_report(baseline=True))
        progress = tqdm(total=t.steps, initial=self.step, disable=not self.show_progress,
                        desc="textcraftor", dynamic_ncols=True)
        while not self.finished():
            metrics = self.train_step(self.step + 1)
            self.step += 1
            last.update(metrics)
            self.folder.write_metrics("step", self.step, metrics)
            self._emit(TrainEvent("step", self.step, metrics))
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4g}", k=metrics["train/k_drawn"])
            done = self.step == t.steps or self.budget_spent()
            if done or (t.eval_every and self.step % t.eval_every == 0):
                last.update(self._evaluate_and_report())
            if done or self.step % t.save_every == 0 or self.stop_requested:
                self.replicas.check_identical()  # never checkpoint replicas that drifted apart
                path = self.save()
                self._emit(TrainEvent("checkpoint", self.step, last, str(path) if path else None))
            if self.stop_requested or done:  # early stopping at this evaluation, or the budget
                break
        progress.close()
        self._emit(TrainEvent("end", self.step, last))
        return last

    def budget_spent(self) -> bool:
        """Whether train.unet_pass_budget is set and this run's UNet passes have reached it."""
        budget = self.config.train.unet_pass_budget
        return bool(budget) and self.unet_passes >= budget

    def finished(self) -> bool:
        """Training is complete: train.steps reached, or the UNet-pass budget spent."""
        return self.step >= self.config.train.steps or self.budget_spent()

    def request_stop(self) -> None:
        """End ``fit`` after this step's evaluation and checkpoint, as a finished run (an "end"
        event follows); every rank asks at the same step (e.g. from its callback)."""
        self.stop_requested = True

    def _evaluate_and_report(self, baseline: bool = False) -> dict[str, float]:
        result = self.evaluate() if self.rank == 0 else None
        metrics = from_first_rank(result.metrics if result else None) or {}
        if result is not None:
            self.last_eval, self.last_eval_step = result, self.step
            self.folder.write_evaluation(result, self.step, self.config.train.sample_grid)
            self.folder.write_metrics("eval", self.step, metrics)
        if baseline:
            metrics = {**metrics, **{k.replace("eval/", "baseline/"): v
                                     for k, v in metrics.items()}}
        self._emit(TrainEvent("eval", self.step, metrics))
        return metrics

    def _emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)
