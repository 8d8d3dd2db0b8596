"""Atomic training checkpoints: weights as safetensors, optimizer and RNG states, the step.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` built under a temporary name and renamed
into place, so a reader never sees a half-written one; ``state.json`` is written last.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int  # the last optimizer step this checkpoint includes
    weights: dict[str, dict[str, torch.Tensor]]  # "text_encoder", "text_encoder_lora",
    #                                              "unet" or "unet_lora"
    optimizer: dict[str, Any] | None
    rng: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)  # what the saver added to state.json


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    keep: int | None = None,
    files: dict[str, Path] | None = None,
    folders: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically; keep the newest ``keep`` checkpoints.
    ``files`` are copied in under the given names (e.g. the latest sample grid); each writer in
    ``folders`` fills the folder of its name (e.g. a LoRA in peft's format)."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        for name, tensors in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                      staging / f"{name}.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(capture_rng(), staging / "rng.pt")
        for name, source in (files or {}).items():
            shutil.copyfile(source, staging / name)
        for name, write in (folders or {}).items():
            write(staging / name)
        state = {"step": step, "weights": sorted(weights), **(extra or {})}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder (safetensors + ``weights_only`` torch files: safe to load)."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"not a complete checkpoint (no {STATE_FILE}): {path}")
    state = json.loads(state_file.read_text())
    weights = {name: load_file(path / f"{name}.safetensors", device=str(map_location))
               for name in state["weights"]}
    optimizer = _load_torch(path / "optimizer.pt", map_location)
    rng = _load_torch(path / "rng.pt", "cpu")
    extra = {k: v for k, v in state.items() if k not in ("step", "weights")}
    return Checkpoint(path, int(state["step"]), weights, optimizer, rng, extra)


def _load_torch(path: Path, map_location) -> Any:
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
