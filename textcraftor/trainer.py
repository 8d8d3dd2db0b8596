"""One TextCraftor run: sample → reward → backward → step, with evaluation and checkpoints.

Knows nothing of Ray or MLflow: progress goes to ``metrics.jsonl`` in the run folder and to a
callback the caller passes in (the study plugs Ray Train and MLflow in there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from textcraftor.atomic import write_json_atomic, write_text_atomic
from textcraftor.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from textcraftor.config import RunConfig
from textcraftor.configio import to_dict
from textcraftor.evaluation import EvalResult, Evaluator, load_reference_images
from textcraftor.generation import sample_images
from textcraftor.limits import check_model_limits
from textcraftor.models import Pipeline, load_pipeline
from textcraftor.objective import (
    Objective,
    build_objective,
    build_rewards,
    check_reward_sources,
)
from textcraftor.pairs import SHAPES_PAIRS, load_pairs
from textcraftor.prompts import (
    SHAPES_PROMPTS,
    PromptSampler,
    load_prompts,
    split_prompts,
    warn_unscorable,
)
from textcraftor.replicas import Replicas
from textcraftor.sampler import (
    PromptTokenizer,
    SampleNoise,
    decode,
    denoise,
    draw_truncation,
    guidance_context,
    guided_noise,
    latent_shape,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (or, without fp16 loss scaling, a gradient did); the run stopped
    before the optimizer step. Under fp16 an overflowing gradient is the loss scaler's to skip."""


@dataclass(frozen=True)
class TrainEvent:
    kind: str  # "step" | "eval" | "checkpoint" | "end"
    step: int  # optimizer steps done
    metrics: Mapping[str, float] = field(default_factory=dict)
    path: str | None = None  # checkpoint folder ("checkpoint", rank 0 only)


TrainCallback = Callable[[TrainEvent], None]


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def set_vae_checkpointing(vae: torch.nn.Module, enabled: bool) -> None:
    """Gradient checkpointing in the VAE decoder on or off (diffusers' own, on its mid and up
    blocks; it acts only while gradients are recorded). Set either way: a pipeline may be shared
    between runs with different settings."""
    if enabled:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()


def make_unet_trainable(pipeline: Pipeline, mode: str, lora_rank: int) -> list[torch.nn.Parameter]:
    """Unfreeze the UNet (``full``) or attach a peft LoRA to its attention (``lora``)."""
    unet = pipeline.unet
    if mode == "full":
        unet.requires_grad_(True)
    elif mode == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return [p for p in unet.parameters() if p.requires_grad]


def unet_weights(pipeline: Pipeline, mode: str) -> dict[str, dict[str, torch.Tensor]]:
    if mode == "full":
        return {"unet": pipeline.unet.state_dict()}
    if mode == "lora":
        from peft.utils import get_peft_model_state_dict

        return {"unet_lora": get_peft_model_state_dict(pipeline.unet)}
    return {}


def load_unet_weights(pipeline: Pipeline, weights: Mapping[str, Mapping[str, torch.Tensor]]):
    if "unet" in weights:
        pipeline.unet.load_state_dict(weights["unet"])
    if "unet_lora" in weights:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(pipeline.unet, weights["unet_lora"])


def _noise_seeds(*key: object, count: int) -> list[int]:
    base = random.Random(":".join(map(str, key))).getrandbits(62)
    return [base + i for i in range(count)]


def eval_noise_seed(seed: int, prompt: str) -> int:
    """Noise seed of one evaluation image: depends on the seed and the prompt text only."""
    return random.Random(f"eval:{seed}:{prompt}").getrandbits(62)


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
        self.show_progress = show_progress and rank == 0
        self.step = 0
        self._last_checkpoint: Path | None = None
        self._reference: torch.Tensor | None = None  # KID/FID reference images, on the CPU
        m, d = config.model, config.data
        self.autocast = autocast_dtype(m.mixed_precision, self.device)
        # Everything cheap and checkable first: a bad prompt file fails before models load.
        prompts = load_prompts(d.prompts or (SHAPES_PROMPTS if m.source == "shapes" else None),
                               column=d.column)
        if m.source == "shapes":
            warn_unscorable(prompts)
        self.split = split_prompts(prompts, heldout_count=d.heldout_count,
                                   seed=config.train.seed)
        self.prompt_sampler = PromptSampler(self.split.train, config.train.batch_size,
                                            config.train.seed, rank, world_size)
        self.pairs = None  # direct fine-tuning's image–caption pairs
        if config.sample.truncation == "direct":
            self.pairs = load_pairs(d.pairs or SHAPES_PAIRS, config.sample.resolution,
                                    config.train.seed)
        check_model_limits(config, pipeline)  # what the scheduler/VAE refuse, from configs
        if objective is None:
            check_reward_sources(config.reward)
        self.pipeline = (pipeline or load_pipeline(m.source, m.cache_dir, m.revision,
                                                   self.device)).to(self.device)
        set_vae_checkpointing(self.pipeline.vae, config.sample.vae_checkpointing)
        self.objective = (objective or build_objective(
            config.reward, m.source, m.cache_dir, self.device,
            scored=config.eval.quality_weights)).to(self.device)
        missing = [n for n in config.eval.quality_weights if n not in self.objective.rewards]
        if missing:
            raise ValueError(f"eval.quality_weights.{missing[0]}: the objective passed in has no "
                             f"{missing[0]} reward (it has {', '.join(self.objective.names)})")
        self.tokens = PromptTokenizer(self.pipeline.tokenizer, self.device)
        self.empty_ids = self.tokens([""])[0]
        self.pipeline.scheduler.set_timesteps(config.sample.num_steps, device=self.device)
        self.latent_shape = latent_shape(self.pipeline.vae, self.pipeline.unet,
                                         config.sample.resolution)
        self.optimizer, self.trainable = self._build_optimizer()
        # every trained tensor identical on every rank: rank 0's start, averaged gradients
        self.replicas = Replicas(self.trainable, world_size)
        self.replicas.broadcast_from_first()
        # fp16 only: the scaler skips a step whose gradients overflow and lowers its scale
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.autocast is torch.float16)
        self.evaluator = Evaluator(config, self.objective, self.device, self._load_clip)

    # --- set-up ----------------------------------------------------------------------------

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer,
                                        list[tuple[str, torch.nn.Parameter]]]:
        """AdamW over everything that trains; returns it with the (name, parameter) pairs, in
        the same order on every rank."""
        m, t = self.config.model, self.config.train
        encoder = self.pipeline.text_encoder
        encoder.requires_grad_(m.train_text_encoder)
        named: list[tuple[str, torch.nn.Parameter]] = []
        groups = []
        if m.train_text_encoder:
            named += [(f"text_encoder.{n}", p) for n, p in encoder.named_parameters()]
            groups.append({"params": [p for _, p in named], "lr": t.lr})
        if m.train_unet != "none":
            make_unet_trainable(self.pipeline, m.train_unet, m.lora_rank)
            unet = [(f"unet.{n}", p) for n, p in self.pipeline.unet.named_parameters()
                    if p.requires_grad]
            named += unet
            groups.append({"params": [p for _, p in unet], "lr": m.unet_lr})
        try:
            optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
        return optimizer, named

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    # --- one optimizer step ----------------------------------------------------------------

    def forward_loss(self, prompts: Sequence[str], noise_seeds: Sequence[int], truncation):
        """Sample from x_T with gradient through the last steps, decode, score.

        Returns (loss, {reward: [B] scores}). Gradient reaches the trainable encoder's context
        (and a trained UNet) only through the steps the truncation marks.
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
            alpha_bar = pipe.scheduler.alphas_cumprod[t].to(self.device).view(-1, 1, 1, 1)
            noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
            eps = guided_noise(pipe.unet, noisy, t.to(self.device), context, s.guidance_scale)
            x0 = (noisy - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
            return self.objective(decode(pipe.vae, x0), captions)

    def train_step(self, step: int) -> dict[str, float]:
        """Gradient accumulation over micro-batches, clipping, one AdamW step; returns metrics."""
        t, s = self.config.train, self.config.sample
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        ks = []
        for micro in range(t.grad_accum):
            index = (step - 1) * t.grad_accum + micro
            # each sample's noise (x_T, DDIM's noise at eta > 0, direct mode's t and noise)
            # comes from its own seed, so it never depends on its batch-mates
            seeds = _noise_seeds(t.seed, step, micro, self.rank, count=t.batch_size)
            if self.pairs is not None:
                ks.append(1)
                start = (index * self.world_size + self.rank) * t.batch_size
                images, captions = self.pairs.batch(start, t.batch_size)
                loss, scores = self.direct_loss(images, captions, seeds)
            else:
                # K is drawn once per micro-batch, the same on every rank
                truncation = draw_truncation(s, random.Random(f"k:{t.seed}:{step}:{micro}"))
                ks.append(truncation.grad_steps(s.num_steps))
                prompts = [p.text for p in self.prompt_sampler.batch(index)]
                loss, scores = self.forward_loss(prompts, seeds, truncation)
            if step == t.inject_nan_at:
                loss = loss * float("nan")
            self.scaler.scale(loss / t.grad_accum).backward()
            for name, value in {"loss": loss, **scores}.items():
                sums[name] = sums.get(name, 0) + value.detach().float().mean() / t.grad_accum
        # one all-reduce per optimizer step, before unscaling and clipping: the clip coefficient,
        # the non-finite check and the update are computed from the same numbers on every rank
        self.replicas.average_gradients()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.replicas.parameters,
                                                   t.max_grad_norm or float("inf"))
        values = self._all_reduce_mean(torch.stack([*sums.values(), grad_norm.float()]))
        metrics = dict(zip([*sums, "grad_norm"], values))
        # A non-finite loss (before scaling) is a divergence. A non-finite gradient is one too
        # without fp16 loss scaling; with it, it is an overflow the scaler skips (its inf check
        # ran in unscale_, on the averaged gradients, so every rank skips together).
        scaling = self.scaler.is_enabled()
        if not _finite(metrics["loss"]) or (not scaling and not _finite(metrics["grad_norm"])):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite loss ({metrics['loss']}) or grad norm ({metrics['grad_norm']}) at "
                f"step {step}; stopped before the update. Last good checkpoint: "
                f"{self._last_checkpoint or 'none'}"
            )
        scale = self.scaler.get_scale() if scaling else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scaling:  # the scale falls only after an overflow, and then the step was skipped
            metrics["amp/loss_scale"] = scale
            metrics["amp/skipped_step"] = float(self.scaler.get_scale() < scale)
        elapsed = time.perf_counter() - started
        images = t.batch_size * t.grad_accum * self.world_size
        metrics = {("train/" + k if k not in ("loss", "grad_norm") and "/" not in k else k): v
                   for k, v in metrics.items()}
        # the K this step drew (random_k / x0_shortcut draw it; mean over accumulated batches):
        # a metric name no config path can take, unlike the searched sample.k
        return {**metrics, "train/k_drawn": sum(ks) / len(ks), "step_s": elapsed,
                "images_per_s": images / elapsed}

    def _all_reduce_mean(self, values: torch.Tensor) -> list[float]:
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.world_size
        return values.tolist()

    # --- evaluation ------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], noise_seeds: Sequence[int],
                 alpha: float = 1.0) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] from the current encoder, or its interpolation with the
        original (``alpha``), with no gradient, over the full chain."""
        with self._autocast():
            return sample_images(self.pipeline, self.pipeline.text_encoder, self.tokens, prompts,
                                 noise_seeds, self.config.sample, alpha=alpha)

    @torch.no_grad()
    def evaluate(self, alpha: float = 1.0) -> EvalResult:
        """Held-out prompts × evaluation seeds: each reward, the weighted quality, diversity and
        KID/FID against the reference set. ``alpha`` < 1 evaluates the interpolated encoder."""
        heldout = self.split.heldout
        seeds = self.config.data.eval_seeds
        was_training = self.pipeline.text_encoder.training
        self.pipeline.text_encoder.eval()
        images, scores = self._eval_images([p.text for p in heldout], seeds, alpha)
        reference = self._reference_images(images, alpha)
        self.pipeline.text_encoder.train(was_training)
        return self.evaluator(images, scores, [p.text for p in heldout], seeds,
                              [p.category for p in heldout], reference)

    def _eval_images(self, prompts: Sequence[str], seeds: Sequence[int], alpha: float,
                     score: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[P·S,3,H,W] prompt-major, and {reward: [P·S]} (when ``score``), on the device: the
        metrics run there; only the result and the cached reference go to the CPU."""
        pairs = [(p, s) for p in prompts for s in seeds]
        batch = self.config.train.eval_batch_size
        images, scores = [], []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            chunk_prompts = [p for p, _ in chunk]
            x = self.generate(chunk_prompts, [eval_noise_seed(s, p) for p, s in chunk], alpha)
            if score:
                with self._autocast():
                    scores.append(self.evaluator.rewards(x, chunk_prompts))
            images.append(x)
        merged = {k: torch.cat([s[k] for s in scores]) for k in scores[0]} if scores else {}
        return torch.cat(images), merged

    def _reference_images(self, images: torch.Tensor, alpha: float) -> torch.Tensor | None:
        """The KID/FID reference: a folder, or the base model's images for the evaluation prompts
        and seeds — generated once (at step 0 they are the evaluation images themselves)."""
        e = self.config.eval
        if not e.distribution:
            return None
        if self._reference is None:
            if e.reference_dir:
                self._reference = load_reference_images(e.reference_dir,
                                                        self.config.sample.resolution)
            elif self.step == 0 and alpha == 1.0 and self._last_checkpoint is None:
                self._reference = images.cpu()  # held for the whole run: not on the GPU
            else:
                if self.config.model.train_unet != "none":
                    log.warning("KID/FID reference generated after step 0 with a fine-tuned UNet: "
                                "it is not the base model's images")
                prompts = [p.text for p in self.split.heldout]
                reference, _ = self._eval_images(prompts, self.config.data.eval_seeds,
                                                 alpha=0.0, score=False)
                self._reference = reference.cpu()
        return self._reference

    def _load_clip(self):
        """The CLIP-constraint model for evaluation when the objective does not hold one."""
        m = self.config.model
        return build_rewards(self.config.reward, m.source, m.cache_dir, names=["clip"],
                             device=self.device)["clip"]

    # --- checkpoints -----------------------------------------------------------------------

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        m, t = self.config.model, self.config.train
        weights = unet_weights(self.pipeline, m.train_unet)
        if m.train_text_encoder:
            weights["text_encoder"] = self.pipeline.text_encoder.state_dict()
        name = f"step_{self.step:07d}"
        shown = {"samples.png": self.run_dir / "samples" / f"{name}.png",
                 "eval.json": self.run_dir / "eval" / f"{name}.json"}
        path = save_checkpoint(self.run_dir, self.step, weights, self.optimizer,
                               extra={"source": m.source}, keep=t.keep_checkpoints,
                               files={k: f for k, f in shown.items() if f.is_file()} or None)
        self._last_checkpoint = path
        return path

    def restore(self, path: str | Path) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG and the step count."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        if "text_encoder" in checkpoint.weights:
            self.pipeline.text_encoder.load_state_dict(checkpoint.weights["text_encoder"])
        load_unet_weights(self.pipeline, checkpoint.weights)
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.rng is not None:
            restore_rng(checkpoint.rng)
        self.step = checkpoint.step
        self._last_checkpoint = Path(path)
        log.info("resumed from %s at step %d", path, self.step)

    # --- the run ---------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train to ``train.steps``; returns the final metrics (last step + last evaluation)."""
        t = self.config.train
        self._prepare_run_dir()
        last: dict[str, float] = {}
        if self.step == 0 and t.eval_at_start:
            last.update(self._evaluate_and_report(baseline=True))
        progress = tqdm(total=t.steps, initial=self.step, disable=not self.show_progress,
                        desc="textcraftor", dynamic_ncols=True)
        while self.step < t.steps:
            metrics = self.train_step(self.step + 1)
            self.step += 1
            last.update(metrics)
            self._write_metrics("step", metrics)
            self._emit(TrainEvent("step", self.step, metrics))
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4g}", k=metrics["train/k_drawn"])
            done = self.step == t.steps
            if done or (t.eval_every and self.step % t.eval_every == 0):
                last.update(self._evaluate_and_report())
            if done or self.step % t.save_every == 0:
                self.replicas.check_identical()  # never checkpoint replicas that drifted apart
                path = self.save()
                self._emit(TrainEvent("checkpoint", self.step, last, str(path) if path else None))
        progress.close()
        self._emit(TrainEvent("end", self.step, last))
        return last

    def _evaluate_and_report(self, baseline: bool = False) -> dict[str, float]:
        result = self.evaluate() if self.rank == 0 else None
        metrics = self._broadcast(result.metrics if result else None)
        if result is not None:
            self.last_eval = result
            if self.config.train.sample_grid:
                save_grid(result, self.run_dir / "samples" / f"step_{self.step:07d}.png")
            write_json_atomic(self.run_dir / "eval" / f"step_{self.step:07d}.json",
                              result.table(self.step))
            self._write_metrics("eval", metrics)
        if baseline:
            metrics = {**metrics, **{k.replace("eval/", "baseline/"): v
                                     for k, v in metrics.items()}}
        self._emit(TrainEvent("eval", self.step, metrics))
        return metrics

    def _broadcast(self, metrics: dict[str, float] | None) -> dict[str, float]:
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return metrics or {}

    def _emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    def _prepare_run_dir(self) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "config.json", to_dict(self.config))
        # a fresh run starts a new log; a resumed one drops the steps it will redo
        trim_metrics(self.run_dir / "metrics.jsonl", self.step if self._last_checkpoint else -1)
        log.info("run %s: %d prompts train / %d held-out, batch %d × accum %d × world %d, "
                 "%d steps, device %s", self.run_dir, len(self.split.train),
                 len(self.split.heldout), self.config.train.batch_size,
                 self.config.train.grad_accum, self.world_size, self.config.train.steps,
                 self.device)

    def _write_metrics(self, kind: str, metrics: Mapping[str, float]) -> None:
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, "step": self.step, **metrics}) + "\n")


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop lines after ``last_step`` (steps a resumed run will redo), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def save_grid(result: EvalResult, path: Path) -> Path:
    """PNG grid: one row per prompt, one column per seed."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(result.images, tmp, nrow=len(result.seeds), padding=2)
    os.replace(tmp, path)
    return path
