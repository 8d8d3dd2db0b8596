"""A sweep resumes under the study configuration it started with.

At its first start the driver writes the resolved study (with the MLflow store it tracks into)
to ``<sweep_dir>/study_config.json``, before Ray starts. ``--resume`` compares the new resolved
study with it and refuses any difference except the few a running sweep can absorb
(``RESUMABLE``); those are recorded in ``study_resumes.jsonl`` and the saved configuration
follows them. Tune restores its trial count and concurrency from its own state, so the
searcher (``StudySearch``) takes both from ``study_config.json`` whenever Tune restores it.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from textcraftor.atomic import append_line_atomic, write_json_atomic
from textcraftor.configio import config_changes

log = logging.getLogger(__name__)
STUDY_CONFIG = "study_config.json"  # the resolved study the sweep runs under
RESUMES = "study_resumes.jsonl"  # one line per resume that changed an allowed field

# field → (rule, what it allows): the only fields --resume may change
RESUMABLE: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "tuner.num_samples": (lambda saved, new: new >= saved, "more trials only"),
    "tuner.max_concurrent": (lambda saved, new: True, "any value"),
    "resources.max_failures": (lambda saved, new: True, "any value"),
}


class ResumeError(ValueError):
    """``--resume`` with a study that differs from the sweep's saved one where it may not."""


def canonical_tracking_uri(uri: str) -> str:
    """The tracking URI with a relative SQLite path made absolute (MLflow reads it from the
    working directory, so the same text in another folder is another store)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).expanduser().resolve())
    return uri


def refused_changes(saved: Mapping[str, Any], new: Mapping[str, Any]
                    ) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """Split the differences of two plain study configs into (allowed, refused) by dotted
    path: {field: (saved, new)}."""
    allowed, refused = {}, {}
    for name, (old, value) in config_changes(saved, new).items():
        rule = RESUMABLE.get(name)
        ok = rule is not None and old is not None and value is not None and rule[0](old, value)
        (allowed if ok else refused)[name] = (old, value)
    return allowed, refused


def check_resume(sweep_dir: Path, study: Mapping[str, Any], resume: bool
                 ) -> dict[str, tuple[Any, Any]]:
    """At a first start, save ``study`` (plain data, its tracking URI resolved) as the sweep's
    configuration; on ``--resume``, compare with the saved one. Returns the allowed changes
    (recorded in ``study_resumes.jsonl``; the saved configuration follows them).

    Raises ResumeError (nothing written) naming every field that differs where it may not,
    with its saved and new values. A sweep folder from before study_config.json existed gets
    one now, with a warning."""
    path = sweep_dir / STUDY_CONFIG
    if not resume or not path.is_file():
        if resume:
            log.warning("%s is missing (a sweep from before it was saved): the changes since "
                        "this sweep started cannot be checked; saving the current study", path)
        write_json_atomic(path, study)
        return {}
    saved = json.loads(path.read_text())
    allowed, refused = refused_changes(saved, study)
    if refused:
        lines = "\n".join(f"  {name}: saved {old!r}, now {new!r}"
                          for name, (old, new) in refused.items())
        rules = "; ".join(f"{name} ({rule})" for name, (_, rule) in RESUMABLE.items())
        raise ResumeError(
            f"--resume: the study differs from the one sweep {sweep_dir.name!r} started with "
            f"({path}):\n{lines}\nA resume may change only {rules}. Resume with the saved "
            "settings, or start another sweep (--set name=...) for a new configuration.")
    if allowed:
        record = {"resumed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "changes": {name: {"saved": old, "new": new}
                              for name, (old, new) in allowed.items()}}
        append_line_atomic(sweep_dir / RESUMES, json.dumps(record))
        write_json_atomic(path, study)
        log.info("resuming with %s", ", ".join(f"{n}: {o} -> {v}"
                                                for n, (o, v) in allowed.items()))
    return allowed


class StudySearch(SearchGenerator):
    """Tune's search generator over the study's searcher, limited to ``max_concurrent`` live
    trials, whose trial count and concurrency follow ``<sweep_dir>/study_config.json`` each
    time Tune restores it: Tune would otherwise keep the values it saved at the first start,
    whatever a resume asked for."""

    def __init__(self, searcher: Searcher, max_concurrent: int, sweep_dir: str | Path):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.sweep_dir = str(sweep_dir)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """A trial MO-ASHA stopped at a rung is PRUNED in Optuna (its objectives at the rung
        are not a finished trial's), with the rung step as user attribute stopped_at_step."""
        from study.moasha import stopped_trials

        stopped = stopped_trials(self.sweep_dir).get(trial_id)
        if stopped is not None and not error:
            optuna_trial = getattr(self.searcher.searcher, "_ot_trials", {}).get(trial_id)
            if optuna_trial is not None:
                optuna_trial.set_user_attr("stopped_at_step", stopped)
            result = None  # OptunaSearch tells a trial without a result as PRUNED
        super().on_trial_complete(trial_id, result, error)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        tuner = json.loads((Path(self.sweep_dir) / STUDY_CONFIG).read_text())["tuner"]
        self._total_samples = int(tuner["num_samples"]) * int(tuner.get("repeats", 1))
        self.searcher.set_max_concurrency(int(tuner["max_concurrent"]))
