"""The prepared device check (issue 18): the paper's setting on one GPU, in one call.

On the GPU machine (python3 with torch, transformers, peft; no network, no diffusers/open_clip)::

    python3 -m textcraftor.gpu_check --wheels .gpu-wheels          # JSON into $OUT (or --out)

installs the carried wheels (``make gpu-wheels`` downloads them here) into a temporary folder,
then measures, within ``--budget-s`` seconds:

1. fp16: a tiny run whose loss scaler starts at 2^18 (overflowing fp16 gradients) skips its
   first steps, lowers the scale and finishes; a NaN loss injected at step 2 still stops the
   run naming step 2 (``NonFiniteLossError``).
2. ``sd15-random`` + the ``sd15-arch`` rewards (aesthetic, PickScore, HPSv2, the CLIP constraint)
   built on the device, bf16 autocast and bf16 reward towers, 512 px, T = 25: bench rows
   (``textcraftor.bench``) at batch 4 for K ∈ {5, 1, 25} with VAE-decoder checkpointing off and
   on, then batch 1 with it off; UNet checkpointing on. Rows past the budget are listed as
   skipped, never half-measured.

The JSON is rewritten (atomically) after every section, so a killed call still leaves what it
measured. ``--smoke`` runs the same code on the ``tiny`` preset and its tiny rewards at 64 px,
T = 4 on the CPU (the test suite runs it). Exit status 0 when every section ran, 1 otherwise
(each failure's traceback is in ``errors``).

Only the standard library (and ``textcraftor.atomic``, which needs nothing else) is imported at
module level: the wheels must be installed first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textcraftor.atomic import write_json_atomic  # the standard library's only

# What the GPU machine lacks, pinned, as ``pip download`` takes them (``make gpu-wheels``; 16 MiB).
# Found by importing the check in a Python 3.12 venv holding only that machine's packages (torch
# 2.11, transformers 5.17, peft, safetensors, numpy, pandas, matplotlib): diffusers checks for
# requests at import, open_clip imports ftfy and torchvision. timm is optional to open_clip.
GPU_WHEELS = (
    "diffusers==0.42.1",
    "open_clip_torch==3.3.0",
    "torchvision==0.26.0",  # PyPI's build for torch 2.11 (CUDA 13, cp312)
    "ftfy==6.3.1",
    "wcwidth==0.9.4",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "charset_normalizer==3.5.3",  # requests warns at import without it
)
GPU_PYTHON = "3.12"  # the GPU machine's python3
# the import names the check needs that the wheels provide
NEEDED_MODULES = ("diffusers", "open_clip", "torchvision", "ftfy", "requests")
OUTPUT_NAME = "gpu-check.json"


@dataclass(frozen=True)
class CheckPlan:
    """What the check runs: the paper's setting, or the smoke mode's tiny one."""

    preset: str  # model.source
    reward_preset: str  # reward.preset
    rewards: str  # --rewards of textcraftor.bench
    dtype: str  # bench --dtype (autocast and reward towers)
    px: int  # image side
    num_steps: int  # T
    ks: tuple[int, ...]  # K values, most informative first
    batches: tuple[int, ...]  # batch sizes; the first gets the VAE-checkpointing on rows too
    repeats: int  # timed repeats per row (median)
    warmup: int  # untimed calls per row first
    budget_s: float  # rows starting after this many seconds are skipped


def full_plan(budget_s: float) -> CheckPlan:
    return CheckPlan("sd15-random", "sd15-arch", "aesthetic,pickscore,hpsv2,clip", "bf16", 512,
                     25, (5, 1, 25), (4, 1), repeats=3, warmup=1, budget_s=budget_s)


def smoke_plan(budget_s: float) -> CheckPlan:
    return CheckPlan("tiny", "auto", "aesthetic,clip", "bf16", 32, 4, (2,), (2, 1),
                     repeats=1, warmup=1, budget_s=budget_s)


# --- wheels ----------------------------------------------------------------------------------


def missing_modules() -> list[str]:
    return [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]


def install_wheels(wheels: Path, target: Path) -> dict[str, Any]:
    """Install every wheel in ``wheels`` into ``target`` (no index, no dependencies) when a
    needed module is missing, and put ``target`` first on ``sys.path``. Raises
    FileNotFoundError naming the folder and how to make it when it holds no wheels."""
    import torch  # the machine's own: say which build before anything can fail on it

    found = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    missing = missing_modules()
    if not missing:
        return {**found, "installed": [], "note": "every needed module already importable"}
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"--wheels {wheels}: no wheels, and {', '.join(missing)} are "
                                f"missing; run `make gpu-wheels` on the CPU machine and carry "
                                f"the folder")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--target", str(target), *map(str, files)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    still = missing_modules()
    if still:
        raise ModuleNotFoundError(f"after installing {len(files)} wheels from {wheels}, still "
                                  f"missing: {', '.join(still)}")
    return {**found, "installed": [f.name for f in files],
            "install_s": time.perf_counter() - started}


def prepare_wheels(folder: Path) -> None:
    """Download ``GPU_WHEELS`` for the GPU machine's Python into ``folder`` (CPU machine,
    network to the package index needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    abi = "cp" + GPU_PYTHON.replace(".", "")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", GPU_PYTHON, "--abi", abi,
                    "--abi", "none", "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                    "--platform", "any", "-d", str(folder), *GPU_WHEELS], check=True)
    for path in sorted(folder.glob("*.whl")):
        print(f"{path.stat().st_size / 2**20:7.2f} MiB  {path.name}")


# --- the sections ----------------------------------------------------------------------------


class Report:
    """The check's JSON, rewritten atomically into ``path`` after every section."""

    def __init__(self, path: Path, smoke: bool):
        self.path = path
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {"check": "textcraftor.gpu_check", "smoke": smoke,
                                     "errors": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one section; its result (or its error) goes into the report either way."""
        try:
            result = fn()
            self.data[name] = result
            return result
        except Exception as error:  # noqa: BLE001 - one failed section must not hide the rest
            self.data["errors"].append({"section": name, "error": repr(error),
                                        "traceback": traceback.format_exc()[-4000:]})
            return None
        finally:
            self.write()

    def write(self) -> None:
        self.data["wall_s"] = self.elapsed()
        write_json_atomic(self.path, self.data, indent=1)


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, total_memory_bytes=props.total_memory,
                    cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    for name in ("transformers", "diffusers", "open_clip", "peft", "torchvision"):
        module = sys.modules.get(name) or __import__(name)
        info[name] = getattr(module, "__version__", "?")
    return info


# The fp16 run's first loss scale: 4 × GradScaler's default 2^16, which already overflows this
# run's fp16 gradients on the CPU (tests/test_trainer.py: 2^15 trains); fp16's largest value is
# 65504. So about three steps are skipped, then it trains.
INIT_SCALE = 2.0**18


def fp16_skip(device: str, cache: Path) -> dict[str, Any]:
    """A tiny fp16 run of 8 steps (the setting of tests/test_trainer.py) whose real
    ``torch.amp.GradScaler`` starts at ``INIT_SCALE``: the overflowing steps are skipped, the
    scale lowered, the run finishes; then a NaN loss at step 2 stops a run naming step 2."""
    import torch

    from textcraftor.config import load_run_config
    from textcraftor.events import NonFiniteLossError
    from textcraftor.trainer import TextCraftor

    common = ["model.source=tiny", "model.mixed_precision=fp16", "sample.resolution=32",
              "sample.num_steps=4", "sample.k=2", "train.batch_size=2", "train.lr=1e-3",
              "reward.weights={aesthetic: 1}", "reward.clip_constraint=0",
              "data.heldout_count=2", "data.eval_seeds=[0]", "train.eval_at_start=false",
              "train.eval_every=0", "train.sample_grid=false",
              "eval.diversity=false", "eval.distribution=false"]  # LPIPS/KID: not needed here
    steps_total = 8
    config = load_run_config(None, [*common, f"train.steps={steps_total}",
                                    f"output_dir={cache}/fp16-skip"])
    trainer = TextCraftor(config, device=device, show_progress=False)
    trainer.scaler = torch.amp.GradScaler(trainer.device.type, init_scale=INIT_SCALE)
    started = time.perf_counter()
    trainer.fit()
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if m["kind"] == "step"]
    result: dict[str, Any] = {
        "init_scale": INIT_SCALE, "steps_done": trainer.step,
        "run_s": time.perf_counter() - started,
        "skipped_step": [m["amp/skipped_step"] for m in steps],
        "loss_scale": [m["amp/loss_scale"] for m in steps],
        "loss": [m["loss"] for m in steps],
    }
    skipped = result["skipped_step"]
    result["finished_with_skips"] = (trainer.step == steps_total and 1.0 in skipped
                                     and 0.0 in skipped)
    nan = load_run_config(None, [*common, "train.steps=3", "train.inject_nan_at=2",
                                 f"output_dir={cache}/fp16-nan"])
    try:
        TextCraftor(nan, device=device, show_progress=False).fit()
        result["nan_loss_stopped"] = None
    except NonFiniteLossError as error:
        result["nan_loss_stopped"] = str(error)
    result["nan_loss_names_step_2"] = "at step 2" in str(result["nan_loss_stopped"])
    return result


def bench_rows(plan: CheckPlan, device: str, cache: Path, report: Report) -> dict[str, Any]:
    """The plan's rows through ``textcraftor.bench``, one model build for all of them; rows
    that would start past the budget are recorded as skipped."""
    import torch

    from textcraftor.bench import bench_config, build_models, build_parser, run_bench

    def config_for(batch: int):
        args = build_parser().parse_args([
            "--preset", plan.preset, "--reward-preset", plan.reward_preset,
            "--rewards", plan.rewards, "--dtype", plan.dtype, "--px", str(plan.px),
            "--batch", str(batch), "--num-steps", str(plan.num_steps),
            "--set", f"output_dir={cache}/bench"])
        return bench_config(args)

    torch_device = torch.device(device)
    configs = {batch: config_for(batch) for batch in plan.batches}  # bad input before models
    models = build_models(configs[plan.batches[0]], torch_device)
    result: dict[str, Any] = {"models": dict(models[2]), "rows": [], "skipped_rows": []}
    if torch_device.type == "cuda":
        result["models"]["resident_bytes"] = torch.cuda.memory_allocated(torch_device)
    report.data["bench"] = result
    header_done = False
    for batch, config in configs.items():
        vae_settings = (False, True) if batch == plan.batches[0] else (False,)
        for k in plan.ks:
            for vae in vae_settings:
                row_name = {"batch": batch, "K": k, "vae_checkpointing": vae}
                if report.elapsed() > plan.budget_s:
                    result["skipped_rows"].append(row_name)
                    continue
                bench = run_bench(config, [k], plan.repeats, plan.warmup, torch_device,
                                  checkpointing=(True,), vae_checkpointing=(vae,), models=models)
                if not header_done:
                    result.update({key: value for key, value in bench.items()
                                   if key not in ("rows", "batch", "pipeline_build_s",
                                                  "rewards_build_s")})
                    header_done = True
                result["rows"].extend(bench["rows"])
                report.write()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textcraftor.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."),
                        help=f"folder for {OUTPUT_NAME} (default: $OUT when set, else here)")
    parser.add_argument("--wheels", type=Path, default=Path(".gpu-wheels"),
                        help="the wheels `make gpu-wheels` downloaded (installed if needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny preset and rewards on the CPU: the code path, in seconds")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no bench row after this many seconds (default 240)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--prepare-wheels", type=Path, metavar="FOLDER",
                        help="download the wheels into FOLDER and stop (the CPU machine)")
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        prepare_wheels(args.prepare_wheels)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = args.device or ("cpu" if args.smoke else "cuda")
    plan = smoke_plan(args.budget_s) if args.smoke else full_plan(args.budget_s)
    report = Report(args.out / OUTPUT_NAME, args.smoke)
    report.data["plan"] = {**plan.__dict__, "device": device}
    with tempfile.TemporaryDirectory(prefix="textcraftor-gpu-check-") as scratch:
        scratch_path = Path(scratch)
        os.environ.setdefault("TEXTCRAFTOR_CACHE", str(scratch_path / "cache"))
        installed = report.section("install", lambda: install_wheels(args.wheels.resolve(),
                                                                     scratch_path / "site"))
        if installed is None:
            return 1
        report.section("environment", environment)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                report.data["errors"].append({"section": "device", "error":
                                              f"--device {device}: CUDA is not available"})
                report.write()
                return 1
        report.section("fp16", lambda: fp16_skip(device, scratch_path))
        report.section("bench", lambda: bench_rows(plan, device, scratch_path, report))
    report.write()
    print(json.dumps(report.data))
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
