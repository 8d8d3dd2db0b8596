"""The CLIP constraint (CLIP-score regulariser): cos(text, image) with an open_clip model, or
with a transformers ``CLIPModel`` folder (the ShapesWorld CLIP)."""

from __future__ import annotations

from pathlib import Path

from .base import Reward
from .open_clip_reward import OpenClipReward, load_open_clip_reward
from .pickscore import ClipModelSimilarity, load_clip_model
from .sources import RewardSource, is_local_path

CLIP_BACKBONE = "ViT-g-14"


class ClipSimilarityReward(OpenClipReward):
    """Cosine of normalised features in [-1, 1]."""


def is_transformers_folder(ref: str) -> bool:
    return is_local_path(ref) and (Path(ref).expanduser() / "config.json").is_file()


def load_clip_similarity(source: RewardSource) -> Reward:
    """``source.source``: an open_clip pretrained tag (e.g. ``laion2b_s34b_b88k``) or a checkpoint
    (path or ``owner/repo:file``); ``source.backbone``: model name or model-config ``.json``.
    A local transformers ``CLIPModel`` folder instead takes the tokenizer folder as backbone."""
    if is_transformers_folder(source.source):
        return ClipModelSimilarity(*load_clip_model(source))
    return load_open_clip_reward(ClipSimilarityReward, source.backbone or CLIP_BACKBONE,
                                 source.source)
