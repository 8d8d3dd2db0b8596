"""python -m study.eval_size: the interval width of the base model's objectives per held-out
evaluation size, as one JSON object."""

from __future__ import annotations

import json

import pytest

from study.eval_size import main


def test_prints_each_sizes_objectives_intervals_and_time(capsys):
    assert main(["--prompts", "2", "3", "--seeds", "2"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(r["prompts"], r["seeds"], r["images"]) for r in found["rows"]] == [
        (2, 2, 4), (3, 2, 6)]
    for row in found["rows"]:
        for name in found["objectives"]:
            low, high = row[f"{name}_ci"]
            assert low <= row[name] <= high
            assert row[f"{name}_ci_width"] == pytest.approx(high - low)
        assert row["eval_s"] > 0


@pytest.mark.parametrize("args", [["--seeds", "1"], ["--prompts", "0"]])
def test_bad_sizes_are_named_before_any_model_loads(args, capsys):
    with pytest.raises(SystemExit):
        main(args)
    assert "--prompts must be >= 1 and --seeds >= 2" in capsys.readouterr().err
