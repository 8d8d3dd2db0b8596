"""The trained models written in SD's on-disk layout (``model_index.json``, tokenizer,
text_encoder, unet, vae, scheduler), plus the whole CLIP in ``clip/`` and the aesthetic head in
``aesthetic/`` for the rewards; every weight in fp16."""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModel

from textcraftor.models import write_model_index
from textcraftor.rewards.aesthetic import AestheticHead
from textcraftor.shapes_weights import SHAPES_AESTHETIC_HEAD
from textcraftor.transformers_files import save_transformers_model


def save_weights(out: Path, clip: CLIPModel, text_encoder: CLIPTextModel,
                 unet: UNet2DConditionModel, vae: AutoencoderKL, head: AestheticHead,
                 scheduler: DDIMScheduler, linked: bool = False) -> None:
    """SD's layout, every weight in fp16 (loaders cast back to fp32); the models are left in
    fp32 afterwards. ``linked``: the CLIP, text encoder, VAE and head are links to another
    model's files (``--components-from``) and are not written (writing would go through the
    links into that model)."""
    unet.half().save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    if not linked:
        save_transformers_model(clip.half(), out / "clip")
        save_transformers_model(text_encoder.half(), out / "text_encoder")
        vae.half().save_pretrained(out / "vae")
        (out / SHAPES_AESTHETIC_HEAD).parent.mkdir(exist_ok=True)
        save_file({k: v.half().contiguous() for k, v in head.state_dict().items()},
                  out / SHAPES_AESTHETIC_HEAD)
    for module in (clip, text_encoder, unet, vae):
        module.float()
    write_model_index(out)
