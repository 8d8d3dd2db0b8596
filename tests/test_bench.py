"""``python -m textcraftor.bench --json``: the output's shape and arithmetic. Timings are the
benchmark's result, not something to assert; activation memory is."""

from __future__ import annotations

import json
import math

import pytest

ROW_KEYS = {"K", "checkpointing", "sample_s", "unet_call_s", "decode_s", "reward_s",
            "train_step_s", "ideal_step_s", "overhead_ratio", "saved_activation_bytes"}
T = 4


@pytest.fixture(scope="module")
def bench(run_module, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bench")
    done = run_module("textcraftor.bench", "--json", "--repeats", "1", "--warmup", "1",
                      "--ks", "1,T", "--set", f"sample.num_steps={T}",
                      "--set", "sample.resolution=64", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout, cwd


def test_prints_exactly_one_json_object(bench):
    stdout, _ = bench
    assert stdout.strip().count("\n") == 0
    result = json.loads(stdout)
    assert isinstance(result, dict)
    assert {"preset", "T", "batch", "px", "rows"} <= result.keys()
    assert (result["preset"], result["T"], result["batch"], result["px"]) == ("tiny", T, 2, 64)


def test_rows_cover_each_k_with_and_without_checkpointing(bench):
    rows = json.loads(bench[0])["rows"]
    assert sorted((r["K"], r["checkpointing"]) for r in rows) == [
        (1, False), (1, True), (T, False), (T, True)]
    for row in rows:
        assert set(row) == ROW_KEYS
        for key in ROW_KEYS - {"K", "checkpointing"}:
            assert row[key] > 0, key


def test_ideal_step_follows_the_docstring_formula(bench):
    """ideal = sample + (c + r)·K·unet_call + c·(decode + reward); c = 1 with a frozen UNet,
    r = 1 with checkpointing; overhead_ratio = train_step / ideal."""
    for row in json.loads(bench[0])["rows"]:
        c, r = 1, int(row["checkpointing"])
        ideal = (row["sample_s"] + (c + r) * row["K"] * row["unet_call_s"]
                 + c * (row["decode_s"] + row["reward_s"]))
        assert math.isclose(row["ideal_step_s"], ideal, rel_tol=1e-9)
        assert math.isclose(row["overhead_ratio"], row["train_step_s"] / ideal, rel_tol=1e-9)


def test_checkpointed_activations_are_flat_in_k(bench):
    rows = {(r["K"], r["checkpointing"]): r["saved_activation_bytes"]
            for r in json.loads(bench[0])["rows"]}
    assert rows[T, True] <= 1.2 * rows[1, True]
    # without checkpointing every extra grad step keeps its activations
    assert rows[T, False] > 1.2 * rows[1, False]
    assert rows[T, False] > rows[T, True]


def test_leaves_no_files_behind(bench):
    _, cwd = bench
    assert list(cwd.iterdir()) == []
