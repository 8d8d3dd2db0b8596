"""``python -m analysis.report``: one HTML page (figures, Pareto table, every run's status, the
per-category breakdown) from a study's MLflow store.

    python -m analysis.report --tracking-uri sqlite:///mlflow.db --experiment textcraftor-study \\
        --out reports/default
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

from analysis import plots, readings
from analysis.effects import linear_effects, objectives_at_step
from analysis.runs import (
    OBJECTIVES,
    AnalysisError,
    StudyRuns,
    by_category,
    dial_tables,
    download,
    latest_artifact,
    load_runs,
    prompt_table,
    sweep_summary,
)
from study.objectives import interval_names
from textcraftor.atomic import write_text_atomic

log = logging.getLogger("analysis.report")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="textcraftor-study")
    parser.add_argument("--sweep", help="one sweep of the experiment (default: the latest)")
    parser.add_argument("--out", required=True, help="folder for report.html and figures/")
    return parser.parse_args(argv)


def _newest_sweep(study: StudyRuns) -> str:
    client = study.client()
    started = {s: max(client.get_run(r).info.start_time for r in group["run_id"])
               for s, group in study.runs.groupby("sweep")}
    return max(started, key=started.get)


def best_trial(study: StudyRuns) -> str | None:
    front = study.finished[study.finished["pareto"]]
    if front.empty or "quality" not in front:
        return None
    return str(front.sort_values("quality").iloc[-1]["trial_id"])


def build_report(study: StudyRuns, out: Path) -> Path:
    """Write ``out/report.html`` and ``out/figures/*``; returns the page's path. Reads what the
    sweep and ``python -m study.dials`` logged; runs no model."""
    figures = out / "figures"
    sections: list[str] = []
    runs, steps = study.runs, study.steps
    objectives = [o for o in study.objectives if o in runs.columns]

    def figure(name: str, fig, caption: str) -> None:
        paths = plots.save_figure(fig, figures, name)
        sections.append(f'<figure><img src="figures/{paths["png"].name}" alt="{name}">'
                        f'<figcaption>{html.escape(caption)} '
                        f'(<a href="figures/{paths["svg"].name}">SVG</a>)</figcaption></figure>')

    sections.append("<h2>Runs</h2>" + _table(_status_view(runs)))
    sections.append("<h2>Pareto front</h2>" + _table(_pareto_view(study)))
    if {"quality", "diversity"} <= set(runs.columns):
        figure("quality_vs_diversity", plots.quality_vs_diversity(runs),
               "Quality against diversity: the Pareto front in red, the untuned baseline as a "
               "star.")
    if len(objectives) > 2:
        figure("pairwise_fronts", plots.pairwise_fronts(runs, objectives),
               "Each pair of the study's objectives: the Pareto front over all of them in red, "
               "the baseline as a star, 95 % bootstrap intervals as bars.")
    params = study.hyperparameters(varying=True)
    if objectives and params:
        figure("parallel_objectives", plots.parallel_objectives(runs, objectives, params),
               "Every finished trial and the baseline across hyperparameters and objectives.")
        figure("objectives_vs_params", plots.objectives_vs_params(runs, objectives, params),
               "Each objective against each hyperparameter; the dashed line is the baseline.")
    if not steps.empty:
        figure("training_curves", plots.training_curves(steps, runs),
               "Loss, and the study's quality and diversity on held-out prompts, of the Pareto "
               "trials over training.")
        figure("cost_vs_k", plots.cost_vs_k(runs, steps),
               "Cost of truncated back-propagation: median step time and peak memory against K.")
    summary = sweep_summary(study)
    versus = _versus_view(summary)
    if not versus.empty:
        sections.append("<h2>Against the baseline (paired)</h2><p>Each trial's last evaluation "
                        "minus the baseline's, on the same prompts and seeds: difference "
                        "[95 % bootstrap interval] and verdict.</p>" + _table(versus))
    groups = _repeat_view(summary)
    if not groups.empty:
        sections.append(f"<h2>Repeats</h2><p>Each configuration trained with "
                        f"{summary.get('repeats')} training seeds: mean ± sample standard "
                        f"deviation (N) of each objective.</p>" + _table(groups))
    if summary and (summary.get("overhead") or {}).get("parts"):
        figure("time_breakdown", plots.time_breakdown(summary),
               "Where the sweep's wall-clock time went: the sweep's parts, and each timed "
               "trial's from Tune's start to its end (study.overhead).")
    grids = _sample_grids(study, out / "grids")
    if grids:
        figure("samples", plots.sample_grids(grids),
               "The same held-out prompts and seeds: baseline beside the Pareto trials.")
    prompts = prompt_table(study)
    if not prompts.empty and prompts["category"].notna().any():
        categories = by_category(prompts)
        figure("by_category", plots.category_breakdown(categories),
               "Quality and diversity per prompt category (where collapse happens).")
        sections.append("<h2>By category</h2>" + _table(categories))
    objectives = [o for o in (summary or {}).get("objectives") or OBJECTIVES
                  if o in study.runs]
    at_step, step = objectives_at_step(study, objectives)
    params = [p for p in study.hyperparameters(varying=True) if p in at_step]
    effects = linear_effects(at_step, params, objectives) if params else pd.DataFrame()
    if not effects.empty:
        figure("effects", plots.effect_intervals(effects),
               f"How each searched field moves each objective across its drawn range, the "
               f"others held: least squares on the {int(effects['num_trials'].max())} "
               f"configurations at step {step}, 95 % bootstrap intervals over them.")
        sections.append("<h2>Effects of the searched fields</h2>"
                        + _reading_html(readings.weights_vs_constraint(study))
                        + _table(effects.round(4)))
    dials = dial_tables(study)
    pareto = set(study.finished[study.finished["pareto"]]["trial_id"].astype(str))
    shown = {t: d for t, d in dials.items() if t in pareto} or dials
    if not shown:
        sections.append("<h2>Inference dials</h2><p>not measured for this sweep (its "
                        "<code>dials.alphas</code> was empty): run <code>python -m study.dials "
                        "--tracking-uri URI --experiment NAME</code> (the best trial's), then "
                        "build the report again.</p>")
    elif len(shown) < len(dials):
        sections.append(f"<p>Inference dials: {len(dials)} trial(s) measured them; the Pareto "
                        f"trials' are shown ({len(shown)}).</p>")
    for trial, table in shown.items():
        figure(f"dials_{trial}", plots.dial_curves(table, objectives),
               f"Inference dials of trial {trial}: interpolation weight a × the last M "
               f"sampling steps using E(a), no training (images per point: "
               f"{_n_images(table.points)}).")
        sections.append(f"<h2>Inference dials: trial {html.escape(trial)}</h2>"
                        + _reading_html(readings.dials(table, objectives)) + _table(
            table.points[[c for c in ("alpha", "finetuned_steps", *_with_intervals(objectives),
                                      "num_prompts", "num_seeds") if c in table.points]]))
    title = f"TextCraftor study: {study.experiment}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>tracking URI <code>{html.escape(study.tracking_uri)}</code>; "
            f"{len(study.trials)} trial(s), {len(study.baseline)} baseline run(s)</p>"
            + "\n".join(sections) + "</body></html>")
    return write_text_atomic(out / "report.html", page)


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
         "padding:2px 6px}figure{margin:1.5em 0}img{max-width:100%}")


def _reading_html(text: str) -> str:
    """A reading's Markdown as HTML (markdown-it-py, CommonMark; raw HTML in it is escaped)."""
    return MarkdownIt("commonmark", {"html": False}).render(text)


def _with_intervals(names) -> list[str]:
    """Each objective followed by its 95 % interval ends (``<name>_ci_low``, ``_ci_high``)."""
    return [column for name in names for column in (name, *interval_names(name))]


def _versus_view(summary: dict | None) -> pd.DataFrame:
    """summary.json's paired comparisons: one row per trial, one column per objective."""
    rows = []
    for trial in (summary or {}).get("trials", []):
        versus = trial.get("vs_baseline") or {}
        if versus:
            rows.append({"trial_id": trial["trial_id"], **{
                name: (f"{v['difference']:+.4g} [{v['ci_low']:+.4g}, {v['ci_high']:+.4g}] "
                       f"{v['verdict']}" if "difference" in v else v.get("verdict"))
                for name, v in versus.items()}})
    return pd.DataFrame(rows)


def _repeat_view(summary: dict | None) -> pd.DataFrame:
    """summary.json's repeat groups: one row per configuration."""
    rows = []
    for group in (summary or {}).get("repeat_groups", []):
        row = {"repeat_of": group["repeat_of"], "pareto": group["pareto"], **group["params"]}
        for name, stats in group["objectives"].items():
            spread = f" ± {stats['std']:.3g}" if stats["std"] is not None else ""
            row[name] = (f"{stats['mean']:.4g}{spread} ({stats['n']})"
                         if stats["mean"] is not None else f"- ({stats['n']})")
        rows.append(row)
    return pd.DataFrame(rows)


def _status_view(runs: pd.DataFrame) -> pd.DataFrame:
    columns = ["sweep", "kind", "trial_id", "status", "stopped_at_step",
               *_with_intervals(("quality", "diversity")), "missing", "error"]
    return runs[[c for c in columns if c in runs.columns]]


def _pareto_view(study: StudyRuns) -> pd.DataFrame:
    columns = ["trial_id", "pareto",
               *_with_intervals(o for o in study.objectives if o in study.runs),
               *study.hyperparameters()]
    front = study.finished.sort_values("pareto", ascending=False)
    return pd.concat([study.baseline, front])[[c for c in ["kind", *columns]
                                               if c in study.runs]]


def _sample_grids(study: StudyRuns, into: Path) -> list[tuple[str, Path]]:
    client = study.client()
    chosen = pd.concat([study.baseline, study.finished[study.finished["pareto"]]])
    grids = []
    for _, run in chosen.iterrows():
        path = latest_artifact(client, run["run_id"], "samples")
        if path is not None:
            label = "baseline" if run["kind"] == "baseline" else f"trial {run['trial_id']}"
            grids.append((label, download(client, run["run_id"], path, into / run["run_id"])))
    return grids


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–",
                         escape=True)


def _n_images(table: pd.DataFrame) -> str:
    if {"num_prompts", "num_seeds"} <= set(table.columns):
        prompts, seeds = int(table["num_prompts"].iloc[0]), int(table["num_seeds"].iloc[0])
        return f"N = {prompts * seeds}, {prompts} prompts × {seeds} seeds"
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    try:
        study = load_runs(args.tracking_uri, args.experiment, args.sweep)
        if args.sweep is None and study.runs["sweep"].nunique() > 1:
            study = load_runs(args.tracking_uri, args.experiment, _newest_sweep(study))
        path = build_report(study, Path(args.out))
    except AnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
