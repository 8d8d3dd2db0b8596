"""The TextCraftor objective  L = −Σ wᵢ·sᵢ·Rᵢ(x, p) − λ·s_clip·CLIP(x, p),  averaged over the batch.

wᵢ are the user's weights (λ for the CLIP constraint), sᵢ the fixed loss scales of the reference
code (``REWARD_SCALES``, merged with ``reward.scales`` by ``loss_scales``) that put the rewards
on comparable magnitudes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from textcraftor.config import NO_GRADIENT_REWARDS, RewardConfig
from textcraftor.rewards import Reward, RewardSource, load_reward, loss_scales
from textcraftor.rewards.sources import check_local_paths
from textcraftor.rewards.tiny import build_tiny_rewards
from textcraftor.shapes_weights import is_shapes_preset


class Objective(nn.Module):
    """Weighted sum of differentiable rewards; gradient flows only through the images.

    The reward models sit in an ``nn.ModuleList`` beside a tuple of their names, not in an
    ``nn.ModuleDict``: a reward name may hold a dot (``hpsv2.1``), which a module name cannot.
    """

    def __init__(self, rewards: Mapping[str, Reward], weights: Mapping[str, float],
                 scales: Mapping[str, float] | None = None):
        super().__init__()
        missing = set(weights) - set(rewards)
        if missing:
            raise ValueError(f"no reward model for weight(s) {sorted(missing)}")
        self.names: tuple[str, ...] = tuple(weights)
        self.models = nn.ModuleList(rewards[name] for name in self.names)
        self.scales = loss_scales(scales)  # sᵢ of every reward
        # w_i * s_i per reward, in a fixed order
        self.coefficients = {name: float(w) * float(self.scales[name])
                             for name, w in weights.items()}
        self.trained = tuple(name for name in self.names if self.coefficients[name] != 0)
        if not self.trained:
            raise ValueError(f"every reward weight is zero ({dict(weights)}): nothing to train")

    @property
    def rewards(self) -> dict[str, Reward]:
        """The reward models by their names (``hpsv2.1`` as written), in the weights' order."""
        return dict(zip(self.names, self.models))

    def forward(
        self, images: torch.Tensor, prompts: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images: [B,3,H,W] in [0,1]. Returns (loss scalar, {name: [B] raw reward Rᵢ}) over
        the rewards that carry weight (wᵢ·sᵢ ≠ 0): a zero-weight reward (one a study scores at
        evaluation only) never runs in a training step."""
        scores = self.score(images, prompts, self.trained)
        weighted = sum(self.coefficients[name] * scores[name] for name in self.trained)
        return -weighted.mean(), scores

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """{name: [B] raw reward Rᵢ} of ``names`` (default: every reward, zero weights too)."""
        chosen = self.names if names is None else names
        rewards = self.rewards
        return {name: rewards[name](images, prompts) for name in chosen}

    def train_objective(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ wᵢ·sᵢ·Rᵢ per image with this run's own weights (the negative per-image loss), [B]."""
        return sum(c * scores[name] for name, c in self.coefficients.items())


def weighted_score(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                   scales: Mapping[str, float] | None = None) -> torch.Tensor:
    """Σ qᵢ·sᵢ·Rᵢ per image with fixed weights qᵢ (``eval.quality_weights``: the same for every
    run a study compares) and loss scales sᵢ (``loss_scales(reward.scales)``), [B]. ``scores``:
    {name: [B] raw reward Rᵢ}, holding every weighted name."""
    merged = loss_scales(scales)
    return sum(float(q) * float(merged[name]) * scores[name] for name, q in weights.items())


def reward_sources(config: RewardConfig, model_source: str, cache_dir: str | Path | None,
                   names: Iterable[str] | None = None) -> dict[str, RewardSource | None]:
    """Where each reward's weights come from (``names``, default: the active ones): tiny models
    for the tiny preset, the world's CLIP and aesthetic head for the shapes preset, the real
    checkpoints otherwise (``None`` = the reward's real default), user overrides first."""
    preset = None
    if model_source == "tiny":
        from textcraftor.models import PRESET_VERSION, default_cache_dir

        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        preset = build_tiny_rewards(cache / f"tiny-rewards-{PRESET_VERSION}-0")
    elif is_shapes_preset(model_source):
        preset = shapes_rewards(model_source)
    sources: dict[str, RewardSource | None] = {}
    for name in config.active() if names is None else names:
        override = config.sources.get(name)
        if override is not None:
            sources[name] = RewardSource(override.source, override.backbone)
        elif preset is not None and name not in preset:
            raise ValueError(f"reward.weights.{name}: the {model_source} preset has rewards "
                             f"{', '.join(preset)} only; set reward.sources.{name} to use "
                             f"real weights")
        else:
            sources[name] = preset[name] if preset is not None else None
    return sources


def shapes_rewards(preset: str = "shapes") -> dict[str, RewardSource]:
    """ShapesWorld's rewards: the aesthetic head on its CLIP, and CLIP similarity (the same
    files for ``shapes`` and ``shapes-s``, which links to them)."""
    from textcraftor.shapes_weights import SHAPES_AESTHETIC_HEAD, SHAPES_CLIP, shapes_folder

    folder = shapes_folder(preset)
    clip = str(folder / SHAPES_CLIP)
    return {"aesthetic": RewardSource(str(folder / SHAPES_AESTHETIC_HEAD), backbone=clip),
            "clip": RewardSource(clip, backbone=str(folder / "tokenizer"))}


def check_reward_sources(config: RewardConfig) -> None:
    """Fail fast on a configured local reward path that does not exist (before any model loads:
    loading the pipeline first would make a typo cost minutes)."""
    active = config.active()
    for name, override in config.sources.items():
        if name in active:
            check_local_paths(RewardSource(override.source, override.backbone))


REWARD_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_rewards(config: RewardConfig, model_source: str, cache_dir: str | Path | None,
                  names: Iterable[str] | None = None,
                  device: torch.device | str = "cpu") -> dict[str, Reward]:
    """The frozen rewards ``names`` (default: the active ones) on ``device``, stored in
    ``reward.dtype``: user sources first, then ``reward.preset`` (``sd15-arch``: real
    architectures with random weights, built directly on ``device``), then ``reward_sources``."""
    names = list(config.active() if names is None else names)
    dtype = REWARD_TORCH_DTYPES[config.dtype]
    rewards: dict[str, Reward] = {name: load_reward(name, device=device)
                                  for name in names if name in NO_GRADIENT_REWARDS}
    arch = [n for n in names if config.preset == "sd15-arch" and n not in config.sources
            and n not in rewards]
    if arch:
        from textcraftor.models import default_cache_dir
        from textcraftor.rewards.architectures import build_sd15_arch_rewards
        from textcraftor.tokenizer import build_clip_tokenizer

        folder = Path(cache_dir or default_cache_dir()) / "clip-tokenizer"
        rewards.update(build_sd15_arch_rewards(build_clip_tokenizer(folder), device, dtype,
                                               names=tuple(arch)))
    loaded = [n for n in names if n not in rewards]
    for name, source in reward_sources(config, model_source, cache_dir, loaded).items():
        rewards[name] = load_reward(name, source, device=device, dtype=dtype)
    return {name: rewards[name] for name in names}


def build_objective(config: RewardConfig, model_source: str, cache_dir: str | Path | None,
                    device: torch.device | str = "cpu") -> Objective:
    """Load every active reward (frozen) and combine them with the configured weights. Rewards
    only the evaluation scores are the ``Evaluator``'s, built there on first use."""
    weights = dict(config.active())
    return Objective(build_rewards(config, model_source, cache_dir, names=weights, device=device),
                     weights, config.scales)
