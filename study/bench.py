"""``python -m study.bench``: the default study (or any study) run in a scratch folder, timed, as
one JSON line: the sweep's wall, its overhead breakdown, the steps trained and the Pareto front.

    python -m study.bench [--out DIR] [--config study.yaml] [--set key=value ...]
    python -m study.bench --compare-moasha 16 [--set ...]   # the same study, FIFO then MO-ASHA

``--compare-moasha N`` runs the study twice with N trials, the same sampler seed and space —
first ``tuner.scheduler=fifo``, then ``moasha`` — and adds the ratio of steps trained and of
the fronts' hypervolumes, both fronts measured against the FIFO run's untuned baseline as the
reference point. A benchmark, not a test: it prints what it measured, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.summary import hypervolume


def run_study(out: Path, name: str, args: Sequence[str]) -> dict[str, Any]:
    """One ``python -m study.sweep`` in ``out`` (its own results folder and MLflow store);
    returns its wall and what its summary.json says about cost and the front."""
    command = [sys.executable, "-m", "study.sweep", "--results-dir", str(out / "sweeps"),
               "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--set", f"name={name}",
               *args]
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as console:
        code = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    wall = time.perf_counter() - started
    summary_file = out / "sweeps" / name / "summary.json"
    if code != 0 or not summary_file.is_file():
        raise SystemExit(f"study.sweep exited {code}; see {out / f'{name}.log'}")
    summary = json.loads(summary_file.read_text())
    names = summary["objectives"]
    trials = summary["trials"]
    return {
        "name": name, "command_wall_s": round(wall, 1), "num_trials": len(trials),
        "status_counts": summary["status_counts"], "steps_trained": summary.get("steps_trained"),
        "overhead": summary.get("overhead"), "front": summary.get("front"),
        "baseline": (summary.get("baseline") or {}).get("objectives"),
        "front_points": [[t["objectives"][o] for o in names] for t in trials if t["pareto"]],
        "objectives": names,
        "console_lines": sum(1 for _ in open(out / f"{name}.log", errors="replace")),
    }


def compare(fifo: dict[str, Any], moasha: dict[str, Any]) -> dict[str, Any]:
    """Steps and hypervolume of MO-ASHA against FIFO, both fronts against FIFO's baseline."""
    reference = [fifo["baseline"][o] for o in fifo["objectives"]] if fifo["baseline"] else None
    volumes = {run["name"]: (hypervolume(run["front_points"], reference) if reference else None)
               for run in (fifo, moasha)}
    return {
        "reference_point": reference,
        "hypervolume": volumes,
        "hypervolume_ratio": (volumes["moasha"] / volumes["fifo"]
                              if volumes["fifo"] else None),
        "steps_ratio": (moasha["steps_trained"] / fifo["steps_trained"]
                        if fifo["steps_trained"] else None),
        "wall_ratio": moasha["command_wall_s"] / fifo["command_wall_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="scratch folder (default: a new temporary one, kept)")
    parser.add_argument("--config", help="study YAML (default: the embedded default study)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="study override, as for study.sweep")
    parser.add_argument("--compare-moasha", type=int, metavar="N",
                        help="run N trials under fifo, then under moasha, and compare")
    args = parser.parse_args(argv)
    if args.compare_moasha is not None and args.compare_moasha < 2:
        parser.error(f"--compare-moasha: {args.compare_moasha} trials; give at least 2")
    out = Path(args.out or tempfile.mkdtemp(prefix="textcraftor-study-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    common = [*(["--config", args.config] if args.config else []),
              *[a for o in args.overrides for a in ("--set", o)]]
    if args.compare_moasha is None:
        report = run_study(out, "bench", common)
    else:
        n = ["--num-samples", str(args.compare_moasha)]
        fifo = run_study(out, "fifo", [*common, *n, "--set", "tuner.scheduler=fifo"])
        moasha = run_study(out, "moasha", [*common, *n, "--set", "tuner.scheduler=moasha"])
        report = {"fifo": fifo, "moasha": moasha, "comparison": compare(fifo, moasha)}
    report["out"] = str(out)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
