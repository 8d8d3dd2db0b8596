"""One trial: a Tune function that runs a Ray Train ``TorchTrainer`` (DDP over the text encoder).

Inside the Tune function we use ``ray.tune``; inside the Train workers ``ray.train``. Rank-0
metrics reach Tune through ``TuneReportCallback``; checkpoints go through Ray Train, so a failed
worker group restarts from the last one (``FailureConfig``).

``resources.num_workers: 0`` runs the trial's one rank in the Tune trial process instead, with
no Ray Train worker group (no DDP) to start, and Tune reuses that process for the next trial
(``reuse_actors``): the method's imports are paid once per sweep, not once per trial. Reports
and checkpoints then go to Tune (``ray.tune.report``); a failed trial restarts from its last
checkpoint through Tune's ``FailureConfig``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import ray.tune

from study.config import StudyConfig
from study.moasha import board_name
from study.objectives import study_intervals, study_objectives
from study.space import trial_run_config
from textcraftor.config import RunConfig
from textcraftor.configio import from_dict, to_dict

# The method's modules (torch, diffusers, transformers, open_clip: ~10 s of imports) are
# imported inside the worker function only: the Tune trial process that launches the
# TorchTrainer never needs them, and each trial would pay for them again.

log = logging.getLogger(__name__)


class RayTrainReporter:
    """TrainEvent → ``ray.train.report`` on every rank (it is a barrier); the checkpoint from
    rank 0. Every report carries the latest objectives, as Tune's metric checks require.

    A report costs a round trip through the Train controller (about a second here), so step
    metrics are buffered and sent together (``step_history``) every ``report_every`` steps and
    with each evaluation, checkpoint and the end; the driver logs each at its own step, once it
    is final (``study.tracking.TrialPoints``). Every report names its worker group
    (``attempt``): a new one after a restart, which also reports ``resumed_from_step`` when it
    started from a checkpoint. ``report``: ``ray.train.report`` (a test passes a list's
    append-like sink)."""

    def __init__(self, rank: int, trial_started_at: float, report_every: int = 10,
                 report: Callable[..., None] | None = None, checkpoint_type: type | None = None):
        self.rank = rank
        self.report = report or ray.train.report
        self.checkpoint_type = checkpoint_type or ray.train.Checkpoint  # what report takes
        self.attempt = uuid.uuid4().hex  # this worker group's id (rank 0's is the one Tune sees)
        # every objective and its interval NaN until an evaluation
        self.objectives = {**study_objectives({}), **study_intervals({})}
        self.trial_started_at = trial_started_at
        # study.overhead's parts of this worker group's time (seconds): train_time_s inside
        # optimizer steps; eval_s, checkpoint_s since the event before; report_s inside
        # reports; worker_start_s, import_s, load_s set by train_worker; startup_s: trial start
        # → first step begins; worker_wall_s (at the end): trial start → the end event;
        # peak_memory_mb (at the end): see peak_memory_mb (an in-process trial's process may
        # have served earlier trials: on CPU its peak is theirs too)
        self.timing = {"train_time_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0,
                       "report_s": 0.0, "trial_started_at": trial_started_at}
        self.last_event_at = time.time()  # train_worker sets it when the run is built
        self.report_every = report_every
        self.buffered: list[dict[str, Any]] = []
        self.worker_nodes = ""  # Ray node ids of the ranks, in rank order, distinct
        # MO-ASHA: after the evaluation at one of these steps, ask(step) returns the
        # scheduler's decision ("STOP" or "CONTINUE"); on STOP, stop() ends the run there
        self.rungs: tuple[int, ...] = ()
        self.ask: Callable[[int], str] | None = None
        self.stop: Callable[[], None] | None = None
        # the inference dials (study.dial_table), measured by rank 0 at the end event before the
        # last report, which carries them (``dials``); None: not measured
        self.dial: Callable[[int], dict[str, Any] | None] | None = None

    def flush(self, step: int) -> None:
        """Send the buffered step metrics now (the run is stopping at ``step`` on every rank at
        once, e.g. a non-finite loss: the report's barrier holds)."""
        if self.buffered:
            self._send("step", step, {}, checkpoint=None)

    def __call__(self, event) -> None:  # event: textcraftor.events.TrainEvent
        now = time.time()
        if event.kind in ("eval", "checkpoint"):  # what happened since the event before
            self.timing[f"{event.kind}_s"] += now - self.last_event_at
        try:
            self._on_event(event, now)
        finally:
            self.last_event_at = time.time()

    def _on_event(self, event, now: float) -> None:
        if event.kind == "step":
            self.timing["train_time_s"] += event.metrics["step_s"]
            if "startup_s" not in self.timing:
                self.timing["startup_s"] = (time.time() - self.trial_started_at
                                            - event.metrics["step_s"])
        own: dict[str, Any] = event.metrics if event.kind == "eval" else {}
        if event.kind == "end":
            if self.dial is not None and self.rank == 0:
                dialled = time.time()
                dials = self.dial(event.step)
                if dials is not None:
                    own = {"dials": dials}
                    self.timing["dial_s"] = time.time() - dialled
                now = time.time()
            self.timing["peak_memory_mb"] = peak_memory_mb()
            self.timing["worker_wall_s"] = now - self.trial_started_at
        if event.kind == "eval":
            # quality reads eval/quality: the study's fixed weights (the run's
            # eval.quality_weights, set by study.space.trial_run_config)
            self.objectives = {**study_objectives(event.metrics),
                               **study_intervals(event.metrics)}
        if event.kind == "step":
            self.buffered.append({**event.metrics, "step": event.step})
            if len(self.buffered) < self.report_every:
                return
        # step metrics travel in step_history only, evaluation metrics with their eval event;
        # checkpoint and end events repeat both, so they add only objectives and timing
        checkpoint = None
        if event.kind == "checkpoint" and event.path and self.rank == 0:
            checkpoint = self.checkpoint_type.from_directory(event.path)
        self._send(event.kind, event.step, own, checkpoint)
        if event.kind == "eval" and event.step in self.rungs and self.ask is not None:
            asked = time.time()
            decision = self.ask(event.step)
            self.timing["report_s"] += time.time() - asked
            if decision == "STOP" and self.stop is not None:
                self.stop()  # every rank reads the same decision: all stop at this step

    def _send(self, kind: str, step: int, own: Mapping[str, Any], checkpoint) -> None:
        metrics = {**own, **self.objectives, **self.timing, "step": step, "event": kind,
                   "step_history": self.buffered, "worker_nodes": self.worker_nodes,
                   "attempt": self.attempt}
        self.buffered = []
        name = f"step_{step:07d}" if kind == "checkpoint" else None
        started = time.time()
        self.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        self.timing["report_s"] += time.time() - started


class InjectedCrash(RuntimeError):
    """The test-only worker crash of ``FaultInjection.crash_once_at_step``."""


def crash_once_before_checkpoint(callback: Callable, step: int, marker: Path, rank: int
                                 ) -> Callable:
    """Testing aid: ``callback``, except that rank 0 raises ``InjectedCrash`` instead of passing
    on the checkpoint event of ``step`` — once: ``marker`` (a file) remembers it. The other
    ranks block in the report and Ray Train restarts the whole worker group from its last
    committed checkpoint (``FailureConfig``)."""
    def wrapped(event) -> None:
        if (rank == 0 and event.kind == "checkpoint" and event.step == step
                and not marker.exists()):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"crashed before reporting the checkpoint of step {step}\n")
            raise InjectedCrash(f"injected worker crash before the checkpoint of step {step}")
        callback(event)

    return wrapped


def pause_once_after_checkpoint(callback: Callable, step: int, marker: Path, rank: int,
                                timeout_s: float = 600.0) -> Callable:
    """Testing aid: ``callback``, except that rank 0, once ``callback`` has passed on the
    checkpoint event of ``step``, waits up to ``timeout_s`` before training on — once: ``marker``
    (a file, written when the wait starts) remembers it. The other ranks wait in their next
    collective. A test sees the checkpoint committed (its MLflow run's ``checkpoint`` tag) and
    fails a node while the worker group can make no further progress, so the group resumes
    from exactly this step; Ray Train's teardown of the group ends the wait."""
    def wrapped(event) -> None:
        callback(event)
        if (rank == 0 and event.kind == "checkpoint" and event.step == step
                and not marker.exists()):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"paused after reporting the checkpoint of step {step}\n")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                time.sleep(0.2)

    return wrapped


def peak_memory_mb() -> float:
    """Peak accelerator memory of this process (CUDA), else its peak resident set size."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_node_ids(world_size: int) -> str:
    """The Ray node of every rank (a collective: every rank calls it), distinct, rank order."""
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    nodes = [node]
    if world_size > 1 and dist.is_initialized():
        nodes = [None] * world_size
        dist.all_gather_object(nodes, node)
    return ",".join(dict.fromkeys(nodes))


def tune_report(metrics: dict[str, Any], checkpoint=None, checkpoint_dir_name=None) -> None:
    """``ray.train.report``'s call, answered by Tune (in-process trials; Tune names the
    checkpoint folders itself)."""
    ray.tune.report(metrics, checkpoint=checkpoint)


class InjectedDialError(RuntimeError):
    """The test-only dial failure of ``FaultInjection.dial_error``."""


def measure_trial_dials(trainer, dials: Mapping[str, Any], step: int
                        ) -> dict[str, Any] | None:
    """The trial's inference dials (``study.dial_table``) once its training has finished (None for
    a run stopped before ``train.steps`` or its UNet-pass budget, e.g. by MO-ASHA), also
    written atomically to its run folder as ``dials.json``. A failure is returned as {error}
    (the trial and the sweep go on)."""
    if step != trainer.step or not trainer.finished():
        return None
    from study.dial_table import study_dials
    from textcraftor.atomic import write_json_atomic
    from textcraftor.dials import measure_dials

    try:
        if dials.get("fail"):
            raise InjectedDialError("injected dial failure (fault_injection.dial_error)")
        found = study_dials(measure_dials(trainer, dials["alphas"], dials["finetuned_steps"]),
                            dials["objectives"])
    except Exception as error:  # noqa: BLE001 - recorded for this trial; the sweep goes on
        log.exception("the inference dials failed")
        found = {"error": f"{type(error).__name__}: {error}"[-2000:]}
    write_json_atomic(trainer.run_dir / "dials.json", found)
    return found


def train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker (or, in-process, in the Tune trial process as the only
    rank): one TextCraftor run, resumed from the trial's last checkpoint."""
    entered = time.time()
    import torch

    from textcraftor.events import NonFiniteLossError
    from textcraftor.trainer import TextCraftor

    imported = time.time()
    run = from_dict(RunConfig, loop_config["run"])
    torch.set_num_threads(loop_config["torch_threads"])
    in_process = loop_config.get("in_process", False)
    if in_process:  # the only rank; Ray gave this process its GPU, if the trial asked for one
        rank, world = 0, 1
        device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the process served earlier trials
        reporter = RayTrainReporter(rank, loop_config["trial_started_at"], report=tune_report,
                                    checkpoint_type=ray.tune.Checkpoint)
    else:
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = ray.train.torch.get_device()
        reporter = RayTrainReporter(rank, loop_config["trial_started_at"])
    reporter.worker_nodes = worker_node_ids(world)
    callback = reporter
    if loop_config.get("crash_once_at_step"):
        callback = crash_once_before_checkpoint(reporter, loop_config["crash_once_at_step"],
                                                Path(loop_config["crash_marker"]), rank)
    if loop_config.get("pause_once_after_step"):
        callback = pause_once_after_checkpoint(callback, loop_config["pause_once_after_step"],
                                               Path(loop_config["pause_marker"]), rank)
    # the objective: the run's active rewards; eval.quality_weights' others are built by the
    # evaluator (scored, never run in a training step)
    trainer = TextCraftor(run, callback=callback,
                          rank=rank, world_size=world, device=device, show_progress=False)
    if loop_config.get("rung_board"):
        from study.moasha import wait_for_decision

        reporter.rungs = tuple(loop_config["rungs"])
        reporter.ask = lambda step: wait_for_decision(loop_config["rung_board"],
                                                      loop_config["trial_id"], step)
        reporter.stop = trainer.request_stop
    if loop_config.get("dials"):
        reporter.dial = partial(measure_trial_dials, trainer, loop_config["dials"])
    checkpoint = ray.tune.get_checkpoint() if in_process else ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.restore(folder)
        reporter.timing["resumed_from_step"] = float(trainer.step)  # a restarted worker group
    reporter.timing.update(worker_start_s=entered - loop_config["trial_started_at"],
                           import_s=imported - entered, load_s=time.time() - imported)
    reporter.last_event_at = time.time()
    try:
        trainer.fit()
    except NonFiniteLossError:  # every rank stops at the same step: the steps before it count
        reporter.flush(trainer.step)
        raise


def run_trial(params: dict[str, Any], study: dict[str, Any]) -> None:
    """The Tune function trial: builds and runs the trial's TorchTrainer."""
    from ray.tune.integration.ray_train import TuneReportCallback

    config = from_dict(StudyConfig, study)
    trial_id = ray.tune.get_context().get_trial_id()
    run = trial_run_config(config, params, config.sweep_dir / "trials" / trial_id)
    r = config.resources
    crash = next((f.crash_once_at_step for f in config.fault_injection
                  if f.crash_once_at_step and f.matches(params)), 0)
    pause = next((f.pause_once_after_step for f in config.fault_injection
                  if f.pause_once_after_step and f.matches(params)), 0)
    loop_config = {
        "run": to_dict(run),
        "torch_threads": r.torch_threads or max(1, int(r.cpus_per_worker)),
        "trial_started_at": time.time(),
        "crash_once_at_step": crash,  # testing (FaultInjection): once per sweep
        "crash_marker": str(config.sweep_dir / f".injected-crash-step-{crash}"),
        "pause_once_after_step": pause,  # testing (FaultInjection): once per sweep
        "pause_marker": str(config.sweep_dir / f".injected-pause-step-{pause}"),
        "trial_id": trial_id,
        # MO-ASHA: where the rung decisions are posted, and at which steps
        "rung_board": board_name(config.name) if config.tuner.scheduler == "moasha" else None,
        "rungs": list(config.tuner.rungs),
        "in_process": r.in_process,
        # the inference dials after the last step (study.dial_table); None: not measured
        "dials": {"alphas": list(config.dials.alphas),
                  "finetuned_steps": list(config.dials.finetuned_steps),
                  "objectives": list(config.objectives.names),
                  "fail": any(f.dial_error and f.matches(params)
                              for f in config.fault_injection)}
        if config.dials.enabled else None,
    }
    if r.in_process:
        try:
            train_worker(loop_config)
        finally:  # this process serves the next trial: free this one's models now
            import gc

            gc.collect()
        return
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers, use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=r.worker_bundle(), placement_strategy=r.placement_strategy),
        run_config=ray.train.RunConfig(
            name=f"{config.name}-{trial_id}",
            storage_path=f"{config.storage_dir}/train",
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
