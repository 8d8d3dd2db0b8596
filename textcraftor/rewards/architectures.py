"""The paper's four reward towers at their real sizes with random weights: nothing is fetched.

The ``sd15-arch`` reward preset mirrors the ``sd15-random`` model preset: together they are
TextCraftor's memory and compute profile (issue 18) — each rank holds, beside SD v1.5,

- the CLIP constraint: open_clip ``ViT-g-14`` (1,366,678,273 parameters; image tower
  1,012,645,632),
- PickScore: a transformers ``CLIPModel`` with ``yuvalkirstain/PickScore_v1``'s CLIP-H config
  (986,109,441; image tower and projection 632,076,800),
- HPSv2: open_clip ``ViT-H-14`` (986,109,441; image tower 632,076,800),
- aesthetic: OpenAI CLIP ViT-L/14's image tower with its 768-d projection (303,966,208) and
  LAION's MLP head (AestheticHead).

A reward needs its image tower on the device for every step (the gradient goes through it);
its text tower only computes the frozen text features once per prompt.

``device="meta"`` builds the modules without allocating a byte (counting parameters); any
other device builds them there directly, so 3.6 B parameters never initialise on a CPU first.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from .aesthetic import AestheticHead, AestheticReward
from .base import Reward
from .clip_similarity import CLIP_BACKBONE, ClipSimilarityReward
from .hps import HPSReward
from .pickscore import PickScoreReward

REWARD_PRESET = "sd15-arch"
HPS_BACKBONE = "ViT-H-14"


def pickscore_config() -> CLIPConfig:
    """PickScore_v1's architecture (its config.json: CLIP-H/14, 1024-d projection, GELU)."""
    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=24, num_attention_heads=16,
                         max_position_embeddings=77, hidden_act="gelu", projection_dim=1024),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=16, image_size=224, patch_size=14,
                           hidden_act="gelu", projection_dim=1024),
        projection_dim=1024, logit_scale_init_value=2.6592,
    )


def clip_l14_vision_config() -> CLIPVisionConfig:
    """OpenAI CLIP ViT-L/14's image tower (``openai/clip-vit-large-patch14``), whose 768-d
    projection the LAION aesthetic head reads."""
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, image_size=224, patch_size=14,
                            hidden_act="quick_gelu", projection_dim=768)


ARCH_REWARDS = ("aesthetic", "pickscore", "hpsv2", "hpsv2.1", "clip")  # hpsv2.1: HPSv2's


def build_sd15_arch_rewards(tokenizer: CLIPTokenizer, device: torch.device | str = "meta",
                            dtype: torch.dtype = torch.float32,
                            names: tuple[str, ...] = ("aesthetic", "pickscore", "hpsv2", "clip"),
                            seed: int = 0) -> dict[str, Reward]:
    """The rewards ``names`` (of ``ARCH_REWARDS``; ``hpsv2.1`` has HPSv2's architecture) with
    their real architectures and random weights, built on ``device`` in ``dtype``.

    ``tokenizer``: the CLIP BPE tokenizer for PickScore (``textcraftor.tokenizer.
    build_clip_tokenizer``: offline, the same ids as the laion CLIP-ViT-H-14 tokenizer PickScore
    uses); the open_clip models use open_clip's own shipped tokenizer. The weights depend on
    ``seed`` only (every rank of a run builds the same rewards). Raises ValueError naming an
    unknown reward."""
    import open_clip

    unknown = [n for n in names if n not in ARCH_REWARDS]
    if unknown:
        raise ValueError(f"reward.preset sd15-arch has no reward {unknown[0]!r}; it builds "
                         f"{', '.join(ARCH_REWARDS)}")
    builders = {
        "aesthetic": lambda: AestheticReward(
            CLIPVisionModelWithProjection(clip_l14_vision_config()), AestheticHead()),
        "pickscore": lambda: PickScoreReward(CLIPModel(pickscore_config()), tokenizer),
        "hpsv2": lambda: HPSReward(
            open_clip.create_model(HPS_BACKBONE, pretrained=None, device=device),
            open_clip.get_tokenizer(HPS_BACKBONE)),
        "clip": lambda: ClipSimilarityReward(
            open_clip.create_model(CLIP_BACKBONE, pretrained=None, device=device),
            open_clip.get_tokenizer(CLIP_BACKBONE)),
    }
    builders["hpsv2.1"] = builders["hpsv2"]
    rewards: dict[str, Reward] = {}
    for name in names:
        torch.manual_seed(seed)  # each reward's weights independent of which others are built
        with torch.device(device):
            rewards[name] = builders[name]().to(dtype=dtype)
    return rewards


def image_tower_parameters(name: str, reward: Reward) -> int:
    """Parameters a step's gradient passes through: the reward's image tower (and projection,
    and the aesthetic head); the text tower only feeds cached, frozen text features."""
    modules = {
        "aesthetic": lambda r: [r.tower, r.head],
        "pickscore": lambda r: [r.model.vision_model, r.model.visual_projection],
        "hpsv2": lambda r: [r.model.visual],
        "hpsv2.1": lambda r: [r.model.visual],
        "clip": lambda r: [r.model.visual],
    }[name](reward)
    return sum(p.numel() for m in modules for p in m.parameters())
