"""HPSv2 / HPSv2.1: open_clip ViT-H-14 fine-tuned on human preferences; score = cos(text, image)."""

from __future__ import annotations

from .open_clip_reward import OpenClipReward, load_open_clip_reward
from .sources import RewardSource

HPS_BACKBONE = "ViT-H-14"


class HPSReward(OpenClipReward):
    """Cosine of normalised features, ~0.2-0.35 for real images (no logit scale)."""


def load_hps(source: RewardSource) -> HPSReward:
    """``source.source``: ``HPS_v2*_compressed.pt`` (``{"state_dict": ...}``), a path or
    ``owner/repo:file``; ``source.backbone``: open_clip model name or model-config ``.json``."""
    return load_open_clip_reward(HPSReward, source.backbone or HPS_BACKBONE, source.source)
