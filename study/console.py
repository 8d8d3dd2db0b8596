"""The sweep's console: one line per trial start and end with its objectives, the final Pareto
table, and nothing of Ray's internals unless ``--verbose``.

Quiet (the default), Ray's processes do not stream their output to the driver (``ray.init
(log_to_driver=False)``: it stays in the Ray session's ``logs/`` folder, whose path is printed
at start), Tune prints no status tables (``verbose=0``), and the driver's ``ray.*`` loggers and
Python warnings go to ``<sweep>/logs/driver.log`` instead of the console.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

DRIVER_LOG = "logs/driver.log"  # in the sweep folder: Ray's driver-side logs and warnings


def quiet_driver_logs(sweep_dir: Path) -> Path:
    """Send the ``ray`` loggers and Python warnings of this process to ``<sweep>/logs/driver.log``
    (appended; a resumed sweep adds to it); returns the file's path."""
    path = sweep_dir / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("ray", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


class TrialLines(Callback):
    """A Tune callback that prints one line when a trial starts (its searched values), ends
    (its step and objectives; stopped early, with the rung), fails (the error's last line) or
    fails and is restarted by Tune (in-process trials, ``resources.max_failures``)."""

    def __init__(self, objectives: Sequence[str], params_of: Callable[[Mapping], Mapping],
                 stopped_at: Callable[[str], int | None], out: TextIO | None = None):
        self.objectives = tuple(objectives)
        self.params_of = params_of  # trial config -> {run-config path: value}
        self.stopped_at = stopped_at  # trial id -> the rung MO-ASHA stopped it at, or None
        self.out = out
        self.started: set[str] = set()  # a second start is Tune's restart: its line was printed

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.started:
            return
        self.started.add(trial.trial_id)
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params_of(trial.config).items())
        self._print(f"trial {trial.trial_id} started: {values}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        from study.tracking import trial_error_text

        lines = trial_error_text(trial).strip().splitlines()
        self._print(f"trial {trial.trial_id} failed, restarting from its last checkpoint: "
                    f"{lines[-1] if lines else 'unknown error'}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        objectives = ", ".join(f"{o}={_fmt(last.get(o, math.nan))}" for o in self.objectives)
        stopped = self.stopped_at(trial.trial_id)
        how = (f"stopped by MO-ASHA at step {stopped}" if stopped is not None
               else f"finished at step {last.get('step', '?')}")
        self._print(f"trial {trial.trial_id} {how}: {objectives}")

    def on_trial_error(self, iteration, trials, trial, **info):
        from study.tracking import trial_error_text

        lines = trial_error_text(trial).strip().splitlines()
        self._print(f"trial {trial.trial_id} failed: {lines[-1] if lines else 'unknown error'}")


class TrialClock(Callback):
    """A Tune callback on the driver: when Tune first started each trial, when it last
    (re)started it (Tune restarts a failed in-process trial), and when it saw the end."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.last_started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        now = time.time()
        self.started.setdefault(trial.trial_id, now)
        self.last_started[trial.trial_id] = now

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()
