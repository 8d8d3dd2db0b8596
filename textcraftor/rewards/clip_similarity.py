"""The CLIP constraint (CLIP-score regulariser): cos(text, image) with an open_clip model."""

from __future__ import annotations

from .open_clip_reward import OpenClipReward, load_open_clip_reward
from .sources import RewardSource

CLIP_BACKBONE = "ViT-g-14"


class ClipSimilarityReward(OpenClipReward):
    """Cosine of normalised features in [-1, 1]."""


def load_clip_similarity(source: RewardSource) -> ClipSimilarityReward:
    """``source.source``: an open_clip pretrained tag (e.g. ``laion2b_s34b_b88k``) or a checkpoint
    (path or ``owner/repo:file``); ``source.backbone``: model name or model-config ``.json``."""
    return load_open_clip_reward(ClipSimilarityReward, source.backbone or CLIP_BACKBONE,
                                 source.source)
