"""What the pretraining says about its weights: ``card.json``, its readable twin ``README.md``
(data, steps, losses, the oracle's accuracy, ``samples.png``), and ``checksums.json`` (the
SHA-256 of every file the loaders read, verified by ``textcraftor.shapes_weights``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from textcraftor.shapes.pretraining.config import IMAGE_SIZE, WIDTH
from textcraftor.shapes.pretraining.unet_stage import MIN_SNR_GAMMA, UNET_SHAPE_WEIGHT

DOCUMENTS = ("README.md", "card.json", "checksums.json", "samples.png", "samples.txt")


def write_card(out: Path, card: dict) -> None:
    """``card.json``, its readable twin ``README.md``, and the checksums of every weight file
    (``checksums.json``) that the loader verifies."""
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(model_card(card))
    write_checksums(out)


def model_card(card: dict) -> str:
    """The card as Markdown: the recipe, the stages' steps and losses, the oracle's accuracy,
    the VAE's ceiling and the attribute reliance."""
    stages = card["stages"]
    rows = "\n".join(
        f"| {name} | {s['steps']} | {s['seconds']:.0f} | {s['first_loss']:.4f} | "
        f"{s['last_loss']:.4f} |" + (" reused |" if "reused_from" in s else " trained here |")
        for name, s in stages.items())
    oracle, ceiling = (" · ".join(f"{k} {v:.2f}" for k, v in scores.items()
                                  if k not in ("unscored", "out_of_vocabulary"))
                       for scores in (card["oracle"], card["vae_reconstruction_oracle"]))
    aesthetic = stages["aesthetic"]
    config = card["config"]
    window = config.get("vae_window", IMAGE_SIZE)
    word_identity = ""
    if config.get("word_identity_weight", 0.0):
        word_identity = (", plus a word-identity term (weight "
                         f"{config['word_identity_weight']:g}: a linear probe reads each "
                         "caption token from its own last hidden state)")
    vae = f"64 px ↔ 16×16×4 latents, scaling factor {stages['vae']['scaling_factor']:.4f}"
    if window < IMAGE_SIZE:
        vae += f"; trained on {window} px windows that each hold a shape"
    reliance = " · ".join(f"{name} {r['text_change']:.2f} / {r['unet_error_increase']:+.0%}"
                          for name, r in card.get("attribute_reliance", {}).items())
    width = config.get("unet_width", 48)
    reused = config.get("components_from", "")
    command = f"python -m textcraftor.shapes.pretrain --out DIR --seed {config['seed']}"
    if width != 48:
        command += f" --unet-width {width}"
    reuse = ""
    if reused:
        command += f" --components-from {reused}"
        reuse = (f"\n\nIts CLIP (and text encoder), tokenizer, VAE and aesthetic head are those of "
                 f"`{card.get('components_from', reused)}` — linked, the same files, so one "
                 f"text encoder drives both models; only the UNet was trained here.")
    parameters = stages["unet"].get("parameters")
    unet_size = (f"blocks of {width} and {2 * width} channels, {parameters / 1e6:.2f} M "
                 f"parameters; " if parameters else "")
    return f"""# ShapesWorld base model{f" ({card['preset']})" if card.get("preset") else ""}

A miniature Stable Diffusion (SD v1.5's layout and classes) trained on ShapesWorld by
`{command}` in {card['minutes']} minutes on {config['threads']} CPU threads.
{f"Load it as the `{card['preset']}` preset." if card.get("preset") else ""}{reuse}

- **Data**: {card['data']}; captions from varied templates (`textcraftor.shapes.world`).
- **Text encoder**: the text tower of a small CLIP (width {WIDTH}, 3 layers) trained
  contrastively{word_identity}; the whole CLIP is in `clip/` (CLIP-similarity reward).
- **VAE**: {vae}.
- **UNet**: {unet_size}ε-prediction on SD v1.5's scaled-linear schedule with offset noise
  {config['offset_noise']}, min-SNR-{MIN_SNR_GAMMA:g} timestep weights,
  {1 + UNET_SHAPE_WEIGHT:g}× weight on the shapes' latent cells,
  {config['caption_dropout']:.0%} empty captions.
- **Aesthetic head** (`aesthetic/`): LAION's MLP layout on the CLIP's unit-norm image
  embedding, fitted to {card['quality_score']}; held-out Pearson r
  {aesthetic['heldout_pearson']:.3f}, mean absolute error {aesthetic['heldout_mae']:.3f}.
- **Weights**: fp16 safetensors; `checksums.json` holds their SHA-256.

| stage | steps | seconds | first loss | last loss | |
|---|---|---|---|---|---|
{rows}

**Oracle accuracy** of the base model on {config['eval_prompts']} single-shape prompts
(every attribute named), {config['eval_steps']} DDIM steps, guidance 5: {oracle}.

The VAE's own reconstructions of {config['eval_prompts']} single-shape renders — a ceiling for
the UNet — score {ceiling}.

**Attribute reliance** (`python -m textcraftor.shapes.reliance DIR`): swapping one attribute's
word in a full caption moves the text encoder's hidden states by (‖ΔH‖ / ‖H‖) / raises the
UNet's ε-error on the shape's latent cells by: {reliance or "not measured"}.

![samples](samples.png) — prompts in `samples.txt`, row by row.
"""


def write_checksums(out: Path) -> None:
    """SHA-256 of every file the loaders read (weights, configs, tokenizer), through linked
    folders too (a ``--components-from`` model checks the files it shares)."""
    files = sorted(Path(folder, name) for folder, _, names in os.walk(out, followlinks=True)
                   for name in names if name not in DOCUMENTS)
    checksums = {str(p.relative_to(out)): sha256(p) for p in files}
    (out / "checksums.json").write_text(json.dumps(checksums, indent=2) + "\n")


def sha256(path: Path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
