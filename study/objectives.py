"""The study's objectives, in one place: what each is called, which evaluation metric it reads,
and its direction. Every run a study compares — trials, the untuned baseline, each point of the
interpolation dial — turns its evaluation into objectives with ``study_objectives``; the report
reads the per-prompt tables through ``PER_PROMPT_COLUMNS``. No Ray, no torch: analysis imports it.

- ``quality``: ``eval/quality``, Σ qᵢ·sᵢ·Rᵢ per image with the study's fixed
  ``objectives.quality_weights`` qᵢ (the same for every run compared) and the rewards' loss scales
  sᵢ (``textcraftor.rewards.loss_scales``), averaged over the held-out prompts and seeds. A run's
  own training objective (its weights and λ·CLIP) is ``eval/train_objective``, never "quality".
- ``diversity``: ``eval/diversity``, how varied one prompt's images are across the evaluation
  seeds, averaged over prompts (higher = more varied; mode collapse lowers it): the mean
  pairwise LPIPS distance with its trained trunk, else the distance of the run's CLIP image
  embeddings (the world's CLIP on ShapesWorld), or the oracle's reading of the attributes a
  prompt leaves free (``objectives.diversity``, the run's ``eval.diversity_metric``).
- ``alignment``: ``eval/alignment``, per image how well it shows its prompt, averaged: on
  ShapesWorld the oracle's all-attribute accuracy (1 when every attribute the prompt names is
  read back from the pixels), elsewhere the CLIP score (``objectives.alignment``, the run's
  ``eval.alignment``).

All are maximised. Each has a 95 % bootstrap interval (``<name>_ci_low``, ``<name>_ci_high``,
``study_intervals``) over the held-out prompts, seeds nested inside them
(``textcraftor.bootstrap``; the evaluator's ``eval/<metric>_ci_low``/``_ci_high``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# objective name -> the evaluation metric it is (the run's metrics key)
OBJECTIVE_METRICS: dict[str, str] = {
    "quality": "eval/quality",
    "diversity": "eval/diversity",
    "alignment": "eval/alignment",
}
OBJECTIVES: tuple[str, ...] = tuple(OBJECTIVE_METRICS)
# objective name -> its column in an evaluation's per-prompt table (eval/step_N.json "prompts")
PER_PROMPT_COLUMNS: dict[str, str] = {name: metric.removeprefix("eval/")
                                      for name, metric in OBJECTIVE_METRICS.items()}
DIRECTIONS: dict[str, str] = {name: "max" for name in OBJECTIVES}  # Optuna/Tune mode


def interval_names(name: str) -> tuple[str, str]:
    """The result keys of an objective's interval ends."""
    return f"{name}_ci_low", f"{name}_ci_high"


# every per-evaluation field a run reports for the objectives: values and interval ends
OBJECTIVE_FIELDS: tuple[str, ...] = OBJECTIVES + tuple(
    key for name in OBJECTIVES for key in interval_names(name))


def study_objectives(metrics: Mapping[str, float]) -> dict[str, float]:
    """{objective: value} from one evaluation's metrics ({"eval/quality": ..., ...}); an
    objective whose metric the evaluation did not compute is NaN (e.g. diversity with
    ``eval.diversity`` off), so a missing value is never mistaken for 0."""
    values = {}
    for name, metric in OBJECTIVE_METRICS.items():
        value = metrics.get(metric)
        values[name] = float(value) if isinstance(value, (int, float)) else math.nan
    return values


def study_intervals(metrics: Mapping[str, float]) -> dict[str, float]:
    """{``<objective>_ci_low``/``_ci_high``: value} from one evaluation's metrics (its
    ``eval/<metric>_ci_low``/``_ci_high``); NaN where the evaluation computed none."""
    values = {}
    for name, metric in OBJECTIVE_METRICS.items():
        for key, end in zip(interval_names(name), ("_ci_low", "_ci_high")):
            value = metrics.get(metric + end)
            values[key] = float(value) if isinstance(value, (int, float)) else math.nan
    return values
