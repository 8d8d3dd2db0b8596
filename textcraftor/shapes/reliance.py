"""How much a ShapesWorld model relies on each attribute word of a prompt.

For single-shape scenes with every attribute named, swap one attribute's word for another value
(the shape, colour, size, position or background) and measure

- ``text_change``: how far the frozen text encoder's hidden states move, ‖ΔH‖ / ‖H‖ averaged
  over the tokens — near 0 means the encoder barely tells the values apart;
- ``unet_error_increase``: the relative rise of the UNet's ε-prediction error on the latent
  cells the shape touches, averaged over a few timesteps — 0 means the UNet ignores the word.

The oracle says what the samples get wrong; this says where in the model the information is
lost, in seconds, without sampling. ``python -m textcraftor.shapes.reliance DIR`` prints it.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import pil_to_tensor

from textcraftor.models import Pipeline, load_pipeline
from textcraftor.sampler import PromptTokenizer
from textcraftor.shapes.pretrain import LATENT_FACTOR, shape_mask, single_shape_scenes
from textcraftor.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    describe,
    render,
)

SWAPPABLE = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES),
             "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}
TIMESTEPS = (100, 300, 500, 700, 900)  # where the ε-error is measured (SD's 1000-step schedule)


def swap(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """The single-shape ``scene`` with ``attribute`` changed to another value."""
    spec = scene.shapes[0]
    current = scene.background if attribute == "background" else getattr(spec, attribute)
    other = rng.choice([value for value in SWAPPABLE[attribute] if value != current])
    if attribute == "background":
        return replace(scene, background=other)
    return replace(scene, shapes=(replace(spec, **{attribute: other}),))


@torch.no_grad()
def attribute_reliance(pipeline: Pipeline, count: int = 128, seed: int = 0
                       ) -> dict[str, dict[str, float]]:
    """{attribute: {"text_change", "unet_error_increase"}} over ``count`` single-shape scenes."""
    rng = random.Random(seed)
    scenes = single_shape_scenes(count, seed + 3)
    tokens = PromptTokenizer(pipeline.tokenizer)
    images = torch.stack([pil_to_tensor(render(s)) for s in scenes]).float() / 127.5 - 1
    vae, unet, encoder = pipeline.vae, pipeline.unet, pipeline.text_encoder
    latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    cells = (F.max_pool2d(shape_mask(images).float(), LATENT_FACTOR) > 0).float()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))

    def encode(captions: list[str]) -> torch.Tensor:
        return encoder(tokens(captions), return_dict=False)[0]

    def error(context: torch.Tensor) -> float:
        total = 0.0
        for t in TIMESTEPS:
            steps = torch.full((count,), t)
            noisy = pipeline.scheduler.add_noise(latents, noise, steps)
            squared = (unet(noisy, steps, encoder_hidden_states=context).sample - noise) ** 2
            total += float((squared * cells).sum() / (cells.sum() * squared.shape[1]))
        return total / len(TIMESTEPS)

    right = encode([describe(s) for s in scenes])
    right_error = error(right)
    reliance = {}
    for attribute in SWAPPABLE:
        swapped = encode([describe(swap(s, attribute, rng)) for s in scenes])
        change = (swapped - right).norm(dim=-1).mean() / right.norm(dim=-1).mean()
        reliance[attribute] = {"text_change": round(float(change), 4),
                               "unet_error_increase": round(error(swapped) / right_error - 1, 4)}
    return reliance


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m textcraftor.shapes.reliance WEIGHTS_DIR", file=sys.stderr)
        return 2
    print(json.dumps(attribute_reliance(load_pipeline(args[0])), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
