"""Shared fixtures: a per-session preset cache, tiny pipelines, one shared objective, small
configs, and a helper to run the command-line entry points in a subprocess.

The cache is chosen at import time (before any test module imports textcraftor) so that every
preset and tiny reward this session builds lands in a temporary folder, and subprocesses
inherit it through the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# The tiny models are dispatch-bound: on a 2-core machine one thread runs a training step about
# twice as fast (in CPU time) as two, and does not fight other processes for the cores.
torch.set_num_threads(1)

_SESSION_CACHE = tempfile.mkdtemp(prefix="textcraftor-test-cache-")
os.environ["TEXTCRAFTOR_CACHE"] = _SESSION_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CPU: T=4 DDIM steps at 32 px (4×4 latents), batch 2, one reward.
SMALL = (
    "sample.num_steps=4",
    "sample.resolution=32",
    "sample.k=2",
    "train.batch_size=2",
    "train.eval_at_start=false",
    "train.sample_grid=false",
    "data.heldout_count=2",
    "data.eval_seeds=[0]",
    "eval.diversity=false",
    "eval.distribution=false",
    "reward.weights={aesthetic: 1}",
    "reward.clip_constraint=0",
)


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def small_overrides() -> tuple[str, ...]:
    return SMALL


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(_SESSION_CACHE)


@pytest.fixture(scope="session")
def tiny_source() -> Path:
    """The tiny preset's diffusers folder, built once per session in the session cache."""
    from textcraftor.models import resolve_source

    return Path(resolve_source("tiny"))


@pytest.fixture
def load_tiny(tiny_source) -> Callable:
    """A factory of fresh tiny pipelines (~0.4 s each): training mutates the text encoder."""
    from textcraftor.models import load_pipeline

    return lambda: load_pipeline("tiny")


@pytest.fixture
def pipeline(load_tiny):
    return load_tiny()


@pytest.fixture(scope="session")
def small_reward_config():
    from textcraftor.config import load_run_config

    return load_run_config(None, SMALL).reward


@pytest.fixture(scope="session")
def objective(tiny_source, small_reward_config):
    """The tiny aesthetic objective of ``SMALL``; frozen, so safe to share across tests."""
    from textcraftor.objective import build_objective

    return build_objective(small_reward_config, "tiny", None)


@pytest.fixture
def make_config(tmp_path) -> Callable:
    """``make_config(*overrides)``: ``SMALL`` plus overrides, with a run folder under tmp."""
    from textcraftor.config import load_run_config

    def make(*overrides: str):
        return load_run_config(None, [*SMALL, f"output_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture
def make_trainer(make_config, load_tiny, objective, small_reward_config) -> Callable:
    """``make_trainer(*overrides, pipeline=None, **kwargs)``: a CPU TextCraftor on a fresh tiny
    pipeline, sharing the session objective when the reward config is the default small one."""
    from textcraftor.trainer import TextCraftor

    def make(*overrides: str, pipeline=None, **kwargs):
        config = make_config(*overrides)
        if config.reward == small_reward_config:
            kwargs.setdefault("objective", objective)
        return TextCraftor(config, pipeline=pipeline or load_tiny(), device="cpu",
                           show_progress=False, **kwargs)

    return make


@pytest.fixture(scope="session")
def run_module() -> Callable:
    """``run_module(module, *args, cwd=...)``: ``python -m module args`` with the session env."""

    def run(module: str, *args: str, cwd: Path | str | None = None, timeout: float = 300):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TEXTCRAFTOR_CACHE": _SESSION_CACHE,
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """One real sweep shared by the study and analysis tests: 3 trials of the tiny preset on
    Parti-Prompts (categories), 4 held-out prompts × 2 seeds, searching the default study's
    fields plus the guidance scale, T and the truncation mode (sweep_helpers.E2E_SEARCH); the
    first trial (the base config's values, reward.weights.aesthetic = 1.0) gets a NaN loss at
    step 2 and fails; the first trial to reach step 4's checkpoint crashes once there, and Ray
    Train restarts its worker group."""
    import json
    import time

    from sweep_helpers import PARTI_PROMPTS, TINY, e2e_study, run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    started = time.perf_counter()
    result = run_sweep(tmp, "--config", str(e2e_study(tmp)), *TINY, "--num-samples", "3",
                       "--set", "name=e2e",
                       "--set", f"base.data.prompts={PARTI_PROMPTS}",
                       "--set", "base.data.heldout_count=4",
                       "--set", "fault_injection=[{param: reward.weights.aesthetic, value: 1.0, "
                       "nan_at_step: 2}, {crash_once_at_step: 4}]")
    wall = time.perf_counter() - started
    summary = json.loads((tmp / "sweeps" / "e2e" / "summary.json").read_text())
    print(f"\nsweep of 3 trials: {wall:.1f} s wall; overhead {summary['overhead']}")
    return tmp, summary, result
