"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune ``TrialScheduler``.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) stops a
trial at a rung (a training step) unless it is in the best 1/η of the trials that reached that
rung so far; MO-ASHA (Schmucker et al., "Multi-objective Asynchronous Successive Halving",
2021) ranks the trials at a rung by non-dominated sorting over several objectives instead of
one metric. Here ties within a front are broken by crowding distance, as NSGA-II does (Deb et
al. 2002): boundary points first, then the points in the sparsest neighbourhoods.

A trial's objectives reach the scheduler with each evaluation (``event == "eval"`` at ``step``);
at a rung step the trial is recorded and continues if its position among everyone recorded at
that rung, itself included, is below ``max(1, n // η)``, as Ray's single-objective ASHA keeps
the trials at or above the (1 − 1/η) quantile.

The trial stops itself: Tune never kills it. Killing a function trial that runs a Ray Train V2
``TorchTrainer`` leaves its worker group's resources taken (ray-project/ray#54305: measured
here, the next trial waited 300 s for workers and timed out). So the scheduler answers Tune
CONTINUE and posts its decision on a named actor (``RungDecisions``); the trial's workers wait
for it after their evaluation at a rung and, told to stop, end after that step's checkpoint as
a finished run (``TextCraftor.request_stop``). A stopped trial is TERMINATED in Tune (never an
error), PRUNED in Optuna, tagged in MLflow and marked in ``summary.json``; the decisions live in
``<sweep>/moasha.json`` (written atomically after each), so a resumed sweep keeps them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import moocore
import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from textcraftor.atomic import write_json_atomic

STATE_FILE = "moasha.json"  # in the sweep folder: every rung's records and every stop
log = logging.getLogger("study.moasha")


def board_name(sweep_name: str) -> str:
    """The named actor on which a sweep's rung decisions are posted."""
    return f"textcraftor-moasha-{sweep_name}"


class RungDecisions:
    """A Ray actor: the scheduler posts CONTINUE or STOP per (trial, rung step); the trial's
    workers read it."""

    def __init__(self) -> None:
        self.actions: dict[str, str] = {}

    def post(self, trial_id: str, step: int, action: str) -> None:
        self.actions[f"{trial_id}@{step}"] = action

    def get(self, trial_id: str, step: int) -> str | None:
        return self.actions.get(f"{trial_id}@{step}")


def wait_for_decision(name: str, trial_id: str, step: int, timeout_s: float = 900.0,
                      poll_s: float = 0.25) -> str:
    """The scheduler's decision for ``trial_id`` at rung ``step``, read from the board ``name``
    (called by a trial's workers after reporting that evaluation). CONTINUE, with a warning,
    when none comes within ``timeout_s`` (never a trial stuck for a scheduler that is gone)."""
    import time

    import ray

    board = ray.get_actor(name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        action = ray.get(board.get.remote(trial_id, step))
        if action is not None:
            return action
        time.sleep(poll_s)
    log.warning("trial %s: no MO-ASHA decision at rung %d within %.0f s; it continues",
                trial_id, step, timeout_s)
    return TrialScheduler.CONTINUE


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point of one front, [N, M] → [N]: per objective,
    the gap between a point's two neighbours in that objective's order, over the objective's
    range, summed; the extremes of every objective get +inf (Deb et al. 2002, §III-B)."""
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        values = points[order, j]
        span = values[-1] - values[0]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def rank_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``points`` (all objectives maximised) from best to worst: by non-dominated
    front (``moocore.pareto_rank``), then by crowding distance within the front (larger
    first), then by input order. A point with a non-finite objective comes last."""
    values = np.asarray(points, dtype=float).reshape(len(points), -1)
    finite = np.isfinite(values).all(axis=1)
    order: list[int] = []
    if finite.any():
        kept = np.flatnonzero(finite)
        fronts = moocore.pareto_rank(values[kept], maximise=True)
        for front in np.unique(fronts):
            members = kept[fronts == front]
            crowding = crowding_distance(values[members])
            order.extend(int(members[i]) for i in sorted(range(len(members)),
                                                           key=lambda i: (-crowding[i], i)))
    order.extend(int(i) for i in np.flatnonzero(~finite))
    return order


def keeps(position: int, recorded: int, reduction_factor: float) -> bool:
    """Whether the trial at ``position`` (0 = best) among ``recorded`` trials at a rung goes on:
    the best ``max(1, recorded // η)``."""
    return position < max(1, int(recorded // reduction_factor))


def stopped_trials(sweep_dir: str | Path) -> dict[str, int]:
    """{trial_id: the rung step it was stopped at} of a sweep ({} without MO-ASHA)."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        return {}
    return {trial: int(step) for trial, step in json.loads(path.read_text())["stopped"].items()}


class MultiObjectiveASHA(FIFOScheduler):
    """MO-ASHA over ``objectives`` (all maximised) at ``rungs`` (training steps at which the
    trials evaluate), keeping 1/``reduction_factor`` at each. The state is kept in
    ``<sweep_dir>/moasha.json`` and read back on the first decision after a restart."""

    def __init__(self, objectives: Sequence[str], rungs: Sequence[int],
                 reduction_factor: float, sweep_dir: str | Path, board: str | None = None):
        super().__init__()
        self.objectives = tuple(objectives)
        self.rungs = tuple(int(r) for r in rungs)
        self.reduction_factor = float(reduction_factor)
        self.sweep_dir = str(sweep_dir)
        self.board = board  # RungDecisions actor name (None: decide only, e.g. in unit tests)
        self._records: dict[int, dict[str, list[float]]] | None = None  # rung → trial → point
        self._stopped: dict[str, int] = {}
        self._board_handle = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the scheduler: no actor handle
        return {**self.__dict__, "_board_handle": None}

    def _post(self, trial_id: str, step: int, action: str) -> None:
        if self.board is None:
            return
        if self._board_handle is None:
            import ray

            self._board_handle = ray.remote(num_cpus=0)(RungDecisions).options(
                name=self.board, get_if_exists=True).remote()
        self._board_handle.post.remote(trial_id, step, action)

    def _state(self) -> dict[int, dict[str, list[float]]]:
        if self._records is None:
            self._records = {r: {} for r in self.rungs}
            path = Path(self.sweep_dir) / STATE_FILE
            if path.is_file():
                saved = json.loads(path.read_text())
                for rung, trials in saved["records"].items():
                    self._records.setdefault(int(rung), {}).update(trials)
                self._stopped = {t: int(s) for t, s in saved["stopped"].items()}
        return self._records

    def _save(self) -> None:
        write_json_atomic(Path(self.sweep_dir) / STATE_FILE, {
            "objectives": list(self.objectives), "rungs": list(self.rungs),
            "reduction_factor": self.reduction_factor,
            "records": {str(r): trials for r, trials in self._state().items()},
            "stopped": self._stopped})

    def decide(self, trial_id: str, step: int, point: Sequence[float]) -> str:
        """Record ``trial_id``'s objectives at rung ``step`` and return CONTINUE or STOP (a
        trial recorded at that rung already, e.g. a restarted worker group, continues)."""
        recorded = self._state()[step]
        if trial_id in recorded:  # decided before (a restarted worker group, a resumed sweep)
            action = (TrialScheduler.STOP if self._stopped.get(trial_id) == step
                      else TrialScheduler.CONTINUE)
            self._post(trial_id, step, action)
            return action
        recorded[trial_id] = [float(v) for v in point]
        ids = list(recorded)
        position = rank_order([recorded[t] for t in ids]).index(ids.index(trial_id))
        action = (TrialScheduler.CONTINUE if keeps(position, len(ids), self.reduction_factor)
                  else TrialScheduler.STOP)
        if action == TrialScheduler.STOP:
            self._stopped[trial_id] = step
        self._save()
        self._post(trial_id, step, action)
        log.info("trial %s at rung %d: position %d of %d -> %s", trial_id, step, position + 1,
                 len(ids), "continues" if action == TrialScheduler.CONTINUE else "stopped")
        return action

    def on_trial_result(self, tune_controller, trial, result: Mapping[str, Any]) -> str:
        """Decide at a rung and post the decision for the trial; Tune is always told CONTINUE
        (the trial stops itself, see the module's docstring)."""
        step = result.get("step")
        if result.get("event") == "eval" and step in self.rungs:
            point = [result.get(o, math.nan) for o in self.objectives]
            self.decide(trial.trial_id, int(step), [math.nan if v is None else v for v in point])
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        self._state()
        return (f"MO-ASHA over {', '.join(self.objectives)}: rungs {list(self.rungs)}, "
                f"η = {self.reduction_factor:g}, {len(self._stopped)} stopped")
