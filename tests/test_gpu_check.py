"""The prepared device check (``python -m textcraftor.gpu_check``) in its ``--smoke`` mode: the
same code as on the GPU (fp16 loss-scaler run, NaN stop, bench rows through one model build,
the JSON written into ``--out``), on the tiny preset and the CPU, so it cannot rot between the
rare sessions that have a GPU."""

from __future__ import annotations

import json

import pytest

from textcraftor import gpu_check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(run_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    done = run_module("textcraftor.gpu_check", "--smoke", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / gpu_check.OUTPUT_NAME).read_text()), done.stdout, out


def test_every_section_ran_and_the_file_is_the_printed_json(smoke):
    report, stdout, out = smoke
    assert report["errors"] == []
    assert json.loads(stdout) == report
    assert report["smoke"] is True and report["plan"]["device"] == "cpu"
    assert report["install"]["installed"] == []  # everything importable here
    assert [p.name for p in out.iterdir()] == [gpu_check.OUTPUT_NAME]  # no staging files left
    assert report["environment"]["torch"] and report["environment"]["diffusers"]


def test_fp16_overflow_is_skipped_and_the_run_finishes_and_a_nan_loss_stops_at_step_2(smoke):
    fp16 = smoke[0]["fp16"]
    print(json.dumps(fp16))
    assert fp16["steps_done"] == 8
    assert fp16["skipped_step"][0] == 1.0 and 0.0 in fp16["skipped_step"]
    assert fp16["loss_scale"][0] == gpu_check.INIT_SCALE
    assert fp16["loss_scale"][1] == gpu_check.INIT_SCALE / 2  # lowered after the overflow
    assert fp16["finished_with_skips"] is True
    assert "at step 2" in fp16["nan_loss_stopped"] and fp16["nan_loss_names_step_2"] is True


def test_the_plans_rows_each_measured_once(smoke):
    bench = smoke[0]["bench"]
    plan = gpu_check.smoke_plan(0)
    expected = [(plan.batches[0], k, vae) for k in plan.ks for vae in (False, True)]
    expected += [(batch, k, False) for batch in plan.batches[1:] for k in plan.ks]
    assert [(r["batch"], r["K"], r["vae_checkpointing"]) for r in bench["rows"]] == expected
    assert bench["skipped_rows"] == []
    assert all(r["checkpointing"] is True and r["train_step_s"] > 0 for r in bench["rows"])
    assert (bench["preset"], bench["px"], bench["T"]) == (plan.preset, plan.px, plan.num_steps)
    assert bench["mixed_precision"] == bench["reward_dtype"] == "bf16"
    assert bench["models"]["pipeline_build_s"] > 0 and bench["models"]["rewards_build_s"] > 0


def test_rows_past_the_budget_are_listed_as_skipped_not_measured(tmp_path):
    plan = gpu_check.smoke_plan(budget_s=0)
    report = gpu_check.Report(tmp_path / "out" / gpu_check.OUTPUT_NAME, smoke=True)
    bench = gpu_check.bench_rows(plan, "cpu", tmp_path, report)
    assert bench["rows"] == []
    assert bench["skipped_rows"] == [{"batch": 2, "K": 2, "vae_checkpointing": False},
                                     {"batch": 2, "K": 2, "vae_checkpointing": True},
                                     {"batch": 1, "K": 2, "vae_checkpointing": False}]


def test_missing_wheels_are_named_with_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "NEEDED_MODULES", ("textcraftor_no_such_module",))
    with pytest.raises(FileNotFoundError, match=r"--wheels .*: no wheels, and "
                       r"textcraftor_no_such_module are missing; run `make gpu-wheels`"):
        gpu_check.install_wheels(tmp_path, tmp_path / "site")
