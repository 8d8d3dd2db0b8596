"""The method's configuration: one frozen dataclass per concern, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from textcraftor.configio import (
    ConfigError,
    apply_overrides,
    from_dict,
    read_yaml,
    require,
    require_choice,
    to_dict,
)
from textcraftor.shapes_weights import is_shapes_preset

PRESETS = ("tiny", "sd15-random", "shapes", "shapes-s")
# sample.truncation: the gradient estimator. Chain backpropagation: last_k, random_k, window
# (the gradient window's first and last step), x0_shortcut, draft_lv (DRaFT-LV), drtune
# (DRTune); direct (a paired image noised to t); policy_gradient (DDPO-style PPO, no reward
# gradient needed)
TRUNCATION_MODES = ("last_k", "random_k", "x0_shortcut", "direct", "window", "draft_lv",
                    "drtune", "policy_gradient")
# the sample fields each estimator reads beyond T; a field of another estimator set away from
# its default is refused (ESTIMATOR_ONLY_FIELDS), naming the estimator that uses it
ESTIMATOR_FIELDS = {
    "last_k": ("k",), "random_k": ("k_min", "k_max"), "x0_shortcut": ("k_min", "k_max"),
    "direct": ("direct_t_min", "direct_t_max"), "window": ("window_first", "window_last"),
    "draft_lv": ("draft_lv_renoise",), "drtune": ("drtune_k", "drtune_stop_ratio"),
    "policy_gradient": (),
}
# fields refused under another estimator (the older modes' k, k_min, k_max stay lenient: a study
# searching sample.truncation and sample.k has always set both)
ESTIMATOR_ONLY_FIELDS = ("window_first", "window_last", "draft_lv_renoise", "drtune_k",
                         "drtune_stop_ratio")


def estimator_of(path: str) -> str | None:
    """The one estimator (sample.truncation) that reads run-config ``path``, for the paths only
    one estimator reads (its ``sample`` fields in ESTIMATOR_ONLY_FIELDS, the ``policy``
    section); None for every other path. A study searches such a path only in the trials that
    run its estimator (``study.space``)."""
    section, _, name = path.partition(".")
    if section == "policy":
        return "policy_gradient"
    if section == "sample" and name in ESTIMATOR_ONLY_FIELDS:
        return next(e for e, fields in ESTIMATOR_FIELDS.items() if name in fields)
    return None


def for_estimator(data: Mapping[str, Any], estimator: str) -> dict[str, Any]:
    """A plain run-config dict with ``sample.truncation`` = ``estimator`` and every field only
    another estimator reads (``estimator_of``) back at its default: what a study's trial runs
    when its searched estimator differs from the base's. The defaults come from the config
    classes; the other fields are kept."""
    data = json.loads(json.dumps(dict(data)))
    defaults = to_dict(RunConfig())
    data.setdefault("sample", {})["truncation"] = estimator
    for section, fields in defaults.items():
        if not isinstance(fields, Mapping) or section not in data:
            continue
        for name in list(data[section]):
            owner = estimator_of(f"{section}.{name}")
            if owner not in (None, estimator) and name in fields:
                data[section][name] = fields[name]
    return data
NO_GRAD_ENCODERS = ("original", "trainable")
UNET_TRAINING = ("none", "full", "lora")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
# Differentiable rewards; "clip" is the CLIP text-image constraint, weighted by λ.
QUALITY_REWARDS = ("aesthetic", "pickscore", "hpsv2", "hpsv2.1")
SHAPES_REWARDS = ("aesthetic", "clip", "oracle")  # what the ShapesWorld preset ships
# rewards with no gradient (the ShapesWorld oracle's 0/1 all-attribute accuracy): trained with
# sample.truncation=policy_gradient only, on the shapes presets only
NO_GRADIENT_REWARDS = ("oracle",)
# reward.preset: "auto" follows model.source (tiny, shapes: their own rewards; else the real
# checkpoints); "sd15-arch": every reward's real architecture with random weights (nothing fetched)
REWARD_PRESETS = ("auto", "sd15-arch")
REWARD_DTYPES = ("fp32", "bf16", "fp16")  # storage dtype of the frozen reward models


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


def require_finite(section: str, config: Any) -> None:
    """Raise ConfigError naming the first float field of dataclass ``config`` (or float value
    of one of its mappings) that is NaN or ±inf: ``sample.eta: must be a finite number, got
    nan``. A NaN passes every ``>=`` check by failing it silently, so this runs first."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for key, item in items:
            if isinstance(item, float) and not math.isfinite(item):
                name = f"{section}.{f.name}" + (f".{key}" if key is not None else "")
                raise ConfigError(f"{name}: must be a finite number, got {item}", relative=True)


CLIP_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class TextEncoderLoraConfig:
    rank: int = 0  # r of a peft LoRA on the text encoder; 0 = off (the whole encoder trains)
    alpha: float | None = None  # LoRA alpha (updates scaled by alpha / rank); None = rank
    targets: tuple[str, ...] = CLIP_ATTENTION_PROJECTIONS  # module-name suffixes that get a
    #   LoRA (peft's target_modules): CLIP attention's q/k/v/out projections (TexForce)

    def __post_init__(self) -> None:
        require_finite("model.text_encoder_lora", self)
        where = "model.text_encoder_lora"
        require(self.rank >= 0, f"{where}.rank", f"must be >= 0 (0 = off), got {self.rank}")
        require(self.alpha is None or self.alpha > 0, f"{where}.alpha",
                f"must be > 0 (or null: the rank), got {self.alpha}")
        require(len(self.targets) >= 1 and all(isinstance(t, str) and t for t in self.targets),
                f"{where}.targets", f"must be a non-empty list of module-name suffixes (e.g. "
                f"{list(CLIP_ATTENTION_PROJECTIONS)}), got {list(self.targets)}")

    def lora_alpha(self) -> float:
        """alpha, None resolved to the rank."""
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class ModelConfig:
    source: str = "tiny"  # preset (tiny, sd15-random), hub id, or local diffusers folder
    revision: str | None = None  # hub revision for a hub id
    cache_dir: str | None = None  # where presets are built; default ~/.cache/textcraftor
    train_unet: str = "none"  # none | full | lora: also fine-tune the UNet
    unet_lr: float = 1e-6  # learning rate of the UNet (or its LoRA)
    lora_rank: int = 4  # LoRA rank when train_unet=lora
    train_text_encoder: bool = True  # False freezes it (the reference's UNet stage)
    text_encoder_from: str | None = None  # run or checkpoint folder whose tuned text encoder
    #   replaces the base one at the start (e.g. the UNet stage after a text-encoder run)
    text_encoder_lora: TextEncoderLoraConfig = field(  # train a peft LoRA of the text encoder
        default_factory=TextEncoderLoraConfig)  # instead of all of it (rank 0: all of it)
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | no | fp16 | bf16

    def __post_init__(self) -> None:
        require_finite("model", self)
        require(bool(self.source), "model.source",
                f"must be a preset {PRESETS}, a hub id or a path")
        require_choice(self.train_unet, "model.train_unet", UNET_TRAINING)
        require_choice(self.mixed_precision, "model.mixed_precision", MIXED_PRECISION)
        require(self.unet_lr > 0, "model.unet_lr", f"must be > 0, got {self.unet_lr}")
        require(self.lora_rank >= 1, "model.lora_rank", f"must be >= 1, got {self.lora_rank}")
        require(self.text_encoder_from is None or Path(self.text_encoder_from).exists(),
                "model.text_encoder_from", f"{self.text_encoder_from!r}: no such folder (give a "
                "run folder or a checkpoint folder)")
        require(self.train_text_encoder or self.train_unet != "none", "model.train_text_encoder",
                "nothing to train: text encoder frozen and train_unet=none")
        require(self.train_text_encoder or self.text_encoder_lora.rank == 0,
                "model.text_encoder_lora.rank", f"{self.text_encoder_lora.rank} trains a LoRA of "
                "the text encoder, but model.train_text_encoder is false: set rank 0 or "
                "train_text_encoder true")


@dataclass(frozen=True)
class SampleConfig:
    resolution: int = 128  # image side in pixels (512 for SD v1.5)
    num_steps: int = 20  # T, DDIM steps from noise
    guidance_scale: float = 7.5  # classifier-free guidance w; <= 1 disables the unconditional pass
    eta: float = 0.0  # DDIM eta in [0, 1] (0 = deterministic, 1 = DDPM's variance)
    truncation: str = "last_k"  # last_k | random_k | x0_shortcut | direct (a paired image
    #                             noised to t, x̂0 in one step: no chain from noise)
    k: int = 5  # last_k: the last K steps carry gradient
    k_min: int = 1  # random_k / x0_shortcut: smallest K (drawn once per batch)
    k_max: int = 5  # random_k / x0_shortcut: largest K
    direct_t_min: int = 200  # direct: smallest training timestep t (of the scheduler's 1000),
    #                          drawn per batch
    direct_t_max: int = 800  # direct: largest (< the scheduler's training timesteps, checked
    #                          with the model: textcraftor.limits)
    window_first: int = 0  # window: first step (0-based, of T) whose UNet call carries gradient
    window_last: int = -1  # window: last step with gradient, where the chain ends (x̂0 predicted
    #                        there when < T−1); −1 = T−1
    draft_lv_renoise: int = 2  # draft_lv: n, re-noisings of the final sample (DRaFT-LV, n = 2);
    #                            n + 1 UNet calls carry gradient
    drtune_k: int = 5  # drtune: K sparse steps with gradient, evenly spaced, random offset
    drtune_stop_ratio: float = 0.0  # drtune: the chain stops at a step drawn among the last
    #                                 ⌈ratio·T⌉ (x̂0 predicted there); 0 = never early
    no_grad_encoder: str = "original"  # which text encoder drives the no-grad steps
    checkpointing: bool = True  # gradient checkpointing on every UNet call with gradient
    vae_checkpointing: bool = False  # gradient checkpointing in the VAE decoder (diffusers'
    #                                  AutoencoderKL: less activation memory, one more decode)
    test_finetuned_steps: int = 0  # evaluation/generation: fine-tuned encoder drives the last M
    #                                steps, the original the rest (reference: 15 of 25); 0 = all

    def __post_init__(self) -> None:
        require_finite("sample", self)
        # the multiple it must be depends on the model's VAE: textcraftor.limits checks it
        require(self.resolution >= 1, "sample.resolution",
                f"must be a positive number of pixels, got {self.resolution}")
        require(self.num_steps >= 1, "sample.num_steps", f"must be >= 1, got {self.num_steps}")
        require(self.guidance_scale >= 0, "sample.guidance_scale",
                f"must be >= 0, got {self.guidance_scale}")
        # DDIM's direction term is sqrt(1 - ᾱ_prev - σ²) with σ = eta·σ_DDPM: above 1 it can go
        # negative and the step returns NaN (diffusers computes it without a clamp)
        require(0 <= self.eta <= 1, "sample.eta", f"must be in [0, 1], got {self.eta}")
        require_choice(self.truncation, "sample.truncation", TRUNCATION_MODES)
        require_choice(self.no_grad_encoder, "sample.no_grad_encoder", NO_GRAD_ENCODERS)
        t = self.num_steps
        require(0 <= self.test_finetuned_steps <= t, "sample.test_finetuned_steps",
                f"must be in [0, num_steps={t}], got {self.test_finetuned_steps}")
        require(0 <= self.direct_t_min, "sample.direct_t_min",
                f"must be >= 0, got {self.direct_t_min}")
        require(self.direct_t_min <= self.direct_t_max, "sample.direct_t_max",
                f"must be >= direct_t_min={self.direct_t_min}, got {self.direct_t_max}")
        self._check_estimator_fields()
        if self.truncation == "last_k":
            require(1 <= self.k <= t, "sample.k", f"must be in [1, num_steps={t}], got {self.k}")
        elif self.truncation == "window":
            require(0 <= self.window_first < t, "sample.window_first",
                    f"must be a step in [0, num_steps={t}), got {self.window_first}")
            require(self.window_last == -1 or self.window_first <= self.window_last < t,
                    "sample.window_last", f"must be a step in [window_first={self.window_first}, "
                    f"num_steps={t}) or -1 (the last step), got {self.window_last}")
        elif self.truncation == "drtune":
            require(1 <= self.drtune_k <= t, "sample.drtune_k",
                    f"must be in [1, num_steps={t}] (K sparse steps of the chain), got "
                    f"{self.drtune_k}")
            require(0 <= self.drtune_stop_ratio <= 1, "sample.drtune_stop_ratio",
                    f"must be in [0, 1], got {self.drtune_stop_ratio}")
        elif self.truncation == "policy_gradient":
            require(self.eta > 0, "sample.eta", "policy_gradient needs eta > 0: at eta = 0 a "
                    "DDIM step is deterministic and its log-probability is undefined, got "
                    f"{self.eta}")
        if self.truncation == "draft_lv":
            require(self.draft_lv_renoise >= 1, "sample.draft_lv_renoise",
                    f"must be >= 1, got {self.draft_lv_renoise}")
        elif self.truncation in ("random_k", "x0_shortcut"):
            require(1 <= self.k_min <= t, "sample.k_min",
                    f"must be in [1, num_steps={t}], got {self.k_min}")
            require(self.k_min <= self.k_max <= t, "sample.k_max",
                    f"must be in [k_min={self.k_min}, num_steps={t}], got {self.k_max}")


    def _check_estimator_fields(self) -> None:
        """Refuse a field of another estimator set away from its default, naming the field,
        its value and the estimator that reads it."""
        defaults = SampleConfig.__dataclass_fields__
        used = ESTIMATOR_FIELDS[self.truncation]
        for name in ESTIMATOR_ONLY_FIELDS:
            value = getattr(self, name)
            if name not in used and value != defaults[name].default:
                owner = next(e for e, fields in ESTIMATOR_FIELDS.items() if name in fields)
                raise ConfigError(f"sample.{name}: {value!r} applies to sample.truncation="
                                  f"{owner} only; this run's estimator is {self.truncation} "
                                  f"(remove it, or set sample.truncation={owner})",
                                  relative=True)

    def window_last_step(self) -> int:
        """window's last step with gradient, −1 resolved to T−1."""
        return self.num_steps - 1 if self.window_last == -1 else self.window_last


@dataclass(frozen=True)
class RewardSourceConfig:
    source: str  # hub id, folder or file of the reward's weights
    backbone: str | None = None  # second piece where needed (CLIP tower, tokenizer, model name)


@dataclass(frozen=True)
class RewardConfig:
    weights: Mapping[str, float] = field(  # user weight w_i of each quality reward
        default_factory=lambda: _frozen_mapping({"aesthetic": 1.0})
    )
    clip_constraint: float = 1.0  # λ, weight of the CLIP text-image similarity constraint
    scales: Mapping[str, float] = field(  # s_i overrides; default = the reference's loss scales
        default_factory=lambda: _frozen_mapping({})
    )
    sources: Mapping[str, RewardSourceConfig] = field(  # per-reward weight sources
        default_factory=lambda: _frozen_mapping({})
    )
    preset: str = "auto"  # auto (model.source's rewards, else real checkpoints) | sd15-arch
    #                       (the paper's architectures, random weights); sources override it
    dtype: str = "fp32"  # storage dtype of the frozen reward models: fp32 | bf16 | fp16
    #                      (halves their memory; under autocast the matmuls run in it anyway)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _frozen_mapping(self.weights))
        object.__setattr__(self, "scales", _frozen_mapping(self.scales))
        object.__setattr__(self, "sources", _frozen_mapping(self.sources))
        require_finite("reward", self)
        for name, weight in self.weights.items():
            require_choice(name, "reward.weights", (*QUALITY_REWARDS, *NO_GRADIENT_REWARDS))
            require(weight >= 0, f"reward.weights.{name}", f"must be >= 0, got {weight}")
        require(self.clip_constraint >= 0, "reward.clip_constraint",
                f"must be >= 0, got {self.clip_constraint}")
        require(any(w > 0 for w in self.active().values()), "reward.weights",
                "all weights are zero (clip_constraint too): nothing to optimise")
        for name in self.scales:
            require_choice(name, "reward.scales", (*QUALITY_REWARDS, "clip",
                                                   *NO_GRADIENT_REWARDS))
        for name in self.sources:
            require_choice(name, "reward.sources", (*QUALITY_REWARDS, "clip"))
        require_choice(self.preset, "reward.preset", REWARD_PRESETS)
        require_choice(self.dtype, "reward.dtype", REWARD_DTYPES)

    def active(self) -> dict[str, float]:
        """Weights of every reward in the objective, the constraint as ``clip``; zeros dropped."""
        weights = {n: w for n, w in self.weights.items() if w > 0}
        if self.clip_constraint > 0:
            weights["clip"] = self.clip_constraint
        return weights


@dataclass(frozen=True)
class PolicyGradientConfig:
    """sample.truncation=policy_gradient: DDPO's PPO update (Black et al. 2023, DDPO_IS with
    clipping) on the text encoder; the defaults are DDPO's."""

    clip_range: float = 1e-4  # ε of the clipped ratio clip(r, 1−ε, 1+ε) (DDPO: 1e-4)
    adv_clip_max: float = 5.0  # advantages clipped to [−max, max] after normalisation
    timestep_fraction: float = 1.0  # fraction of the T steps trained per sampled batch (a
    #                                 random subset, drawn per micro-batch; at least one step)
    samples_per_prompt: int = 4  # images per prompt per micro-batch (each its own seed), so
    #                              the per-prompt reward mean and std exist
    ppo_epochs: int = 1  # inner updates (optimizer steps) on each sampled batch

    def __post_init__(self) -> None:
        require_finite("policy", self)
        require(self.clip_range > 0, "policy.clip_range", f"must be > 0, got {self.clip_range}")
        require(self.adv_clip_max > 0, "policy.adv_clip_max",
                f"must be > 0, got {self.adv_clip_max}")
        require(0 < self.timestep_fraction <= 1, "policy.timestep_fraction",
                f"must be in (0, 1], got {self.timestep_fraction}")
        require(self.samples_per_prompt >= 1, "policy.samples_per_prompt",
                f"must be >= 1, got {self.samples_per_prompt}")
        require(self.ppo_epochs >= 1, "policy.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")


@dataclass(frozen=True)
class DataConfig:
    prompts: str | None = None  # .txt/.csv/.tsv prompt file, or "shapes" (ShapesWorld
    #                             captions); None = the bundled set (shapes for that preset)
    column: str | None = None  # csv/tsv column with the prompt (default Prompt/prompt/text)
    pairs: str | None = None  # direct truncation's image–caption pairs: "shapes" or a folder
    #                           of images with same-name .txt captions; None = shapes for that
    #                           preset
    heldout_count: int = 8  # held-out evaluation prompts, split off by split_seed
    split_seed: int | None = None  # seed of the train / held-out split; None: train.seed (a
    #                                study pins it, so every run evaluates the same prompts)
    eval_seeds: tuple[int, ...] = (0, 1)  # noise seeds per held-out prompt at evaluation

    def __post_init__(self) -> None:
        require(self.heldout_count >= 1, "data.heldout_count",
                f"must be >= 1, got {self.heldout_count}")
        require(len(self.eval_seeds) >= 1, "data.eval_seeds", "needs at least one seed")


LPIPS_TRUNKS = ("auto", "pretrained", "random")
IMAGE_FEATURES = ("auto", "inception", "random")
ORACLE = ("auto", "on", "off")
ALIGNMENT = ("auto", "oracle", "clip")  # eval.alignment: where eval/alignment comes from
DIVERSITY = ("auto", "attributes", "lpips", "clip")  # eval.diversity_metric: eval/diversity's


@dataclass(frozen=True)
class EvalConfig:
    diversity: bool = True  # intra-prompt LPIPS and CLIP-embedding distance (needs >= 2 seeds)
    lpips_trunk: str = "auto"  # pretrained (downloads AlexNet) | random (offline) | auto: random
    #                            for the tiny and shapes presets, pretrained otherwise
    distribution: bool = True  # KID and FID of the evaluation images against the reference set
    features: str = "auto"  # KID/FID features: inception (downloads) | random (offline) | auto
    reference_dir: str | None = None  # folder of reference images; None = the base model's
    #                                   images for the same prompts and seeds
    kid_subset_size: int = 100  # KID subset size (capped at the number of images)
    oracle: str = "auto"  # ShapesWorld oracle accuracy (eval/oracle_*): on | off | auto: on for
    #                       the shapes preset
    quality_weights: Mapping[str, float] = field(  # qᵢ of the quality score Σ qᵢ·sᵢ·Rᵢ, per image
        default_factory=lambda: _frozen_mapping({}))  # (eval/quality, the per-prompt quality):
    #   fixed weights, the same for every run compared (a study's objectives.quality_weights);
    #   empty: no quality score, only the run's own training objective (eval/train_objective)
    alignment: str = "auto"  # eval/alignment, per image: oracle (ShapesWorld's all-attribute
    #                          accuracy, 0/1) | clip (the CLIP score) | auto: oracle when on
    diversity_metric: str = "auto"  # eval/diversity, per prompt: attributes (the oracle's free
    #   attributes' entropy across seeds) | lpips (LPIPS-form distance, in eval.lpips_trunk) |
    #   clip (distance of CLIP image embeddings) | auto: lpips with the trained trunk, else
    #   clip

    def __post_init__(self) -> None:
        object.__setattr__(self, "quality_weights", _frozen_mapping(self.quality_weights))
        require_choice(self.alignment, "eval.alignment", ALIGNMENT)
        require_choice(self.diversity_metric, "eval.diversity_metric", DIVERSITY)
        require_finite("eval", self)
        for name, weight in self.quality_weights.items():
            require_choice(name, "eval.quality_weights", QUALITY_REWARDS)
            require(weight >= 0, f"eval.quality_weights.{name}", f"must be >= 0, got {weight}")
        require_choice(self.lpips_trunk, "eval.lpips_trunk", LPIPS_TRUNKS)
        require_choice(self.oracle, "eval.oracle", ORACLE)
        require_choice(self.features, "eval.features", IMAGE_FEATURES)
        require(self.kid_subset_size >= 2, "eval.kid_subset_size",
                f"must be >= 2, got {self.kid_subset_size}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50  # optimizer steps
    batch_size: int = 2  # prompts per micro-batch per worker
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-6  # text-encoder learning rate (reference: 1e-6, AdamW, no schedule)
    weight_decay: float = 0.01  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    seed: int = 0  # prompts, noise and truncation draws derive from it
    eval_every: int = 25  # evaluate on held-out prompts every N steps (and at the end); 0 = end
    save_every: int = 25  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    sample_grid: bool = True  # save a PNG grid of the evaluation images
    eval_at_start: bool = True  # evaluate the untuned encoder before the first step (baseline)
    eval_batch_size: int = 8  # images per forward pass at evaluation
    inject_nan_at: int = 0  # fault injection for tests: the loss is NaN at this step (0 = never)
    unet_pass_budget: int = 0  # matched cost: training ends after the first step at which the
    #   run's UNet passes (train/unet_passes summed) reach it, train.steps the cap; 0 = off

    def __post_init__(self) -> None:
        require_finite("train", self)
        for name in ("steps", "batch_size", "grad_accum", "save_every", "keep_checkpoints",
                     "eval_batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name}", f"must be >= 1, got {value}")
        require(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.unet_pass_budget >= 0, "train.unet_pass_budget",
                f"must be >= 0 (0 = off), got {self.unet_pass_budget}")
        require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        require(self.max_grad_norm >= 0, "train.max_grad_norm",
                f"must be >= 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # which pipeline, what trains
    sample: SampleConfig = field(default_factory=SampleConfig)  # the DDIM chain and truncation
    reward: RewardConfig = field(default_factory=RewardConfig)  # objective
    data: DataConfig = field(default_factory=DataConfig)  # prompts
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation metrics
    policy: PolicyGradientConfig = field(  # sample.truncation=policy_gradient's PPO update
        default_factory=PolicyGradientConfig)
    output_dir: str = "runs/textcraftor"  # run folder: config.json, metrics.jsonl, checkpoints
    # its checks name fields relative to it (sample.eta); nested, e.g. as a study's base, the
    # errors get the nesting path in front (base.sample.eta)
    config_root: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if is_shapes_preset(self.model.source):
            for name in self.reward.active():
                require(name in SHAPES_REWARDS or name in self.reward.sources,
                        f"reward.weights.{name}", f"the {self.model.source} preset has rewards "
                        f"{SHAPES_REWARDS} only (or set reward.sources.{name})")
        self._check_policy_gradient()
        require(self.sample.truncation != "direct" or self.data.pairs is not None
                or is_shapes_preset(self.model.source), "data.pairs",
                "sample.truncation=direct needs image–caption pairs: 'shapes' or a folder of "
                "images with same-name .txt captions")
        require(not self.eval.diversity or len(self.data.eval_seeds) >= 2, "data.eval_seeds",
                "eval.diversity needs at least 2 evaluation seeds per prompt")
        require(self.eval.alignment != "oracle" or self.oracle_on(), "eval.alignment",
                f"oracle needs ShapesWorld's oracle (eval.oracle on, or auto with model.source "
                f"shapes; got eval.oracle={self.eval.oracle}, model.source="
                f"{self.model.source}): use clip (the CLIP score) or auto")
        require(self.eval.diversity_metric != "attributes" or self.oracle_on(),
                "eval.diversity_metric", f"attributes needs ShapesWorld's oracle (got "
                f"eval.oracle={self.eval.oracle}, model.source={self.model.source})")
        images = self.data.heldout_count * len(self.data.eval_seeds)
        require(not self.eval.distribution or self.eval.reference_dir or images >= 2,
                "data.heldout_count", f"eval.distribution (KID/FID) needs at least 2 evaluation "
                f"images; heldout_count × eval_seeds gives {images}")

    def _check_policy_gradient(self) -> None:
        """A reward without gradient trains by policy gradient only, on ShapesWorld only; the
        policy section applies to policy_gradient only."""
        truncation = self.sample.truncation
        for name in NO_GRADIENT_REWARDS:
            if name not in self.reward.active():
                continue
            require(is_shapes_preset(self.model.source), f"reward.weights.{name}",
                    f"the ShapesWorld oracle's accuracy is a reward of the shapes presets only "
                    f"(model.source={self.model.source})")
            require(truncation == "policy_gradient", f"reward.weights.{name}",
                    f"has no gradient: it trains with sample.truncation=policy_gradient only "
                    f"(got sample.truncation={truncation}; set it to policy_gradient, or the "
                    f"weight to 0)")
        if truncation == "policy_gradient":
            return
        defaults = PolicyGradientConfig()
        for f in dataclasses.fields(PolicyGradientConfig):
            value = getattr(self.policy, f.name)
            require(value == getattr(defaults, f.name), f"policy.{f.name}",
                    f"{value!r} applies to sample.truncation=policy_gradient only; this run's "
                    f"estimator is {truncation} (remove it, or set "
                    f"sample.truncation=policy_gradient)")

    def held_out_split_seed(self) -> int:
        """The seed of the train / held-out prompt split: data.split_seed, else train.seed."""
        return self.train.seed if self.data.split_seed is None else self.data.split_seed

    def oracle_on(self) -> bool:
        """Whether the evaluation reads images back with ShapesWorld's oracle (eval.oracle)."""
        return self.eval.oracle == "on" or (self.eval.oracle == "auto"
                                            and is_shapes_preset(self.model.source))

    def alignment_source(self) -> str:
        """The per-image score eval/alignment is: ``oracle_all`` or ``clip``."""
        if self.eval.alignment == "auto":
            return "oracle_all" if self.oracle_on() else "clip"
        return "oracle_all" if self.eval.alignment == "oracle" else "clip"

    def with_output_dir(self, output_dir: str | Path) -> RunConfig:
        return replace(self, output_dir=str(output_dir))


def load_run_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping | None = None
) -> RunConfig:
    """Read a YAML run config (or start from ``base``/defaults), then apply ``key=value``
    overrides (``configio.apply_overrides`` with the ``RunConfig`` schema: a reward name may
    hold a dot, ``reward.weights.hpsv2.1=0.5``).

    Raises ConfigError naming the field, FileNotFoundError for a missing YAML file."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_yaml(path))
    return from_dict(RunConfig, apply_overrides(data, overrides, schema=RunConfig))


__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PolicyGradientConfig",
    "RewardConfig",
    "RewardSourceConfig",
    "RunConfig",
    "SampleConfig",
    "TextEncoderLoraConfig",
    "TrainConfig",
    "load_run_config",
    "require_finite",
]
