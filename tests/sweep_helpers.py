"""Running real sweeps from tests: the command, a checked run, and the MLflow runs it made."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import yaml

from study.config import default_config_path

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARTI_PROMPTS = SHARED / "data" / "PartiPrompts.tsv"



def _small_study() -> Path:
    """The default study with a few steps: each trial is mostly Ray/Train start-up here. A YAML
    file, since base values of searched fields (here sample.k, the first trial's K) are the
    config file's to give, never --set's."""
    data = yaml.safe_load(default_config_path().read_text())
    base = data["base"]
    base["sample"].update(num_steps=4, k=2)
    base["train"].update(steps=4, eval_every=2, save_every=2)
    base["data"].update(heldout_count=2)
    data["search"]["sample.k"]["high"] = 2
    # the inference dials of each finished trial, on a small grid: 5 settings (a = 0 once)
    data["dials"] = {"alphas": [0.0, 0.5, 1.0], "finetuned_steps": ["k_train", "all"]}
    folder = Path(tempfile.mkdtemp(prefix="textcraftor-small-study-"))
    (folder / "small.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "small.yaml"


SMALL_STUDY = _small_study()
SMALL = ["--config", str(SMALL_STUDY)]
# The shared end-to-end sweep (conftest's tiny_sweep) also searches a float, an int and a
# categorical field under their own names.
E2E_SEARCH = {"sample.guidance_scale": {"low": 3.0, "high": 9.0},
              "sample.num_steps": {"low": 3, "high": 5},
              "sample.truncation": {"choices": ["last_k", "random_k"]}}
E2E_PARAMS = ("reward.weights.aesthetic", "reward.clip_constraint", "sample.k", *E2E_SEARCH)


def e2e_study(folder: Path) -> Path:
    data = yaml.safe_load(SMALL_STUDY.read_text())
    data["base"]["sample"]["k_max"] = 2  # random_k's top: within every num_steps drawn
    data["search"].update(E2E_SEARCH)
    (folder / "e2e.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "e2e.yaml"
# The tiny preset, for tests that need speed or prompts outside ShapesWorld (the default study
# runs the shapes preset).
TINY = ["--set", "base.model.source=tiny"]


def sweep_command(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "study.sweep", "--results-dir", str(tmp / "sweeps"),
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *SMALL, *args]


def run_sweep(tmp: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(sweep_command(tmp, *args), cwd=tmp, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def child_runs(tmp: Path, sweep: str, kind: str = "trial"):
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("textcraftor-study")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`textcraftor.sweep` = '{sweep}'")
    parents = [r for r in runs if r.data.tags["textcraftor.kind"] == "sweep"]
    children = [r for r in runs if r.data.tags["textcraftor.kind"] == kind]
    return client, parents, children


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(command: list[str], url: str, timeout_s: float = 120, **popen):
    """Start ``command`` (its own process group) and wait until ``url`` answers; yields the
    process, stops it afterwards. RuntimeError with its output when it exits or stays silent."""
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {server.stdout.read()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]}: no answer at {url} in {timeout_s} s") \
                        from None
                time.sleep(0.5)
        yield server
    finally:
        stop_process_group(server)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, cwd: Path):
    """A real ``mlflow server`` on 127.0.0.1 (its own process group, job runner off); yields
    (base URL, process). Artifacts are proxied by the server into ``cwd/mlartifacts``."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://127.0.0.1:{port}"
    with local_server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                       backend_uri, "--host", "127.0.0.1", "--port", str(port), "--workers",
                       "1"], base + "/health", cwd=cwd, env=env) as server:
        yield base, server


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """One MLflow REST call (GET, or POST with a JSON body)."""
    request = urllib.request.Request(base + path,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def metric_points(client, run_id: str) -> dict[tuple[str, int], list[float]]:
    """Every value MLflow holds for each (metric, step) of a run."""
    points: dict[tuple[str, int], list[float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            points.setdefault((key, m.step), []).append(m.value)
    return points


def assert_points_match_run_folder(client, run_id: str, run_dir: Path) -> dict:
    """One MLflow point per (metric, step), and every value of the trial folder's metrics.jsonl
    in MLflow at its step; returns the points ({(metric, step): value})."""
    points = metric_points(client, run_id)
    repeated = {p: v for p, v in points.items() if len(v) != 1}
    assert not repeated, repeated
    lines = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    record = {(k, line["step"]): v for line in lines for k, v in line.items()
              if k not in ("kind", "step")}
    assert record, run_dir
    single = {p: v[0] for p, v in points.items()}
    finite = {p: v for p, v in record.items() if math.isfinite(v)}  # MLflow gets finite ones
    differ = {p: (finite.get(p), single.get(p)) for p in record
              if single.get(p) != finite.get(p)}
    assert not differ, f"(metric, step): (metrics.jsonl, MLflow) {differ}"
    return single
