"""python -m study.eval_size: the interval width of the base model's objectives per held-out
evaluation size, as one JSON object."""

from __future__ import annotations

import json

import pytest

from study.eval_size import main


def test_prints_each_sizes_objectives_intervals_and_time(capsys):
    assert main(["--prompts", "2", "3", "--seeds", "2", "--seed-offsets", "0", "4"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(r["prompts"], r["eval_seeds"], r["images"]) for r in found["rows"]] == [
        (2, [0, 1], 4), (2, [4, 5], 4), (3, [0, 1], 6), (3, [4, 5], 6)]
    assert all(0 <= r["diversity_attributes"] <= 1 for r in found["rows"])  # ShapesWorld
    for row in found["rows"]:
        for name in found["objectives"]:
            low, high = row[f"{name}_ci"]
            assert low <= row[name] <= high
            assert row[f"{name}_ci_width"] == pytest.approx(high - low)
        assert row["eval_s"] > 0


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1"], "--prompts must be >= 1 and --seeds >= 2"),
    (["--prompts", "0"], "--prompts must be >= 1 and --seeds >= 2"),
    (["--seed-offsets", "-1"], "--seed-offsets must be >= 0, got [-1]")])
def test_bad_sizes_are_named_before_any_model_loads(args, message, capsys):
    with pytest.raises(SystemExit):
        main(args)
    assert message in capsys.readouterr().err
