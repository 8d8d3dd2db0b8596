"""A run's folder: ``config.json``, ``metrics.jsonl`` (one line per step and evaluation), the
evaluation artifacts ``samples/step_N.png`` and ``eval/step_N.json``. Only rank 0 writes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textcraftor.atomic import write_json_atomic, write_text_atomic
from textcraftor.evaluation import EvalResult


class RunFolder:
    """The files of one run under ``path``; every method is a no-op on ranks other than 0."""

    def __init__(self, path: str | Path, rank: int = 0):
        self.path = Path(path)
        self.writes = rank == 0

    def prepare(self, config: Mapping[str, Any], keep_through_step: int) -> None:
        """Write ``config.json``; keep the metric lines up to ``keep_through_step`` (-1: a fresh
        run starts a new log; a resumed one drops the steps it will redo)."""
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / "config.json", dict(config))
        trim_metrics(self.path / "metrics.jsonl", keep_through_step)

    def write_metrics(self, kind: str, step: int, metrics: Mapping[str, float]) -> None:
        """Append one ``{"kind", "step", **metrics}`` line to ``metrics.jsonl``."""
        if self.writes:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"kind": kind, "step": step, **metrics}) + "\n")

    def write_evaluation(self, result: EvalResult, step: int, grid: bool) -> None:
        """The per-prompt table (and, when ``grid``, the sample grid) of one evaluation."""
        if not self.writes:
            return
        if grid:
            save_grid(result, self.path / "samples" / f"step_{step:07d}.png")
        write_json_atomic(self.path / "eval" / f"step_{step:07d}.json", result.table(step))

    def evaluation_files(self, step: int) -> dict[str, Path] | None:
        """The evaluation artifacts of ``step`` that exist, by the name a checkpoint keeps them
        under (``samples.png``, ``eval.json``); None when there are none."""
        shown = {"samples.png": self.path / "samples" / f"step_{step:07d}.png",
                 "eval.json": self.path / "eval" / f"step_{step:07d}.json"}
        return {k: f for k, f in shown.items() if f.is_file()} or None


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop lines after ``last_step`` (steps a resumed run will redo), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def save_grid(result: EvalResult, path: Path) -> Path:
    """PNG grid: one row per prompt, one column per seed."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(result.images, tmp, nrow=len(result.seeds), padding=2)
    os.replace(tmp, path)
    return path
