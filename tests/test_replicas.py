"""Data-parallel replicas stay one model: two real gloo ranks, every trainable combination.

Each rank is its own process with its own RNG, its own prompts and noise (as Ray Train's
workers are), and gradient clipping is active — so anything trained outside the replica
synchronisation, any per-rank initialisation and any per-rank clip coefficient shows as a
difference between the ranks' parameters.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# name → overrides on top of conftest's SMALL; clipping far below the gradient norm, so it acts
COMBINATIONS = {
    "text_encoder": (),
    "text_encoder+lora": ("model.train_unet=lora",),
    "text_encoder+full_unet": ("model.train_unet=full",),
    "lora": ("model.train_text_encoder=false", "model.train_unet=lora"),
    "full_unet": ("model.train_text_encoder=false", "model.train_unet=full"),
    "text_encoder+lora, grad_accum 2": ("model.train_unet=lora", "train.grad_accum=2"),
}
COMMON = ("train.lr=0.01", "model.unet_lr=0.01", "train.max_grad_norm=0.001", "train.steps=2",
          "train.eval_every=0", "sample.eta=1.0")
STEPS = 2


def _flat(parameters) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def _max_rank_difference(parameters) -> float:
    """max |rank 0 − rank 1| over every element of ``parameters`` (collective)."""
    mine = _flat(parameters)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return float((gathered[0] - gathered[1]).abs().max())


def _rank(rank: int, world: int, rendezvous: str, out: str, small: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(1000 + rank)  # each process its own RNG, as separate workers have
    # a file rendezvous (torch's FileStore): no TCP port to pick, none for another process on
    # a busy test machine to take between picking and binding it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    from textcraftor.config import load_run_config
    from textcraftor.models import load_pipeline
    from textcraftor.objective import build_objective
    from textcraftor.replicas import ReplicaDivergenceError
    from textcraftor.trainable import make_unet_trainable
    from textcraftor.trainer import TextCraftor

    def config(name, *overrides):
        return load_run_config(None, [*small, *COMMON, *overrides,
                                      f"output_dir={out}/{rank}/{name}"])

    objective = build_objective(config("objective").reward, "tiny", None)
    results = {}
    for name, overrides in COMBINATIONS.items():
        trainer = TextCraftor(config(name, *overrides), rank=rank, world_size=world,
                              device="cpu", show_progress=False, objective=objective)
        params = trainer.replicas.parameters
        initial = _flat(params).clone()
        start = _max_rank_difference(params)
        losses = []
        for step in range(1, STEPS + 1):
            metrics = trainer.train_step(step)
            losses.append(metrics["loss"])
        results[name] = {"start": start, "after": _max_rank_difference(params),
                         "moved": float((_flat(params) - initial).abs().max()),
                         "parameters": sum(p.numel() for p in params),
                         "grad_norm": metrics["grad_norm"]}

    # Controls: the same measurement sees what the synchronisation prevents.
    pipeline = load_pipeline("tiny")  # a LoRA initialised from this rank's own RNG
    lora = make_unet_trainable(pipeline, "lora", 4)
    results["control: LoRA init without broadcast"] = {"start": _max_rank_difference(lora)}
    trainer = TextCraftor(config("unsynced", "model.train_unet=lora"), rank=rank,
                          world_size=world, device="cpu", show_progress=False,
                          objective=objective)
    trainer.replicas.active = False  # each rank steps on its own gradients
    for step in range(1, STEPS + 1):
        trainer.train_step(step)
    trainer.replicas.active = True
    divergence = _max_rank_difference(trainer.replicas.parameters)
    try:
        trainer.replicas.check_identical()
        refused = ""
    except ReplicaDivergenceError as error:
        refused = str(error)
    results["control: steps without gradient averaging"] = {"after": divergence,
                                                           "refused": refused}
    if rank == 0:
        with open(f"{out}/results.json", "w") as f:
            json.dump(results, f, indent=2)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_source, small_overrides):
    out = tmp_path_factory.mktemp("replicas")
    mp.spawn(_rank, args=(2, str(out / "rendezvous"), str(out), small_overrides), nprocs=2,
             join=True)
    results = json.loads((out / "results.json").read_text())
    print(json.dumps(results, indent=2))
    return results


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_every_trained_parameter_is_identical_on_both_ranks(two_ranks, name):
    result = two_ranks[name]
    assert result["parameters"] > 0
    assert result["start"] == 0.0
    assert result["moved"] > 1e-4  # the steps did train these parameters
    assert result["after"] == 0.0


def test_the_measurement_sees_unsynchronised_replicas(two_ranks):
    assert two_ranks["control: LoRA init without broadcast"]["start"] > 0.1
    unsynced = two_ranks["control: steps without gradient averaging"]
    assert unsynced["after"] > 1e-4
    assert "differ between the 2 ranks" in unsynced["refused"]
    differing, total = map(int, re.search(r"\((\d+) of (\d+)\)", unsynced["refused"]).groups())
    assert differing == total > 36  # the encoder's 36 tensors and the LoRA's
