"""The ShapesWorld base model's folder, every file checked against its ``checksums.json``
before anything loads it (the ``shapes`` preset, and its rewards)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# The ShapesWorld base models (``python -m textcraftor.shapes.pretrain``), committed with the
# package: ``shapes`` (UNet of 2.2 M parameters) and ``shapes-s`` (a UNet about 4× smaller,
# trained for the same text encoder, whose CLIP, tokenizer, VAE and aesthetic head it links
# to). TEXTCRAFTOR_SHAPES_WEIGHTS / TEXTCRAFTOR_SHAPES_S_WEIGHTS point a preset elsewhere.
SHAPES_WEIGHTS = Path(__file__).parent / "shapes" / "weights"
SHAPES_S_WEIGHTS = Path(__file__).parent / "shapes" / "weights-s"
SHAPES_CLIP = "clip"  # the whole small CLIP (CLIPModel), for the rewards
SHAPES_AESTHETIC_HEAD = "aesthetic/head.safetensors"  # AestheticHead on the CLIP's embedding
SHAPES_REBUILD = "python -m textcraftor.shapes.pretrain --out {folder}"


@dataclass(frozen=True)
class ShapesPreset:
    folder: Path  # the committed weights
    variable: str  # environment variable that points the preset at another folder
    rebuild: str  # the command that rebuilds them ({folder}: where)
    rebuild_time: str  # how long that takes on 2 CPU cores


SHAPES_PRESETS = {
    "shapes": ShapesPreset(SHAPES_WEIGHTS, "TEXTCRAFTOR_SHAPES_WEIGHTS", SHAPES_REBUILD,
                           "about an hour"),
    "shapes-s": ShapesPreset(SHAPES_S_WEIGHTS, "TEXTCRAFTOR_SHAPES_S_WEIGHTS",
                             SHAPES_REBUILD + " --unet-width 24 --components-from "
                             "textcraftor/shapes/weights", "about 15 minutes"),
}


def is_shapes_preset(source: str) -> bool:
    """Whether ``model.source`` names a ShapesWorld preset (its oracle, prompts and rewards)."""
    return source in SHAPES_PRESETS


def preset_of(folder: str | Path) -> str | None:
    """The preset whose committed folder ``folder`` is, else None."""
    folder = Path(folder).resolve()
    return next((name for name, preset in SHAPES_PRESETS.items()
                 if preset.folder.resolve() == folder), None)


class DamagedWeightsError(FileNotFoundError):
    """A preset's weight file is missing or not what was written; the message says how to
    rebuild it."""


def shapes_folder(preset: str = "shapes") -> Path:
    """The ShapesWorld preset's weights (``shapes`` or ``shapes-s``), every file checked
    against ``checksums.json`` (through its links, for ``shapes-s``): hashed once per process
    (~50 ms), again only when a file's size or modification time changes.

    Raises KeyError for another preset name, DamagedWeightsError for a missing or changed
    file (the message says how to rebuild it)."""
    spec = SHAPES_PRESETS[preset]
    folder = Path(os.environ.get(spec.variable) or spec.folder).expanduser()
    rebuild = spec.rebuild.format(folder=folder)
    manifest = folder / "checksums.json"
    if not manifest.is_file():
        raise DamagedWeightsError(f"ShapesWorld weights missing: no {manifest}; rebuild them "
                                  f"with `{rebuild}` ({spec.rebuild_time} on 2 CPU cores)")
    files = []
    for name, expected in json.loads(manifest.read_text()).items():
        path = folder / name
        if not path.is_file():
            raise DamagedWeightsError(f"ShapesWorld weight file missing: {path}; rebuild with "
                                      f"`{rebuild}`")
        stat = path.stat()
        files.append((str(path), expected, stat.st_size, stat.st_mtime_ns))
    _verify_checksums(tuple(files), rebuild)
    return folder


@functools.lru_cache(maxsize=8)
def _verify_checksums(files: tuple[tuple[str, str, int, int], ...], rebuild: str) -> None:
    """``files``: (path, expected SHA-256, size, mtime) — the stat fields key the cache."""
    for path, expected, _, _ in files:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != expected:
            raise DamagedWeightsError(
                f"ShapesWorld weight file damaged: {path} (SHA-256 {digest[:12]}…, expected "
                f"{expected[:12]}… from checksums.json); restore it with `git checkout -- "
                f"{path}` or rebuild with `{rebuild}`")
