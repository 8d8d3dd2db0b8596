"""study.paired and the Pareto table: each trial against the baseline on the same prompts and
seeds, with intervals and verdicts."""

from __future__ import annotations

import json

import numpy as np

from study.paired import last_evaluation, objective_values, paired_to_baseline
from study.summary import pareto_table


def table(quality, diversity, prompts=None, seeds=(0, 1), step=60):
    prompts = prompts or [f"prompt {i}" for i in range(len(quality))]
    return {"step": step, "seeds": list(seeds),
            "prompts": [{"prompt": p, "category": None, "quality": float(np.mean(q)),
                         "diversity": d} for p, q, d in zip(prompts, quality, diversity)],
            "per_seed": {"quality": [list(map(float, q)) for q in quality]}}


def test_quality_is_paired_per_image_and_diversity_per_prompt():
    rng = np.random.default_rng(0)
    base_quality = rng.normal(60, 3, size=(12, 2))  # prompts differ by far more than the gain
    base_diversity = rng.uniform(0.05, 0.1, size=12)
    baseline = table(base_quality, base_diversity)
    trial = table(base_quality + 1.0 + rng.normal(0, 0.1, (12, 2)),
                  base_diversity - 0.03 + rng.normal(0, 0.002, 12))
    found = paired_to_baseline(trial, baseline, ["quality", "diversity"])
    assert found["quality"]["verdict"] == "better"
    assert found["quality"]["ci_low"] < 1.0 < found["quality"]["ci_high"]
    assert (found["quality"]["num_prompts"], found["quality"]["num_seeds"]) == (12, 2)
    assert found["diversity"]["verdict"] == "worse"
    assert found["diversity"]["num_seeds"] == 1  # per prompt: seeds are inside the value
    same = paired_to_baseline(baseline, baseline, ["quality", "diversity"])
    assert {v["verdict"] for v in same.values()} == {"indistinguishable"}


def test_unpaired_or_missing_values_are_unknown_not_compared():
    base = table([[1.0, 2.0], [3.0, 4.0]], [0.1, 0.2])
    other_prompts = table([[1.0, 2.0], [3.0, 4.0]], [0.1, 0.2], prompts=["x", "y"])
    other_seeds = table([[1.0, 2.0], [3.0, 4.0]], [0.1, 0.2], seeds=(5, 6))
    for run in (other_prompts, other_seeds):
        found = paired_to_baseline(run, base, ["quality"])
        assert found == {"quality": {"verdict": "unknown",
                                     "reason": "other prompts or seeds than the baseline's"}}
    no_diversity = {**base, "prompts": [{"prompt": r["prompt"]} for r in base["prompts"]]}
    assert paired_to_baseline(no_diversity, base, ["diversity"])["diversity"]["verdict"] == \
        "unknown"
    # a table from before per-seed values falls back to the per-prompt means
    old = {**base, "per_seed": {}}
    assert objective_values(old, "quality") == [1.5, 3.5]


def test_last_evaluation_is_the_highest_step(tmp_path):
    assert last_evaluation(tmp_path) is None
    (tmp_path / "eval").mkdir()
    for step in (0, 30, 60):
        (tmp_path / "eval" / f"step_{step:07d}.json").write_text(json.dumps({"step": step}))
    assert last_evaluation(tmp_path) == {"step": 60}


def test_the_pareto_table_shows_the_baseline_intervals_and_verdicts():
    summary = {
        "objectives": ["quality", "diversity"],
        "baseline": {"status": "FINISHED", "objectives": {"quality": 58.97, "diversity": 0.0866},
                     "intervals": {"quality": [57.1, 60.8], "diversity": [0.07, 0.1]}},
        "trials": [{"trial_id": "a", "status": "TERMINATED", "pareto": True,
                    "params": {"sample.k": 5},
                    "objectives": {"quality": 63.5, "diversity": 0.0876},
                    "intervals": {"quality": [62.0, 65.0], "diversity": [None, None]},
                    "vs_baseline": {
                        "quality": {"verdict": "better", "num_prompts": 8, "num_seeds": 2},
                        "diversity": {"verdict": "indistinguishable", "num_prompts": 8,
                                      "num_seeds": 1}}},
                   {"trial_id": "b", "status": "ERROR", "pareto": False, "params": {},
                    "objectives": {"quality": None, "diversity": None}}]}
    lines = pareto_table(summary).splitlines()
    assert lines[1].split()[:3] == ["baseline", "FINISHED", "58.97"]
    assert "[57.1, 60.8]" in lines[1] and "[0.07, 0.1]" in lines[1]
    assert lines[2].startswith("*  a") and "63.5 [62, 65] +" in lines[2]
    assert "0.0876 =" in lines[2]  # no interval: the value and the verdict
    assert lines[3].split()[:3] == ["b", "ERROR", "-"]
    assert lines[-1].startswith("[95 % bootstrap interval over 8 prompts x 2 seeds]")
