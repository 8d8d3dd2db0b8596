"""Multi-node on one machine: a Ray head and a worker node as separate raylets
(``ray.cluster_utils.Cluster``), a real ``mlflow server`` on 127.0.0.1, and a sweep connected
with ``--address`` whose Train workers land on both nodes. Mid-trial the worker node is removed
(a reclaimed spot node) and a replacement joins: the trial resumes from its last checkpoint and
completes, and MLflow keeps exactly one finished run per trial."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
from sweep_helpers import SMALL, TINY, mlflow_server, rest, stop_process_group

pytestmark = pytest.mark.slow
EXPERIMENT = "textcraftor-study"
NODE_CPUS = 1  # per node: a trial (0.1 CPU + 2 workers × 0.5) needs both nodes


@pytest.fixture
def two_node_cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # every node and the driver alike
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "resources": {"head_node": 1},
        "object_store_memory": 100 * 2**20, "dashboard_host": "127.0.0.1"})
    worker = cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()


def sweep_args(results: Path, tracking_uri: str, address: str, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "study.sweep", "--address", address,
            "--results-dir", str(results), "--tracking-uri", tracking_uri, *SMALL, *TINY,
            "--set", "base.train.steps=8", "--set", "base.train.save_every=2",
            "--set", "base.train.eval_every=4",
            # a Ray Train worker group of 2 DDP ranks, one per node
            "--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=0.5",
            "--set", "resources.torch_threads=1", "--set", "base.train.batch_size=2",
            "--set", "resources.placement_strategy=STRICT_SPREAD",
            "--set", "resources.trial_resources={head_node: 0.01}",
            "--set", "resources.max_failures=2", *extra]


PAUSED_AT = 4  # the checkpoint step after which a trial's rank 0 waits (fault_injection)


def trial_runs(base: str) -> list[dict]:
    """The sweep's trial runs, as the MLflow server has them now ([] before the experiment)."""
    try:
        experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                          + EXPERIMENT)["experiment"]
    except urllib.error.HTTPError:
        return []
    return rest(base, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment_id"]], "max_results": 100,
        "filter": "tags.`textcraftor.kind` = 'trial'"}).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def committed_run(base: str, step: int) -> str | None:
    """The trial run whose newest checkpoint, as the driver heard of it, is ``step``'s. Ray
    Train registers a checkpoint before Tune sees its result, and the tracking callback tags
    the run on that result: the tag is proof of the commit. (A checkpoint *folder* is not: it
    appears when the upload starts, and a rank's reports queue behind the controller's poll.)"""
    suffix = f"step_{step:07d}"
    return next((r["info"]["run_id"] for r in trial_runs(base)
                 if tags(r).get("checkpoint", "").rstrip("/").endswith(suffix)), None)


def test_sweep_spans_two_nodes_and_survives_losing_one(two_node_cluster, tmp_path):
    cluster, worker = two_node_cluster
    node_ids = {cluster.head_node.node_id, worker.node_id}
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as (base, _):
        started = time.perf_counter()
        driver = subprocess.Popen(
            sweep_args(tmp_path / "shared", base, cluster.address, "--num-samples", "2",
                       "--set", "name=multinode", "--set",
                       f"fault_injection=[{{pause_once_after_step: {PAUSED_AT}}}]"),
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        marker = tmp_path / "shared" / "multinode" / f".injected-pause-step-{PAUSED_AT}"
        try:
            # the first trial's rank 0 waits after reporting step 4's checkpoint; once the
            # driver has tagged its run with that checkpoint, the commit is certain: then lose
            # the worker node, while the group cannot train past step 4
            deadline = time.monotonic() + 600
            paused = None
            while paused is None:
                assert driver.poll() is None, driver.stdout.read()[-5000:]
                assert time.monotonic() < deadline, "no committed checkpoint within 600 s"
                time.sleep(0.5)
                paused = committed_run(base, PAUSED_AT) if marker.exists() else None
            removed_at = time.perf_counter() - started
            cluster.remove_node(worker)
            time.sleep(3)
            replacement = cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=100 * 2**20)
            output, _ = driver.communicate(timeout=1200)
        finally:
            stop_process_group(driver)
        wall = time.perf_counter() - started
        (tmp_path / "driver.log").write_text(output)
        assert driver.returncode == 0, output[-6000:]

        summary = json.loads((tmp_path / "shared" / "multinode" / "summary.json").read_text())
        assert [t["status"] for t in summary["trials"]] == ["TERMINATED", "TERMINATED"]
        assert all(t["steps"] == 8 for t in summary["trials"])

        experiment = rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                          + EXPERIMENT)["experiment"]
        runs = rest(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        kinds = sorted(tags(r)["textcraftor.kind"] for r in runs)
        assert kinds == ["baseline", "sweep", "trial", "trial"]  # none lost, none duplicated
        assert all(r["info"]["status"] == "FINISHED" for r in runs)  # none left RUNNING
        trials = [r for r in runs if tags(r)["textcraftor.kind"] == "trial"]
        resumed = {r["info"]["run_id"]: m["value"] for r in trials for m in r["data"]["metrics"]
                   if m["key"] == "resumed_from_step"}
        # the paused trial lost a worker: its group restarted from the checkpoint committed
        # before the loss; the other trial ran on the replacement node, never restarted
        assert resumed == {paused: float(PAUSED_AT)}, (paused, resumed)
        # Train workers on two distinct nodes of this cluster, every trial
        everyone = node_ids | {replacement.node_id}
        for run in trials:
            nodes = set(tags(run)["worker_nodes"].split(","))
            assert len(nodes) == 2 and nodes <= everyone, (nodes, everyone)
        print(f"\nmulti-node sweep: {wall:.1f} s wall; nodes {sorted(node_ids)}; replacement "
              f"{replacement.node_id}; worker node removed at {removed_at:.1f} s, step "
              f"{PAUSED_AT}'s checkpoint committed; resumed from step {resumed[paused]:g}; "
              f"workers per trial: {[tags(r)['worker_nodes'] for r in trials]}")


def test_tracking_server_lost_mid_sweep_is_reported_and_training_goes_on(tmp_path):
    """The MLflow server dies after the baseline: the trial still trains to the end, the sweep
    exits 0, and the loss of tracking is in summary.json and on stderr."""
    import sys

    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as (base, server):
        driver = subprocess.Popen(
            [sys.executable, "-m", "study.sweep", "--results-dir", str(tmp_path / "sweeps"),
             "--tracking-uri", base, *SMALL, *TINY, "--num-samples", "1",
             "--set", "name=untracked"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        trials = tmp_path / "sweeps" / "untracked" / "trials"
        deadline = time.monotonic() + 600
        while not any(trials.glob("*/metrics.jsonl")):  # the trial is training
            assert driver.poll() is None, driver.communicate()[1][-5000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        stop_process_group(server)
        try:
            stdout, stderr = driver.communicate(timeout=900)
        finally:
            stop_process_group(driver)
    assert driver.returncode == 0, stderr[-5000:]
    summary = json.loads((tmp_path / "sweeps" / "untracked" / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED"]
    assert summary["trials"][0]["steps"] == 4
    assert summary["tracking_errors"], summary
    assert "MLflow tracking lost" in stderr
