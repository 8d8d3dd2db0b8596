"""``python -m textcraftor.bench --json``: the output's shape and arithmetic. Timings are the
benchmark's result, not something to assert; activation memory is."""

from __future__ import annotations

import json
import math

import pytest

ROW_KEYS = {"estimator", "K", "unet_calls", "unet_grad_calls", "checkpointing",
            "vae_checkpointing", "batch", "sample_s", "unet_call_s", "decode_s", "reward_s",
            "train_step_s", "ideal_step_s", "overhead_ratio", "saved_activation_bytes",
            "peak_memory_bytes"}
SWITCHES = {"estimator", "K", "checkpointing", "vae_checkpointing", "peak_memory_bytes"}
T = 4


@pytest.fixture(scope="module")
def bench(run_module, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bench")
    done = run_module("textcraftor.bench", "--json", "--repeats", "1", "--warmup", "1",
                      "--k", "1,T", "--num-steps", str(T), "--px", "64",
                      "--vae-checkpointing", "both", "--device", "cpu", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout, cwd


def test_prints_exactly_one_json_object(bench):
    stdout, _ = bench
    assert stdout.strip().count("\n") == 0
    result = json.loads(stdout)
    assert isinstance(result, dict)
    assert {"preset", "T", "batch", "px", "rows"} <= result.keys()
    assert (result["preset"], result["T"], result["batch"], result["px"]) == ("tiny", T, 2, 64)


def test_rows_cover_each_k_with_and_without_each_checkpointing(bench):
    rows = json.loads(bench[0])["rows"]
    assert sorted((r["K"], r["checkpointing"], r["vae_checkpointing"]) for r in rows) == [
        (k, unet, vae) for k in (1, T) for unet in (False, True) for vae in (False, True)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["batch"] == 2
        assert row["peak_memory_bytes"] is None  # CUDA only
        for key in ROW_KEYS - SWITCHES:
            assert row[key] > 0, key


def ideal_step(row: dict, scored: int = 1) -> float:
    """The docstring's ideal: sample + (calls − T)·unet_call + (n_img − 1)·(decode + reward)
    + (c + r)·grad_calls·unet_call + (c + v)·n_img·decode + c·n_img·reward; c = 1 with a
    frozen UNet, r = 1 with UNet checkpointing, v = 1 with VAE checkpointing."""
    c, r, v = 1, int(row["checkpointing"]), int(row["vae_checkpointing"])
    return (row["sample_s"] + (row["unet_calls"] - T) * row["unet_call_s"]
            + (scored - 1) * (row["decode_s"] + row["reward_s"])
            + (c + r) * row["unet_grad_calls"] * row["unet_call_s"]
            + (c + v) * scored * row["decode_s"] + c * scored * row["reward_s"])


def test_ideal_step_follows_the_docstring_formula(bench):
    """For last_k (calls = T, grad_calls = K, one image): ideal = sample + (c + r)·K·unet_call
    + (c + v)·decode + c·reward; overhead_ratio = train_step / ideal."""
    for row in json.loads(bench[0])["rows"]:
        assert row["estimator"] == "last_k"
        assert (row["unet_calls"], row["unet_grad_calls"]) == (T, row["K"])
        c, r, v = 1, int(row["checkpointing"]), int(row["vae_checkpointing"])
        ideal = (row["sample_s"] + (c + r) * row["K"] * row["unet_call_s"]
                 + (c + v) * row["decode_s"] + c * row["reward_s"])
        assert math.isclose(row["ideal_step_s"], ideal, rel_tol=1e-9)
        assert math.isclose(ideal_step(row), ideal, rel_tol=1e-9)
        assert math.isclose(row["overhead_ratio"], row["train_step_s"] / ideal, rel_tol=1e-9)


def test_a_row_per_estimator_with_its_own_counts_and_ideal(run_module, tmp_path):
    done = run_module("textcraftor.bench", "--json", "--repeats", "2", "--warmup", "1",
                      "--k", "2", "--num-steps", str(T), "--px", "32", "--checkpointing", "on",
                      "--estimators", "last_k,window,draft_lv,drtune,x0_shortcut",
                      "--set", "sample.truncation=drtune", "--set", "sample.drtune_k=2",
                      "--set", "sample.k_max=2",
                      "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["estimator"]: r for r in json.loads(done.stdout)["rows"]}
    assert list(rows) == ["last_k", "window", "draft_lv", "drtune", "x0_shortcut"]
    assert (rows["last_k"]["unet_calls"], rows["last_k"]["unet_grad_calls"]) == (T, 2)
    assert (rows["window"]["unet_calls"], rows["window"]["unet_grad_calls"]) == (T, T)
    # DRaFT-LV (n = 2 by default): the chain plus n re-noisings, n + 1 with gradient
    assert (rows["draft_lv"]["unet_calls"], rows["draft_lv"]["unet_grad_calls"]) == (T + 2, 3)
    # DRTune K = 2 of T = 4, no early stop: its sparse steps plus the last, over its draws
    assert rows["drtune"]["unet_calls"] == T and 2 <= rows["drtune"]["unet_grad_calls"] <= 3
    assert rows["x0_shortcut"]["unet_grad_calls"] == 1
    for name, row in rows.items():
        scored = 3 if name == "draft_lv" else 1
        assert math.isclose(row["ideal_step_s"], ideal_step(row, scored), rel_tol=1e-9)
        assert row["saved_activation_bytes"] > 0


def test_a_policy_gradient_row_counts_its_rollout_and_trained_steps(run_module, tmp_path):
    """DDPO's step: one rollout of T calls without gradient per micro-batch, then per PPO
    epoch ⌊timestep_fraction·T⌋ trained steps, each a guided call with gradient; its ideal is
    the rollout plus (1 + c) calls per trained step, on S·B latents. The chain's rows are
    timed beside it at the config's η; policy gradient's own row once (no switch applies)."""
    done = run_module("textcraftor.bench", "--json", "--repeats", "2", "--warmup", "1",
                      "--k", "2", "--num-steps", str(T), "--px", "32",
                      "--estimators", "policy_gradient,last_k",
                      "--set", "sample.truncation=policy_gradient", "--set", "sample.eta=1",
                      "--set", "policy.samples_per_prompt=2", "--set", "policy.ppo_epochs=2",
                      "--set", "policy.timestep_fraction=0.5", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(r["estimator"], r["checkpointing"]) for r in rows] == [
        ("policy_gradient", False), ("last_k", True), ("last_k", False)]
    row = rows[0]
    trained = 2 * (T // 2)  # 2 epochs × ⌊0.5·T⌋ steps
    assert (row["unet_calls"], row["unet_grad_calls"], row["K"]) == (T + trained, trained, T // 2)
    assert (row["samples_per_prompt"], row["ppo_epochs"], row["eta"]) == (2, 2, 1.0)
    ideal = row["sample_s"] + trained * 2 * row["unet_call_s"]  # c = 1: the UNet is frozen
    assert math.isclose(row["ideal_step_s"], ideal, rel_tol=1e-9)
    assert math.isclose(row["overhead_ratio"], row["train_step_s"] / ideal, rel_tol=1e-9)
    assert row["saved_activation_bytes"] > 0 and row["peak_memory_bytes"] is None
    # last_k under the same config, its policy section back at the defaults
    assert (rows[1]["unet_calls"], rows[1]["unet_grad_calls"]) == (T, 2)


def test_the_policy_gradient_row_samples_at_ddpo_eta_when_the_config_has_none(run_module,
                                                                               tmp_path):
    done = run_module("textcraftor.bench", "--json", "--repeats", "1", "--warmup", "1",
                      "--num-steps", str(T), "--px", "32", "--estimators", "policy_gradient",
                      "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)["rows"]
    assert row["eta"] == 1.0 and row["unet_grad_calls"] == T  # timestep_fraction 1: every step


def test_checkpointed_activations_are_flat_in_k(bench):
    rows = {(r["K"], r["checkpointing"]): r["saved_activation_bytes"]
            for r in json.loads(bench[0])["rows"] if not r["vae_checkpointing"]}
    assert rows[T, True] <= 1.2 * rows[1, True]
    # without checkpointing every extra grad step keeps its activations
    assert rows[T, False] > 1.2 * rows[1, False]
    assert rows[T, False] > rows[T, True]


def test_vae_checkpointing_keeps_fewer_activations(bench):
    """diffusers' AutoencoderKL checkpointing keeps the decoder's block inputs only: less saved
    for backward at every K and UNet setting."""
    rows = {(r["K"], r["checkpointing"], r["vae_checkpointing"]): r["saved_activation_bytes"]
            for r in json.loads(bench[0])["rows"]}
    for k in (1, T):
        for unet in (False, True):
            print(k, unet, rows[k, unet, False], rows[k, unet, True])
            assert rows[k, unet, True] < rows[k, unet, False]


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu", "--dtype", "fp16"], "--dtype fp16 on cpu: fp16 is benchmarked on CUDA"),
    (["--device", "cpu", "--k", "1,30", "--num-steps", "25"],
     "--k 30: K must be in [1, T] and T = sample.num_steps = 25"),
    (["--device", "cpu", "--k", "one"], "--k 'one': an integer or T"),
    (["--device", "cpu", "--rewards", "aesthetic,pickscor"], "--rewards 'pickscor': not one of"),
    (["--device", "cpu", "--px", "-5"], "sample.resolution: must be a positive number"),
    (["--device", "tpu"], "--device 'tpu': not a torch device"),
    (["--device", "cpu", "--estimators", "last_k,direct"], "--estimators 'direct': not one of"),
    (["--device", "cpu", "--rewards", "oracle"], "reward.weights.oracle: the ShapesWorld oracle"),
    (["--device", "cpu", "--preset", "shapes", "--rewards", "oracle"],
     "reward.weights.oracle: has no gradient: it trains with sample.truncation=policy_gradient"),
    # a row of a chain estimator with the oracle: refused for that row, before any model
    (["--device", "cpu", "--preset", "shapes", "--rewards", "oracle", "--set",
      "sample.truncation=policy_gradient", "--set", "sample.eta=1", "--estimators",
      "policy_gradient,drtune"], "(got sample.truncation=drtune;"),
    (["--device", "cpu", "--set", "sample.truncation=policy_gradient", "--estimators",
      "policy_gradient"], "sample.eta"),
    (["--device", "cpu", "--estimators", "drtune", "--num-steps", "4"],
     "sample.drtune_k: must be in [1, num_steps=4]"),
])
def test_bad_options_are_named_before_any_model_is_built(args, message, monkeypatch, capsys):
    from textcraftor import bench

    def expensive(*_, **__):
        raise AssertionError("a model was built before the options were checked")

    monkeypatch.setattr(bench, "build_models", expensive)
    with pytest.raises(SystemExit) as stop:
        bench.main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_cuda_is_named_before_any_model_is_built(monkeypatch, capsys):
    from textcraftor import bench

    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "build_models", lambda *_: pytest.fail("built a model"))
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_leaves_no_files_behind(bench):
    _, cwd = bench
    assert list(cwd.iterdir()) == []
