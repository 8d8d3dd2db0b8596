"""Resuming a run: the configuration it continues with, and which changes a resume may make.

A run continues from its saved configuration (``RUN/config.json``). A resume may extend it —
more ``train.steps`` — or change what cannot change its results (``train.keep_checkpoints``,
``train.eval_batch_size``, ``output_dir``); anything else would train a different run under
the same name, and is refused before any model loads. Allowed changes are recorded one JSON line
per resume in ``RUN/resumes.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textcraftor.atomic import append_line_atomic
from textcraftor.config import RunConfig
from textcraftor.configio import ConfigError, config_changes, from_dict, to_dict

CONFIG_FILE = "config.json"
RESUMES_FILE = "resumes.jsonl"
# fields a resume may change besides train.steps: none of them changes what the run computes
HARMLESS_FIELDS = ("train.keep_checkpoints", "train.eval_batch_size", "output_dir")


def read_saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` as plain data, with every field of the current ``RunConfig``
    (a field added since the run was made takes its default).

    Raises ConfigError when the file is missing or unreadable, naming the file.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: {path} is missing: the run's configuration is unknown, "
                          "so it cannot be continued")
    try:
        saved = json.loads(path.read_text())
        return to_dict(from_dict(RunConfig, saved))
    except (json.JSONDecodeError, ConfigError) as error:
        raise ConfigError(f"--resume: {path} cannot be read as a run config: {error}") from None


def check_resume(saved: Mapping[str, Any], requested: RunConfig,
                 checkpoint_step: int) -> dict[str, tuple[Any, Any]]:
    """The changes a resume of the run saved as ``saved`` (its ``config.json`` data) makes by
    continuing with ``requested`` from the checkpoint of ``checkpoint_step``:
    ``{"train.steps": (3, 5)}``; empty when nothing changes.

    Raises ConfigError naming every field that differs and may not (with the saved and the
    requested value), and ``train.steps`` below the checkpoint's step.
    """
    changes = config_changes(dict(saved), to_dict(requested))
    refused = {k: v for k, v in changes.items() if k not in ("train.steps", *HARMLESS_FIELDS)}
    steps = changes.get("train.steps")
    if steps is not None and steps[1] < checkpoint_step and not refused:
        raise ConfigError(
            f"--resume: train.steps: {steps[1]} is below the step of {requested.output_dir}'s "
            f"latest checkpoint ({checkpoint_step}); a resume may only extend the run (saved "
            f"train.steps {steps[0]})")
    if steps is not None and steps[1] < checkpoint_step:
        refused["train.steps"] = steps
    if refused:
        listed = ", ".join(f"{field} (saved {_show(old)}, now {_show(new)})"
                           for field, (old, new) in refused.items())
        raise ConfigError(
            f"--resume: {requested.output_dir} was trained with another configuration; "
            f"differing fields: {listed}; only train.steps (≥ {checkpoint_step}), "
            f"{', '.join(HARMLESS_FIELDS[:-1])} and {HARMLESS_FIELDS[-1]} may change on resume")
    return changes


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def record_resume(run_dir: str | Path, at_step: int,
                  changes: Mapping[str, tuple[Any, Any]]) -> Path:
    """Append ``{"at_step", "changes": {field: [old, new]}, "time"}`` to ``RUN/resumes.jsonl``
    atomically (the file is rewritten to a temporary name and renamed); ``time`` is Unix
    seconds. Returns the file."""
    path = Path(run_dir) / RESUMES_FILE
    line = json.dumps({"at_step": at_step,
                       "changes": {k: [old, new] for k, (old, new) in changes.items()},
                       "time": time.time()})
    return append_line_atomic(path, line)
