"""Differentiable image rewards by name: ``load_reward(name)(images, prompts) -> Tensor[B]``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from .aesthetic import AestheticHead, AestheticReward, load_aesthetic
from .base import Reward
from .clip_similarity import ClipSimilarityReward, load_clip_similarity
from .hps import HPSReward, load_hps
from .oracle import OracleReward
from .pickscore import PickScoreReward, load_pickscore
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, to_clip_pixels
from .sources import RewardSource, check_local_paths
from .tiny import build_tiny_rewards

log = logging.getLogger(__name__)

REWARD_NAMES = ("aesthetic", "pickscore", "hpsv2", "hpsv2.1", "clip")

DEFAULT_SOURCES: dict[str, RewardSource] = {
    # TRL's hub copy of LAION's sac+logos+ava1-l14-linearMSE.pth (same "layers.N" keys).
    "aesthetic": RewardSource("trl-lib/ddpo-aesthetic-predictor:aesthetic-model.pth",
                              backbone="openai/clip-vit-large-patch14"),
    "pickscore": RewardSource("yuvalkirstain/PickScore_v1",
                              backbone="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "hpsv2": RewardSource("xswu/HPSv2:HPS_v2_compressed.pt", backbone="ViT-H-14"),
    "hpsv2.1": RewardSource("xswu/HPSv2:HPS_v2.1_compressed.pt", backbone="ViT-H-14"),
    "clip": RewardSource("laion2b_s34b_b88k", backbone="ViT-g-14"),
}

# Loss weights TextCraftor's code puts on each reward (loss = -scale * reward), which bring the
# rewards' very different ranges to comparable gradients: aesthetic scores ~5-7, PickScore ~20
# (already multiplied by logit_scale ~100), HPS and CLIP are raw cosines ~0.2-0.35.
REWARD_SCALES: dict[str, float] = {
    "aesthetic": 3.0,
    "pickscore": 1.0,
    "hpsv2": 100.0,
    "hpsv2.1": 100.0,
    "clip": 100.0,
    "oracle": 1.0,  # ShapesWorld's 0/1 accuracy; no gradient (policy_gradient normalises it)
}


def loss_scales(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """sᵢ of every reward: ``REWARD_SCALES`` with the run's ``reward.scales`` over it — the one
    place the two are merged (the training loss, the evaluation's train objective and the
    study's quality all use this)."""
    return {**REWARD_SCALES, **(overrides or {})}

_LOADERS: dict[str, Callable[[RewardSource], Reward]] = {
    "aesthetic": load_aesthetic,
    "pickscore": load_pickscore,
    "hpsv2": load_hps,
    "hpsv2.1": load_hps,
    "clip": load_clip_similarity,
}


def load_reward(
    name: str,
    source: RewardSource | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Reward:
    """A frozen reward ``name`` from ``source`` (default: ``DEFAULT_SOURCES[name]``); the
    ShapesWorld ``oracle`` has no weights and no source."""
    if name == "oracle":
        return OracleReward().to(device)
    if name not in _LOADERS:
        raise ValueError(f"unknown reward {name!r}; valid names: {', '.join(REWARD_NAMES)}")
    source = DEFAULT_SOURCES[name] if source is None else source
    check_local_paths(source)
    reward = _LOADERS[name](source).to(device=device, dtype=dtype)
    log.info("loaded reward %s from %s on %s (%s)", name, source, device, dtype)
    return reward


__all__ = [
    "DEFAULT_SOURCES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "OracleReward",
    "REWARD_NAMES",
    "REWARD_SCALES",
    "loss_scales",
    "AestheticHead",
    "AestheticReward",
    "ClipSimilarityReward",
    "HPSReward",
    "PickScoreReward",
    "Reward",
    "RewardSource",
    "build_tiny_rewards",
    "load_reward",
    "to_clip_pixels",
]
