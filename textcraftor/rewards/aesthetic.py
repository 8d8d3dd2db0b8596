"""LAION improved-aesthetic-predictor: an MLP on the L2-normalised CLIP ViT-L/14 image embedding."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModelWithProjection

from .base import Reward
from .sources import RewardSource, hub_or_folder, resolve_file

log = logging.getLogger(__name__)

AESTHETIC_EMBED_DIM = 768  # OpenAI CLIP ViT-L/14 projection width


class AestheticHead(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts and no activations.

    The layout (``layers.0/2/4/6/7``) matches ``sac+logos+ava1-l14-linearMSE.pth`` so the LAION
    file loads unchanged. Output is roughly the 1..10 AVA rating scale.
    """

    def __init__(self, input_dim: int = AESTHETIC_EMBED_DIM) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> (B, 1)."""
        return self.layers(embeddings)


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """LAION's ``.pth`` state dict, or the same keys in a ``.safetensors`` file."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(path).items()}
    else:
        state = torch.load(path, weights_only=True, map_location="cpu")
    head = AestheticHead(input_dim=state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head


class AestheticReward(Reward):
    """Score = head(normalise(CLIP image embedding)); ignores the prompts."""

    def __init__(self, tower: CLIPVisionModelWithProjection, head: AestheticHead) -> None:
        if tower.config.projection_dim != head.input_dim:
            raise ValueError(f"CLIP tower projects to {tower.config.projection_dim} dims but the "
                             f"aesthetic head expects {head.input_dim}")
        super().__init__(image_size=tower.config.image_size)
        self.tower = tower
        self.head = head
        self.freeze()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B,3,S,S) -> unit-norm image embeddings (B, D), with grad."""
        return F.normalize(self.tower(pixel_values=pixels).image_embeds, dim=-1)

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.embed(pixels)).squeeze(-1)


def load_vision_tower(where: str) -> CLIPVisionModelWithProjection:
    """The image tower of a CLIP vision folder or of a whole ``CLIPModel`` folder (ShapesWorld's
    ``clip/``: its text tower's weights are expected to go unused, so transformers' report
    listing them is silenced)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    whole_clip = AutoConfig.from_pretrained(where).model_type == "clip"
    level = hf_logging.get_verbosity()
    if whole_clip:
        hf_logging.set_verbosity_error()
    try:
        return CLIPVisionModelWithProjection.from_pretrained(where, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)


def load_aesthetic(source: RewardSource) -> AestheticReward:
    """``source.source``: the head file; ``source.backbone``: the CLIP vision tower."""
    if source.backbone is None:
        raise ValueError("aesthetic needs backbone= the CLIP ViT-L/14 tower (hub id or folder)")
    head = load_aesthetic_head(resolve_file(source.source))
    tower = load_vision_tower(hub_or_folder(source.backbone))
    log.info("aesthetic: head %s on CLIP tower %s", source.source, source.backbone)
    return AestheticReward(tower, head)
