"""Where reward weights come from, and resolving a reference to a local file.

A reference string is one of
- a local path (absolute, starting with ``.`` or ``~``, existing, or ending in a weights/config
  suffix such as ``.pt``) -- it must exist, else ``FileNotFoundError`` naming it;
- ``"owner/repo:filename"`` -- one file on the Hugging Face hub (``hf_hub_download``);
- anything else -- a hub repo id for ``from_pretrained``, an open_clip model name or an open_clip
  pretrained tag, depending on the slot (see each loader).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json", ".ckpt")


@dataclass(frozen=True)
class RewardSource:
    source: str  # weights: hub id, local folder or file, "owner/repo:filename" or open_clip tag
    backbone: str | None = None  # second piece: CLIP tower, tokenizer, open_clip name/config json


def is_local_path(ref: str) -> bool:
    if os.path.isabs(ref) or ref.startswith((".", "~")) or os.path.exists(ref):
        return True
    return ":" not in ref and ref.endswith(_PATH_SUFFIXES)


def is_hub_file(ref: str) -> bool:
    return not is_local_path(ref) and ":" in ref


def require_exists(ref: str) -> Path:
    path = Path(ref).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"reward weights not found: {path}")
    return path


def check_local_paths(source: RewardSource) -> None:
    """Fail fast, before anything heavy loads, on a local path that does not exist."""
    for ref in (source.source, source.backbone):
        if ref is not None and is_local_path(ref):
            require_exists(ref)


def resolve_file(ref: str) -> Path:
    """A local path to the single file ``ref`` names (downloading ``owner/repo:file``)."""
    if is_hub_file(ref):
        from huggingface_hub import hf_hub_download

        repo_id, _, filename = ref.partition(":")
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    path = require_exists(ref)
    if not path.is_file():
        raise FileNotFoundError(f"expected a weights file, got a folder: {path}")
    return path


def hub_or_folder(ref: str) -> str:
    """What ``from_pretrained`` should get: a checked local folder or a hub repo id."""
    return str(require_exists(ref)) if is_local_path(ref) else ref
