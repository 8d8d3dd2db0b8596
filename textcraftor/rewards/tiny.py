"""Tiny random-weight rewards saved in the real on-disk formats, for tests and smoke runs.

Layout of ``folder`` (each reward folder appears atomically, so existing = complete)::

    aesthetic/  clip-vision/{config.json, model.safetensors}   CLIPVisionModelWithProjection, 768-d
                sac+logos+ava1-l14-linearMSE.pth               head state dict, LAION key layout
    pickscore/  config.json, model.safetensors                 CLIPModel shaped like PickScore_v1
                vocab.json, merges.txt, tokenizer_config.json  the real CLIP BPE tokenizer
    hpsv2/      tiny-hpsv2-vit.json, HPS_v2_compressed.pt      open_clip config + {"state_dict"}
    hpsv2.1/    tiny-hpsv2.1-vit.json, HPS_v2.1_compressed.pt
    clip/       tiny-clip-vit.json, open_clip_model.pt
    <each>/tiny.json                                           {"seed": ...}, written last
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from ..transformers_files import save_transformers_model
from .aesthetic import AESTHETIC_EMBED_DIM, AestheticHead
from .sources import RewardSource

log = logging.getLogger(__name__)

AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
_MANIFEST = "tiny.json"
_TINY_IMAGE_SIZE, _TINY_PATCH = 32, 8

# yuvalkirstain/PickScore_v1's config.json with every size shrunk (and image_size made explicit).
TINY_PICKSCORE_CONFIG: dict = {
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 16,
    "text_config": {
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "model_type": "clip_text_model",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": 16,
    },
    "vision_config": {
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 32,
        "image_size": _TINY_IMAGE_SIZE,
        "intermediate_size": 64,
        "model_type": "clip_vision_model",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": _TINY_PATCH,
        "projection_dim": 16,
    },
}

# open_clip model config in the shape of ViT-H-14.json, tiny.
TINY_OPEN_CLIP_CONFIG: dict = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": _TINY_IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16,
                   "patch_size": _TINY_PATCH},
    "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 2,
                 "layers": 2},
}

_OPEN_CLIP_FILES = {  # reward -> (config stem, checkpoint file name)
    "hpsv2": ("tiny-hpsv2-vit", "HPS_v2_compressed.pt"),
    "hpsv2.1": ("tiny-hpsv2.1-vit", "HPS_v2.1_compressed.pt"),
    "clip": ("tiny-clip-vit", "open_clip_model.pt"),
}


def _build_aesthetic(out: Path) -> None:
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=_TINY_IMAGE_SIZE,
                              patch_size=_TINY_PATCH, projection_dim=AESTHETIC_EMBED_DIM)
    save_transformers_model(CLIPVisionModelWithProjection(config), out / "clip-vision")
    torch.save(AestheticHead(AESTHETIC_EMBED_DIM).state_dict(), out / AESTHETIC_HEAD_FILE)


def _build_pickscore(out: Path) -> None:
    save_transformers_model(CLIPModel(CLIPConfig(**copy.deepcopy(TINY_PICKSCORE_CONFIG))), out)
    build_clip_tokenizer(out)


def _build_open_clip(out: Path, name: str) -> None:
    stem, checkpoint = _OPEN_CLIP_FILES[name]
    (out / f"{stem}.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2))
    # What open_clip.create_model builds for this config; the loader goes through the registry.
    model = open_clip.CLIP(**copy.deepcopy(TINY_OPEN_CLIP_CONFIG))
    torch.save({"state_dict": model.state_dict()}, out / checkpoint)


def _sources(folder: Path) -> dict[str, RewardSource]:
    sources = {
        "aesthetic": RewardSource(str(folder / "aesthetic" / AESTHETIC_HEAD_FILE),
                                  backbone=str(folder / "aesthetic" / "clip-vision")),
        "pickscore": RewardSource(str(folder / "pickscore"), backbone=str(folder / "pickscore")),
    }
    for name, (stem, checkpoint) in _OPEN_CLIP_FILES.items():
        sources[name] = RewardSource(str(folder / name / checkpoint),
                                     backbone=str(folder / name / f"{stem}.json"))
    return sources


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "aesthetic": _build_aesthetic,
    "pickscore": _build_pickscore,
    **{name: (lambda out, n=name: _build_open_clip(out, n)) for name in _OPEN_CLIP_FILES},
}


def _build_one(target: Path, build: Callable[[Path], None], seed: int) -> None:
    """Build into a temporary sibling folder, then rename it into place (atomic)."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build(tmp)
        weightless = [c.parent.name for c in tmp.rglob("config.json")
                      if not (c.parent / "model.safetensors").is_file()]
        if weightless:
            raise RuntimeError(f"building tiny {target.name} wrote no weights in {weightless}")
        (tmp / _MANIFEST).write_text(json.dumps({"seed": seed}))  # last: marks it complete
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MANIFEST).is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_rewards(folder: str | Path, seed: int = 0) -> dict[str, RewardSource]:
    """Create (once) tiny random versions of every reward in ``folder``; their sources.

    Deterministic in ``seed``. A reward folder that already exists is reused; if it was built
    with another seed this raises ``ValueError`` rather than silently returning other weights.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (name, build) in enumerate(_BUILDERS.items()):
        target = folder / name
        manifest = target / _MANIFEST
        if manifest.is_file():
            built_seed = json.loads(manifest.read_text())["seed"]
            if built_seed != seed + offset:
                raise ValueError(f"{target} was built with another seed ({built_seed - offset}); "
                                 f"use a different folder for seed {seed}")
            continue
        log.info("building tiny %s reward in %s", name, target)
        _build_one(target, build, seed + offset)
    return _sources(folder)
