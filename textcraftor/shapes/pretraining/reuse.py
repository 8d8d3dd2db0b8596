"""``--components-from DIR``: a second UNet for an existing ShapesWorld model's text encoder.

The CLIP (and its text tower), tokenizer, VAE and aesthetic head of ``DIR`` are loaded instead
of trained, and the new folder links to ``DIR``'s files (relative symlinks, so both models read
the very same bytes and the repository holds them once); the card copies their stage records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPModel

from textcraftor.rewards.aesthetic import AestheticHead, load_aesthetic_head
from textcraftor.shapes.pretraining.config import REUSED_COMPONENTS
from textcraftor.shapes_weights import SHAPES_AESTHETIC_HEAD, SHAPES_CLIP

LINKED = tuple(name for name in REUSED_COMPONENTS if name != "card.json")
REUSED_STAGES = ("clip", "aesthetic", "vae")


def link_components(out: Path, source: Path) -> None:
    """``out/<component>`` → ``source/<component>`` as relative symlinks (replacing an earlier
    link; an existing real folder there is refused rather than overwritten)."""
    for name in LINKED:
        link = out / name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link} exists and is not a link: pretrain into a new folder")
        link.symlink_to(os.path.relpath(source / name, out), target_is_directory=True)


def load_components(source: Path, out: Path
                    ) -> tuple[CLIPModel, AestheticHead, AutoencoderKL, dict]:
    """The CLIP, aesthetic head and VAE of ``source`` in fp32, frozen, and the stage records of
    its card (each marked ``reused_from``: ``source`` relative to the new folder ``out``, as
    its links are)."""
    clip = CLIPModel.from_pretrained(source / SHAPES_CLIP, dtype=torch.float32)
    head = load_aesthetic_head(source / SHAPES_AESTHETIC_HEAD)
    vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=torch.float32)
    for module in (clip, head, vae):
        module.eval().requires_grad_(False)
    stages = json.loads((source / "card.json").read_text())["stages"]
    where = os.path.relpath(source.resolve(), out.resolve())
    reused = {name: {**stages[name], "reused_from": where} for name in REUSED_STAGES}
    return clip, head, vae, reused
