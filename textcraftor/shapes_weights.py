"""The ShapesWorld base model's folder, every file checked against its ``checksums.json``
before anything loads it (the ``shapes`` preset, and its rewards)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

# The ShapesWorld base model (``python -m textcraftor.shapes.pretrain``), committed with the
# package; TEXTCRAFTOR_SHAPES_WEIGHTS points the preset at another folder.
SHAPES_WEIGHTS = Path(__file__).parent / "shapes" / "weights"
SHAPES_CLIP = "clip"  # the whole small CLIP (CLIPModel), for the rewards
SHAPES_AESTHETIC_HEAD = "aesthetic/head.safetensors"  # AestheticHead on the CLIP's embedding
SHAPES_REBUILD = "python -m textcraftor.shapes.pretrain --out {folder}"


class DamagedWeightsError(FileNotFoundError):
    """A preset's weight file is missing or not what was written; the message says how to
    rebuild it."""


def shapes_folder() -> Path:
    """The ShapesWorld weights, every file checked against ``checksums.json``: hashed once per
    process (~50 ms), again only when a file's size or modification time changes."""
    folder = Path(os.environ.get("TEXTCRAFTOR_SHAPES_WEIGHTS") or SHAPES_WEIGHTS).expanduser()
    rebuild = SHAPES_REBUILD.format(folder=folder)
    manifest = folder / "checksums.json"
    if not manifest.is_file():
        raise DamagedWeightsError(f"ShapesWorld weights missing: no {manifest}; rebuild them "
                                  f"with `{rebuild}` (about an hour on 2 CPU cores)")
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
