"""MLflow → tidy pandas tables: one row per run (trials and the baseline) and a long table of
step metrics. Failed and unfinished runs are kept, with their status, never dropped."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from study.objectives import OBJECTIVES, PER_PROMPT_COLUMNS
from study.summary import pareto_flags
from study.tags import DIALS_ARTIFACT, KIND_TAG, STOPPED_TAG, SWEEP_TAG, TRIAL_TAG
from textcraftor.bootstrap import nested_interval

RUN_KINDS = ("baseline", "trial")
# Hyperparameters are named by their run-config paths (the study's search keys), as logged
WEIGHT_PREFIX = "reward.weights."  # reward.weights.<reward>: wᵢ
CONSTRAINT = "reward.clip_constraint"  # λ
K_PATHS = ("sample.k", "sample.k_max")  # the searched K: last_k's, or the random draw's top


def k_column(frame: pd.DataFrame) -> str | None:
    """The searched K's column of a runs table (``sample.k``, else ``sample.k_max``), if any."""
    return next((c for c in K_PATHS if c in frame and frame[c].notna().any()), None)


class AnalysisError(ValueError):
    """The store cannot answer the question asked; the message says why."""


@dataclass(frozen=True)
class StudyRuns:
    tracking_uri: str
    experiment: str
    runs: pd.DataFrame  # one row per run: sweep, trial_id, kind, status, run_id, params, metrics
    steps: pd.DataFrame  # long: run_id, trial_id, kind, key, step, value
    params: tuple[str, ...] = ()  # the trials' hyperparameters: searched run-config paths
    objectives: tuple[str, ...] = ("quality", "diversity")  # the sweeps' objectives (their
    #                                 objectives.names; with several sweeps, every one's, in order)

    @property
    def trials(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "trial"]

    @property
    def baseline(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "baseline"]

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "FINISHED"]

    def hyperparameters(self, varying: bool = False) -> list[str]:
        """Hyperparameter columns, by run-config path (``reward.weights.aesthetic``,
        ``sample.k``, ...); ``varying``: only those that take more than one value across the
        trials."""
        present = [c for c in self.params if c in self.runs.columns]
        if varying:
            present = [c for c in present if self.trials[c].nunique(dropna=True) > 1]
        return present

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)


def load_runs(tracking_uri: str, experiment: str, sweep: str | None = None,
              objectives: Sequence[str] | None = None) -> StudyRuns:
    """Every trial and baseline run of ``experiment`` (of one ``sweep`` when given). Pareto
    flags are each sweep's, over ``objectives`` or, when None, that sweep's own
    ``objectives.names`` (its parent run's parameter; quality and diversity if it has none)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment {experiment!r} at {tracking_uri}; "
                            f"experiments there: {names or 'none'}")
    condition = f"tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else ""
    every = client.search_runs([found.experiment_id], condition, max_results=50000)
    runs = [r for r in every if r.data.tags.get(KIND_TAG) in RUN_KINDS]
    own = {r.data.tags.get(SWEEP_TAG): sweep_objectives(r.data.params) for r in every
           if r.data.tags.get(KIND_TAG) == "sweep"}
    if not runs:
        where = f"sweep {sweep!r} of " if sweep else ""
        raise AnalysisError(f"{where}experiment {experiment!r} at {tracking_uri} has no trial or "
                            "baseline runs: run `python -m study.sweep` first")
    names = {s: tuple(objectives) if objectives else own.get(s, DEFAULT_OBJECTIVES)
             for s in {r.data.tags.get(SWEEP_TAG) for r in runs}}
    rows = [_run_row(r, names[r.data.tags.get(SWEEP_TAG)]) for r in runs]
    table = pd.DataFrame(rows).sort_values(["sweep", "kind", "trial_id"], ignore_index=True)
    table["pareto"] = _pareto(table, names)
    steps = pd.DataFrame([point for r in runs for point in _history(client, r)],
                         columns=["run_id", "trial_id", "kind", "key", "step", "value"])
    params = sorted({name for r in runs if r.data.tags.get(KIND_TAG) == "trial"
                     for name in r.data.params if not name.startswith("base.")})
    every_objective = tuple(dict.fromkeys(o for s in sorted(names) for o in names[s]))
    return StudyRuns(tracking_uri, experiment, table, steps, tuple(params), every_objective)


DEFAULT_OBJECTIVES = ("quality", "diversity")  # a sweep that logged no objectives.names


def sweep_objectives(params: dict[str, str]) -> tuple[str, ...]:
    """A sweep's objectives from its parent run's parameters (``objectives.names``, logged as
    a list's text, e.g. "['quality', 'diversity']")."""
    import ast

    text = params.get("objectives.names")
    try:
        names = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)) or not all(n in OBJECTIVES for n in names):
        return DEFAULT_OBJECTIVES
    return tuple(names)


def _run_row(run, objectives: Sequence[str]) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "sweep": tags.get(SWEEP_TAG),
        "trial_id": tags.get(TRIAL_TAG),
        "kind": tags.get(KIND_TAG),
        # a trial MO-ASHA stopped at a rung: finished, not failed, never on the front
        "status": ("STOPPED" if STOPPED_TAG in tags and run.info.status == "FINISHED"
                   else run.info.status),
        "stopped_at_step": _number(tags[STOPPED_TAG]) if STOPPED_TAG in tags else None,
        "run_id": run.info.run_id,
        "error": _last_line(tags.get("error")),
        "checkpoint": tags.get("checkpoint"),
        "run_dir": tags.get("run_dir"),
        "model": params.get("base.model.source"),
        # the gradient estimator: searched (sample.truncation, below) or the base's
        "estimator": params.get("sample.truncation", params.get("base.sample.truncation")),
        "missing": ",".join(o for o in objectives if o not in metrics),
    }
    row.update(metrics)
    for name, value in params.items():  # after the metrics: a parameter is never overwritten
        if not name.startswith("base."):
            row[name] = _number(value)
    return row


def _pareto(table: pd.DataFrame, objectives: dict[str, Sequence[str]]) -> list[bool]:
    """Pareto flags among each sweep's finished trials with every one of its objectives."""
    flags = pd.Series(False, index=table.index)
    for sweep, group in table.groupby("sweep"):
        names = objectives[sweep]
        eligible = group[(group["kind"] == "trial") & (group["status"] == "FINISHED")]
        points = [[row.get(o, math.nan) for o in names] for _, row in eligible.iterrows()]
        for index, pareto in zip(eligible.index, pareto_flags(points)):
            flags[index] = pareto
    return flags.tolist()


def _history(client: MlflowClient, run) -> list[tuple]:
    tags = run.data.tags
    return [(run.info.run_id, tags.get(TRIAL_TAG), tags.get(KIND_TAG), key, m.step, m.value)
            for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]


def _number(value: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _last_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


# --- artifacts ------------------------------------------------------------------------------


def latest_artifact(client: MlflowClient, run_id: str, folder: str) -> str | None:
    """The last ``folder/step_N.*`` artifact of a run (by step), or None."""
    names = sorted(a.path for a in client.list_artifacts(run_id, folder) if not a.is_dir)
    return names[-1] if names else None


def latest_evaluation(client: MlflowClient, run_id: str) -> dict | None:
    """The latest evaluation table (``eval/step_N.json``) a run logged to MLflow, or None."""
    path = latest_artifact(client, run_id, "eval")
    return json.loads(download(client, run_id, path).read_text()) if path else None


def download(client: MlflowClient, run_id: str, path: str, into: Path | None = None) -> Path:
    into = into or Path(tempfile.mkdtemp(prefix="textcraftor-analysis-"))
    return Path(client.download_artifacts(run_id, path, str(into)))


def sweep_summaries(study: StudyRuns) -> dict[str, dict]:
    """{sweep name: its ``summary.json``} for every sweep among the study's runs that logged one
    to its parent run (the newest summary when a sweep logged several), newest sweep first."""
    client = study.client()
    experiment = client.get_experiment_by_name(study.experiment)
    names = set(study.runs["sweep"].dropna())
    found: dict[str, dict] = {}
    for parent in client.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"]):
        name = parent.data.tags.get(SWEEP_TAG)
        if name not in names or name in found:
            continue
        if "summary.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]:
            found[name] = json.loads(download(client, parent.info.run_id,
                                              "summary.json").read_text())
    return found


def sweep_summary(study: StudyRuns) -> dict | None:
    """The ``summary.json`` the newest sweep among the study's runs logged (trials with their
    time parts, the overhead, the front), or None when none was logged."""
    return next(iter(sweep_summaries(study).values()), None)


@dataclass(frozen=True)
class DialTable:
    """One trial's inference dials as logged (``study.dial_table``)."""

    trial_id: str
    points: pd.DataFrame  # one row per setting: alpha, finetuned_steps, each objective and its
    #                       interval ends (<name>_ci_low/_ci_high), num_prompts, num_seeds
    best: dict | None  # the best setting (study.dial_table.best_setting), None when none qualified
    num_steps: int  # T, the trial's sampling steps (a = 1, M = T: the trial's own point)
    wall_s: float | None  # seconds the trial spent measuring them


def dial_tables(study: StudyRuns) -> dict[str, DialTable]:
    """{trial_id: its dials} of every trial run that logged them (``dials/dials.json``: at the
    end of its training, or ``python -m study.dials``)."""
    client = study.client()
    tables = {}
    folder = Path(DIALS_ARTIFACT).parent.as_posix()
    for _, run in study.trials.iterrows():
        if DIALS_ARTIFACT not in [a.path for a in client.list_artifacts(run["run_id"], folder)]:
            continue
        logged = json.loads(download(client, run["run_id"], DIALS_ARTIFACT).read_text())
        points = pd.DataFrame([{k: v for k, v in p.items()
                                if k not in ("table", "values", "prompts", "seeds")}
                               for p in logged["points"]])
        tables[str(run["trial_id"])] = DialTable(str(run["trial_id"]), points,
                                                 logged.get("best"), int(logged["num_steps"]),
                                                 logged.get("wall_s"))
    return tables


def prompt_table(study: StudyRuns, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-prompt evaluation rows (category, rewards, quality, diversity) of each run's latest
    evaluation: run_id, trial_id, kind, step, prompt, category, <metrics>. Runs without an
    evaluation table are absent."""
    client = study.client()
    chosen = study.runs if run_ids is None else study.runs[study.runs["run_id"].isin(run_ids)]
    frames = []
    for _, run in chosen.iterrows():
        data = latest_evaluation(client, run["run_id"])
        if data is None:
            continue
        frame = pd.DataFrame(data["prompts"])
        frame.insert(0, "step", data["step"])
        for column in ("kind", "trial_id", "run_id"):
            frame.insert(0, column, run[column])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def by_category(prompts: pd.DataFrame) -> pd.DataFrame:
    """Per run and prompt category (uncategorised prompts: "(none)"): each study objective's mean
    over the category's prompts, under the objective's name (quality, diversity), its 95 %
    bootstrap interval over those prompts (``<name>_ci_low``/``_high``, textcraftor.bootstrap),
    and ``num_prompts`` (N). Quality is the study's (fixed weights), so a run's category means
    weighted by num_prompts give its quality objective."""
    if prompts.empty:
        raise AnalysisError("no per-prompt evaluation tables in these runs")
    renamed = {column: name for name, column in PER_PROMPT_COLUMNS.items()
               if column in prompts.columns}
    frame = prompts.assign(category=prompts["category"].fillna("(none)")).rename(columns=renamed)
    groups = frame.groupby(["kind", "trial_id", "category"])
    table = groups[list(renamed.values())].mean()
    for name in renamed.values():  # each mean's 95 % bootstrap interval over the prompts
        ends = groups[name].apply(lambda v: nested_interval(v.to_numpy(dtype=float)))
        table[f"{name}_ci_low"] = [i.low for i in ends]
        table[f"{name}_ci_high"] = [i.high for i in ends]
    table["num_prompts"] = groups.size()
    return table.reset_index().sort_values(["category", "kind", "trial_id"], ignore_index=True)
