"""The pretraining's settings (``PretrainConfig``, one flag each on the command line) and the
sizes every stage shares."""

from __future__ import annotations

from dataclasses import dataclass

from textcraftor.shapes.cells import LATENT_FACTOR

IMAGE_SIZE = 64
WIDTH = 64  # CLIP width = the UNet's cross-attention width
# what --components-from reuses: the whole CLIP and its text tower, the tokenizer, the VAE and
# the aesthetic head (the scheduler is written anew: it has no weights)
REUSED_COMPONENTS = ("clip", "text_encoder", "tokenizer", "vae", "aesthetic", "card.json")


@dataclass(frozen=True)
class PretrainConfig:
    out: str  # output folder (a diffusers pipeline folder + clip/ + aesthetic/ + card)
    seed: int = 0  # data, initialisation and noise: the same seed gives the same weights
    clip_steps: int = 1200  # contrastive steps of the small CLIP
    word_identity_weight: float = 1.0  # CLIP stage: weight of the word-identity term (0: off)
    vae_steps: int = 1100  # reconstruction steps of the VAE
    unet_steps: int = 3300  # ε-prediction steps of the UNet
    aesthetic_steps: int = 1500  # regression steps of the aesthetic head
    batch_size: int = 32  # image–caption pairs per CLIP / UNet step
    vae_batch_size: int = 64  # windows per VAE step, each cut from its own image
    vae_window: int = 32  # side of the VAE's training windows, each holding part of a shape
    lr: float = 1e-3  # peak AdamW learning rate of the CLIP, head and UNet (warm-up, cosine)
    vae_lr: float = 2e-3  # peak AdamW learning rate of the VAE
    caption_dropout: float = 0.1  # UNet stage: share of empty captions (for guidance)
    offset_noise: float = 0.1  # UNet stage: std of the per-channel constant added to the noise
    pool_size: int = 16384  # UNet stage: pairs encoded to latents once, then drawn at random
    aesthetic_images: int = 4096  # rendered (and degraded) images the head is fitted on
    max_minutes: float = 60.0  # wall-clock cap over the whole run (a stage stops early past it)
    final_minutes: float = 2.0  # of max_minutes kept for saving and the card's evaluation
    eval_every: int = 660  # UNet steps between progress checks of the oracle (0 = none)
    eval_prompts: int = 64  # single-shape prompts for the base model's oracle accuracy
    eval_steps: int = 25  # DDIM steps at that evaluation
    threads: int = 2  # torch intra-op threads
    unet_width: int = 48  # channels of the UNet's first block (its second has twice as many);
    #   24 gives the shapes-s model, about 4× fewer parameters and multiply-adds; a multiple of 8
    components_from: str = ""  # a pretrained folder whose CLIP, aesthetic head and VAE are
    #   reused (stages 1–3 skipped; linked, not copied): a second UNet for the same text encoder

    def __post_init__(self) -> None:
        at_least = {"seed": 0, "clip_steps": 1, "vae_steps": 1, "unet_steps": 1,
                    "aesthetic_steps": 1, "batch_size": 2, "vae_batch_size": 1,
                    "pool_size": self.batch_size, "aesthetic_images": 10, "eval_every": 0,
                    "eval_prompts": 1, "eval_steps": 1, "threads": 1}
        for name, least in at_least.items():
            value = getattr(self, name)
            if value < least:
                why = " (batch_size)" if name == "pool_size" else ""
                raise ValueError(f"{name} must be an integer >= {least}{why}, got {value}")
        if self.unet_width < 8 or self.unet_width % 8:
            raise ValueError(f"unet_width must be a multiple of 8 (attention heads of 8 "
                             f"channels), >= 8, got {self.unet_width}")
        if self.components_from:
            from pathlib import Path

            folder = Path(self.components_from)
            missing = [name for name in REUSED_COMPONENTS if not (folder / name).exists()]
            if missing:
                raise ValueError(f"components_from {self.components_from!r} lacks "
                                 f"{', '.join(missing)}: give a folder written by this command "
                                 f"(e.g. textcraftor/shapes/weights)")
        if not self.word_identity_weight >= 0:
            raise ValueError(f"word_identity_weight must be >= 0 (0 turns it off), "
                             f"got {self.word_identity_weight:g}")
        for name in ("lr", "vae_lr", "max_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name):g}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout:g}")
        if not self.offset_noise >= 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise:g}")
        windows = range(2 * LATENT_FACTOR, IMAGE_SIZE + 1, LATENT_FACTOR)
        if self.vae_window not in windows:
            raise ValueError(f"vae_window must be a multiple of {LATENT_FACTOR} in "
                             f"[{windows[0]}, {IMAGE_SIZE}] (pixels per latent cell), "
                             f"got {self.vae_window}")
        if not 0 <= self.final_minutes < self.max_minutes:
            raise ValueError(f"final_minutes must be in [0, max_minutes = {self.max_minutes:g}), "
                             f"got {self.final_minutes:g}")
