"""open_clip models as rewards: cos(text, image) of normalised features (HPSv2, CLIP score)."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .base import Reward
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .sources import is_local_path, require_exists, resolve_file

log = logging.getLogger(__name__)

_registered: dict[Path, float] = {}  # config json -> mtime when added to open_clip's registry


def model_name(backbone: str) -> str:
    """An open_clip model name; a ``.json`` model-config path is registered under its stem.

    open_clip's registry is per process, so every process (e.g. a Ray worker) registers again.
    """
    if not backbone.endswith(".json"):
        return backbone
    path = require_exists(backbone).resolve()
    mtime = path.stat().st_mtime
    if _registered.get(path) != mtime:
        open_clip.add_model_config(path)
        _registered[path] = mtime
    return path.stem


def load_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a ``.safetensors`` or ``torch.save`` file (bare or under ``state_dict``)."""
    if path.suffix == ".safetensors":
        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, weights_only=True, map_location="cpu")
    if "state_dict" in state:
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def create_open_clip(backbone: str, weights: str | None) -> tuple[torch.nn.Module, str]:
    """(model, model name). ``weights``: a checkpoint (path or ``owner/repo:file``), an open_clip
    pretrained tag, or None for random weights."""
    name = model_name(backbone)
    if weights is None or is_local_path(weights) or ":" in weights:
        model = open_clip.create_model(name, pretrained=None)
        if weights is not None:
            model.load_state_dict(load_checkpoint_state(resolve_file(weights)))
    else:
        model = open_clip.create_model(name, pretrained=weights)
    return model, name


class OpenClipReward(Reward):
    """Score = cos(normalised image features, normalised text features) per matched pair."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", model.visual.image_size)
        size = size if isinstance(size, int) else size[0]
        super().__init__(image_size=size, mean=cfg.get("mean", OPENAI_CLIP_MEAN),
                         std=cfg.get("std", OPENAI_CLIP_STD))
        self.model = model
        self.tokenizer = tokenizer
        self.freeze()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B,3,S,S) -> unnormalised image embeddings (B, D)."""
        return self.model.encode_image(pixels)

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = F.normalize(self.image_embeddings(pixels), dim=-1)
        return (image * self.text_features(prompts).to(image.dtype)).sum(dim=-1)


def load_open_clip_reward(cls: type[OpenClipReward], backbone: str,
                          weights: str | None) -> OpenClipReward:
    model, name = create_open_clip(backbone, weights)
    log.info("%s: open_clip %s with weights %s", cls.__name__, name, weights)
    return cls(model, open_clip.get_tokenizer(name))
