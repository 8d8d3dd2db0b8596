"""Weight sources checked before work: a missing folder, an uncached hub file offline or an
unreachable host is one error naming each field, before any model loads or Ray starts.

Caches here are real-format ones built in temporary folders (blobs, snapshots and refs as
huggingface_hub writes them); hosts are real sockets on 127.0.0.1. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from textcraftor.config import load_run_config
from textcraftor.configio import ConfigError
from textcraftor.sources_check import (
    ALEXNET_URL,
    INCEPTION_URL,
    Downloads,
    SourceError,
    check_sources,
    find_problems,
)

EXAMPLE_SHA = "0123456789abcdef0123456789abcdef01234567"
# Every default reward's files (and the evaluation's networks), as the loaders read them.
DEFAULT_FILES = {
    "trl-lib/ddpo-aesthetic-predictor": ["aesthetic-model.pth"],
    "openai/clip-vit-large-patch14": ["config.json", "model.safetensors"],
    "yuvalkirstain/PickScore_v1": ["config.json", "model.safetensors"],
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": ["vocab.json", "merges.txt"],
    "xswu/HPSv2": ["HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt"],
    "laion/CLIP-ViT-g-14-laion2B-s34B-b88K": ["open_clip_pytorch_model.bin"],
}
ALL_REWARDS = "reward.weights={aesthetic: 1, pickscore: 1, hpsv2: 1, hpsv2.1: 1}"
EVAL_RANDOM = ("eval.lpips_trunk=random", "eval.features=random")  # no torch hub downloads


def cache_file(hub: Path, repo: str, filename: str, data: bytes = b"x",
               revision: str = "main") -> Path:
    """Put ``filename`` of ``repo`` in a Hugging Face cache as hf_hub_download does: the content
    in blobs/, a relative symlink in snapshots/<commit>/, the commit in refs/<revision>."""
    from huggingface_hub.file_download import repo_folder_name

    folder = hub / repo_folder_name(repo_id=repo, repo_type="model")
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / EXAMPLE_SHA / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / revision).write_text(EXAMPLE_SHA)
    return link


def downloads(tmp_path: Path, **kwargs) -> Downloads:
    """Empty caches under ``tmp_path``, offline unless told otherwise."""
    settings = dict(hub_cache=tmp_path / "hf" / "hub",
                    torch_checkpoints=tmp_path / "torch" / "hub" / "checkpoints",
                    clip_cache=tmp_path / "clip", offline=True)
    return Downloads(**{**settings, **kwargs})


def fields(problems) -> list[str]:
    return [p.slot.field for p in problems]


# --- the command lines: refused in seconds, before Ray or any model ----------------------------


def test_sweep_with_a_missing_model_folder_stops_before_ray(tmp_path, run_module, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache, offline (run_module)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    started = time.perf_counter()
    result = run_module("study.sweep", "--results-dir", str(tmp_path / "sweeps"),
                        "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                        "--set", "base.model.source=/nonexistent", timeout=120)
    wall = time.perf_counter() - started
    print(f"\nsweep refused in {wall:.1f} s")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "error: 6 weight source(s) cannot be used" in result.stderr
    assert ("base.model.source = '/nonexistent': no such folder, and not a preset (tiny, "
            "sd15-random, shapes, shapes-s) or hub id") in result.stderr
    # the real rewards a non-preset model falls back to, and the evaluation's networks
    for named in ("base.reward.sources.aesthetic.source = 'trl-lib/ddpo-aesthetic-predictor:"
                  "aesthetic-model.pth' (default; needed by base.reward.weights.aesthetic)",
                  "base.reward.sources.aesthetic.backbone = 'openai/clip-vit-large-patch14'",
                  "base.reward.sources.clip.source = 'laion2b_s34b_b88k' (default; needed by "
                  "base.reward.clip_constraint)",
                  "`hf download laion/CLIP-ViT-g-14-laion2B-s34B-b88K "
                  "open_clip_pytorch_model.bin`",
                  "base.eval.lpips_trunk = 'auto' (needed by base.eval.diversity)",
                  "base.eval.features = 'auto' (needed by base.eval.distribution)"):
        assert named in result.stderr
    assert not (tmp_path / "sweeps" / "default").exists()  # no sweep folder, so no tune/: no Ray
    assert wall < 60  # today: < 20 s on 2 busy cores; before, workers retried for minutes


def test_train_with_a_missing_model_folder_stops_before_any_model_loads(tmp_path, run_module,
                                                                        monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run_dir = tmp_path / "run"
    result = run_module("textcraftor.train", "--set", "model.source=/nonexistent",
                        "--set", "eval.diversity=false", "--set", "eval.distribution=false",
                        "--set", "reward.sources.aesthetic={source: /nope/head.pth, "
                        "backbone: /nope/tower}",
                        "--output-dir", str(run_dir), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[lines.index("error: 4 weight source(s) cannot be used (checked before any "
                             "model loads):") + 1:] == [
        "model.source = '/nonexistent': no such folder, and not a preset (tiny, sd15-random, "
        "shapes, shapes-s) or hub id; give an existing diffusers folder (with unet/), a preset "
        "(tiny, sd15-random, shapes, shapes-s) or a hub id owner/repo",
        "reward.sources.aesthetic.source = '/nope/head.pth' (needed by reward.weights.aesthetic):"
        " no such file: /nope/head.pth; fix the path",
        "reward.sources.aesthetic.backbone = '/nope/tower' (needed by reward.weights.aesthetic):"
        " no such folder: /nope/tower; fix the path",
        f"reward.sources.clip.source = 'laion2b_s34b_b88k' (default; needed by "
        f"reward.clip_constraint): laion/CLIP-ViT-g-14-laion2B-s34B-b88K is not in the Hugging "
        f"Face cache {tmp_path}/hf/hub (missing open_clip_pytorch_model.bin (or "
        f"open_clip_model.safetensors)) and HF_HUB_OFFLINE is set; fetch it with `hf download "
        f"laion/CLIP-ViT-g-14-laion2B-s34B-b88K open_clip_pytorch_model.bin` (with this HF_HOME "
        f"/ HF_HUB_CACHE), unset HF_HUB_OFFLINE to let the run download it, or point "
        f"reward.sources.clip.source at a local copy",
    ]
    assert not run_dir.exists()
    assert "loaded reward" not in result.stderr


# --- model.source ----------------------------------------------------------------------------


@pytest.fixture
def hub_pipeline(tmp_path, tiny_source) -> Path:
    """The tiny preset as hub repo owner/tiny-sd in a fresh cache; returns the cache."""
    hub = tmp_path / "hf" / "hub"
    for path in sorted(tiny_source.rglob("*")):
        if path.is_file():
            cache_file(hub, "owner/tiny-sd", path.relative_to(tiny_source).as_posix(),
                       path.read_bytes())
    return hub


def test_a_cached_hub_pipeline_passes_and_is_what_the_libraries_read(tmp_path, hub_pipeline,
                                                                      tiny_source):
    from diffusers import UNet2DConditionModel
    from huggingface_hub import scan_cache_dir
    from transformers import CLIPTokenizer

    config = load_run_config(None, ["model.source=owner/tiny-sd", *EVAL_RANDOM])
    problems = find_problems(config, downloads=downloads(tmp_path))
    assert "model.source" not in fields(problems)
    # the layout is huggingface_hub's own: its scanner and the loaders read it, offline
    (repo,) = scan_cache_dir(hub_pipeline).repos
    assert repo.repo_id == "owner/tiny-sd" and set(repo.refs) == {"main"}
    assert repo.nb_files == len([f for f in tiny_source.rglob("*") if f.is_file()])
    unet = UNet2DConditionModel.from_pretrained("owner/tiny-sd", subfolder="unet",
                                                cache_dir=hub_pipeline, local_files_only=True)
    assert list(unet.config.block_out_channels) == [32, 64]
    tokenizer = CLIPTokenizer.from_pretrained("owner/tiny-sd", subfolder="tokenizer",
                                              cache_dir=hub_pipeline, local_files_only=True)
    assert tokenizer("a cat").input_ids[0] == 49406


def test_a_hub_pipeline_missing_one_file_is_named_with_the_command_to_fetch_it(tmp_path,
                                                                               hub_pipeline):
    snapshot = hub_pipeline / "models--owner--tiny-sd" / "snapshots" / EXAMPLE_SHA
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    config = load_run_config(None, ["model.source=owner/tiny-sd", *EVAL_RANDOM])
    (problem,) = [p for p in find_problems(config, downloads=downloads(tmp_path))
                  if p.slot.field == "model.source"]
    assert str(problem) == (
        f"model.source = 'owner/tiny-sd': owner/tiny-sd is not in the Hugging Face cache "
        f"{hub_pipeline} (missing unet/diffusion_pytorch_model.safetensors (or "
        f"unet/diffusion_pytorch_model.bin)) and HF_HUB_OFFLINE is set; fetch it with `hf "
        f"download owner/tiny-sd unet/diffusion_pytorch_model.safetensors` (with this HF_HOME / "
        f"HF_HUB_CACHE), unset HF_HUB_OFFLINE to let the run download it, or point model.source "
        f"at a local copy")
    # a revision the cache does not hold is missing as a whole
    config = load_run_config(None, ["model.source=owner/tiny-sd", "model.revision=v2",
                                    *EVAL_RANDOM])
    (problem,) = [p for p in find_problems(config, downloads=downloads(tmp_path))
                  if p.slot.field == "model.source"]
    assert "owner/tiny-sd@v2 is not in the Hugging Face cache" in problem.reason
    assert "`hf download owner/tiny-sd --revision v2 tokenizer/vocab.json" in problem.fix


def test_hub_id_not_cached_offline_is_named_with_hf_download(tmp_path):
    config = load_run_config(None, ["model.source=owner/repo", *EVAL_RANDOM])
    problem = find_problems(config, downloads=downloads(tmp_path))[0]
    assert problem.slot.field == "model.source"
    assert problem.reason.startswith("owner/repo is not in the Hugging Face cache")
    assert problem.reason.endswith("scheduler/scheduler_config.json) and HF_HUB_OFFLINE is set")
    assert problem.fix.startswith("fetch it with `hf download owner/repo tokenizer/vocab.json "
                                  "tokenizer/merges.txt text_encoder/config.json")


def test_model_problems_are_the_model_sources_alone(tmp_path, tiny_source):
    from textcraftor.sources_check import model_problems

    settings = downloads(tmp_path)
    # a local pipeline folder: no model problem, whatever its rewards lack
    assert model_problems(load_run_config(None, [f"model.source={tiny_source}"]), settings) == []
    assert find_problems(load_run_config(None, [f"model.source={tiny_source}"]),
                         downloads=settings) != []
    (problem,) = model_problems(load_run_config(None, ["model.source=owner/repo"]), settings)
    assert problem.slot.field == "model.source" and "HF_HUB_OFFLINE is set" in problem.reason


def test_a_folder_that_is_not_a_pipeline_is_named(tmp_path):
    (tmp_path / "not-a-pipeline").mkdir()
    config = load_run_config(None, [f"model.source={tmp_path / 'not-a-pipeline'}"])
    with pytest.raises(SourceError) as caught:
        check_sources(config, downloads=downloads(tmp_path))
    assert isinstance(caught.value, FileNotFoundError)  # what the command lines catch
    assert caught.value.problems[0].reason == ("is a path but not a diffusers pipeline folder "
                                               "(no unet/ subfolder)")


# --- rewards ---------------------------------------------------------------------------------

def test_default_reward_sources_offline_with_an_empty_cache_are_all_listed(tmp_path,
                                                                           tiny_source):
    # a local pipeline folder (no preset): every reward falls back to its real checkpoint
    config = load_run_config(None, [f"model.source={tiny_source}", ALL_REWARDS])
    problems = find_problems(config, downloads=downloads(tmp_path))
    assert fields(problems) == [
        "reward.sources.aesthetic.source", "reward.sources.aesthetic.backbone",
        "reward.sources.pickscore.source", "reward.sources.pickscore.backbone",
        "reward.sources.hpsv2.source", "reward.sources.hpsv2.1.source",
        "reward.sources.clip.source", "eval.lpips_trunk", "eval.features"]
    assert [p.slot.value for p in problems[:7]] == [
        "trl-lib/ddpo-aesthetic-predictor:aesthetic-model.pth", "openai/clip-vit-large-patch14",
        "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "xswu/HPSv2:HPS_v2_compressed.pt", "xswu/HPSv2:HPS_v2.1_compressed.pt",
        "laion2b_s34b_b88k"]
    assert all(p.slot.default for p in problems[:7])
    assert str(problems[6].slot) == ("reward.sources.clip.source = 'laion2b_s34b_b88k' "
                                     "(default; needed by reward.clip_constraint)")
    assert all("HF_HUB_OFFLINE is set" in p.reason for p in problems)
    assert [p.fix.split("`")[1] for p in problems[:7]] == [
        "hf download trl-lib/ddpo-aesthetic-predictor aesthetic-model.pth",
        "hf download openai/clip-vit-large-patch14 config.json model.safetensors",
        "hf download yuvalkirstain/PickScore_v1 config.json model.safetensors",
        "hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K vocab.json merges.txt",
        "hf download xswu/HPSv2 HPS_v2_compressed.pt",
        "hf download xswu/HPSv2 HPS_v2.1_compressed.pt",
        "hf download laion/CLIP-ViT-g-14-laion2B-s34B-b88K open_clip_pytorch_model.bin"]


def test_default_reward_sources_in_the_cache_pass(tmp_path, tiny_source):
    settings = downloads(tmp_path)
    for repo, files in DEFAULT_FILES.items():
        for name in files:
            cache_file(settings.hub_cache, repo, name)
    settings.torch_checkpoints.mkdir(parents=True)
    for url in (ALEXNET_URL, INCEPTION_URL):
        (settings.torch_checkpoints / url.rsplit("/", 1)[1]).write_bytes(b"x")
    config = load_run_config(None, [f"model.source={tiny_source}", ALL_REWARDS])
    assert find_problems(config, downloads=settings) == []
    # open_clip tries the safetensors twin first: either one in the cache will do
    snapshot = settings.hub_cache / "models--laion--CLIP-ViT-g-14-laion2B-s34B-b88K" / "snapshots"
    (snapshot / EXAMPLE_SHA / "open_clip_pytorch_model.bin").unlink()
    assert fields(find_problems(config, downloads=settings)) == ["reward.sources.clip.source"]
    cache_file(settings.hub_cache, "laion/CLIP-ViT-g-14-laion2B-s34B-b88K",
               "open_clip_model.safetensors")
    assert find_problems(config, downloads=settings) == []


def test_missing_local_reward_overrides_are_named(tmp_path):
    (tmp_path / "head-folder").mkdir()
    config = load_run_config(None, [
        "model.source=tiny", "reward.weights={aesthetic: 1, hpsv2: 1}",
        f"reward.sources={{aesthetic: {{source: {tmp_path}/head-folder, backbone: "
        f"{tmp_path}/tower}}, hpsv2: {{source: {tmp_path}/hps.pt, backbone: ViT-Nope}}, "
        f"clip: {{source: nope_tag, backbone: ViT-H-14}}}}"])
    problems = find_problems(config, downloads=downloads(tmp_path))
    assert [str(p) for p in problems] == [
        f"reward.sources.aesthetic.source = '{tmp_path}/head-folder' (needed by "
        f"reward.weights.aesthetic): {tmp_path}/head-folder is a folder; expected a weights "
        f"file; give the weights file itself",
        f"reward.sources.aesthetic.backbone = '{tmp_path}/tower' (needed by "
        f"reward.weights.aesthetic): no such folder: {tmp_path}/tower; fix the path",
        "reward.sources.hpsv2.backbone = 'ViT-Nope' (needed by reward.weights.hpsv2): not an "
        "open_clip model name (open_clip.list_models()), a model-config .json or "
        "hf-hub:owner/repo; give one of those",
        f"reward.sources.hpsv2.source = '{tmp_path}/hps.pt' (needed by reward.weights.hpsv2): "
        f"no such file: {tmp_path}/hps.pt; fix the path",
        "reward.sources.clip.source = 'nope_tag' (needed by reward.clip_constraint): not a "
        "pretrained tag of open_clip ViT-H-14 (its tags: laion2b_s32b_b79k, metaclip_fullcc, "
        "metaclip_altogether, dfn5b); give one of those or a checkpoint file",
    ]


def test_the_tiny_and_shapes_presets_need_nothing_from_outside(tmp_path):
    for source in ("tiny", "shapes"):
        config = load_run_config(None, [f"model.source={source}", "reward.weights={aesthetic: 1}"])
        assert find_problems(config, downloads=downloads(tmp_path)) == []


def test_sd15_random_with_the_sd15_arch_rewards_needs_nothing_from_outside(tmp_path):
    """The paper's profile with random weights: every reward, the evaluation's CLIP and its
    networks built here; a reward the user points elsewhere is still checked."""
    every = ["model.source=sd15-random", "reward.preset=sd15-arch",
             "reward.weights={aesthetic: 1, pickscore: 1, hpsv2: 1, hpsv2.1: 1}"]
    config = load_run_config(None, every)
    assert find_problems(config, downloads=downloads(tmp_path)) == []
    config = load_run_config(None, [*every, "reward.sources.pickscore.source=/no/such/folder"])
    assert fields(find_problems(config, downloads=downloads(tmp_path))) == [
        "reward.sources.pickscore.source", "reward.sources.pickscore.backbone"]  # = the source


def test_the_sweep_checks_its_quality_and_searched_rewards_too(tmp_path, monkeypatch):
    from study.config import load_study_config
    from study.sweep import check_model_weights

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # shapes ships aesthetic and clip only: pickscore in the quality score is a source problem
    study = load_study_config(None, ["objectives.quality_weights={aesthetic: 1, pickscore: 1}"])
    with pytest.raises(SourceError) as caught:
        check_model_weights(study)
    assert [str(p) for p in caught.value.problems] == [
        "base.reward.sources.pickscore (needed by objectives.quality_weights.pickscore): the "
        "shapes preset has rewards aesthetic, clip, oracle only; set base.reward.sources.pickscore."
        "source (and .backbone) to real weights, or drop objectives.quality_weights.pickscore"]
    # a searched weight the preset lacks is refused when the study loads, at the value drawn
    with pytest.raises(ConfigError, match=r"search.reward.weights.hpsv2.high: 1.0 is refused by "
                       r"the run config: reward.weights.hpsv2: the shapes preset"):
        load_study_config(None, ["search={reward.weights.hpsv2: {low: 0, high: 1}}",
                                 "tuner.reference_first=false"])


def test_the_sweep_checks_every_searched_model_source(tmp_path):
    from study.config import load_study_config
    from study.sweep import check_model_weights

    study = load_study_config(None, ["search={model.source: {choices: [shapes, /no/such/sd]}}",
                                     "tuner.reference_first=false"])
    with pytest.raises(SourceError) as caught:
        check_model_weights(study)
    # the drawn folder, and what a real model's trial would fetch (the rewards' real weights)
    assert fields(caught.value.problems)[0] == "base.model.source"
    assert "/no/such/sd" in str(caught.value.problems[0])


# --- evaluation networks ---------------------------------------------------------------------


def test_pretrained_lpips_offline_without_the_torch_hub_file_is_named(tmp_path):
    settings = downloads(tmp_path)
    config = load_run_config(None, ["model.source=tiny", "eval.lpips_trunk=pretrained"])
    (problem,) = find_problems(config, downloads=settings)
    target = settings.torch_checkpoints / "alexnet-owt-7be5be79.pth"
    assert str(problem) == (
        f"eval.lpips_trunk = 'pretrained' (needed by eval.diversity): torchvision's AlexNet "
        f"weights (the LPIPS trunk) not in {settings.torch_checkpoints} and HF_HUB_OFFLINE is "
        f"set; fetch them with `curl -L --create-dirs -o {target} {ALEXNET_URL}`, or set "
        f"eval.diversity=false")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert find_problems(config, downloads=settings) == []
    off = load_run_config(None, ["model.source=tiny", "eval.lpips_trunk=pretrained",
                                 "eval.diversity=false", "eval.features=inception"])
    assert fields(find_problems(off, downloads=settings)) == ["eval.features"]


def test_auto_picks_the_pretrained_networks_where_the_evaluator_does():
    from textcraftor.evaluation import Evaluator
    from textcraftor.sources_check import RANDOM_EVAL_PRESETS

    for source in ("tiny", "shapes", "sd15-random", "owner/repo", "/some/folder"):
        config = load_run_config(None, [f"model.source={source}"])
        evaluator = Evaluator(config, objective=None, device="cpu", load_rewards=None)
        assert evaluator._offline_defaults() == (source in RANDOM_EVAL_PRESETS), source


def test_the_evaluation_urls_and_folders_are_the_libraries_own(tmp_path, monkeypatch):
    import torch
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert ALEXNET_URL == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    assert INCEPTION_URL == URL_INCEPTION_V3
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hh"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    found = Downloads.from_environment()
    assert found.torch_checkpoints == Path(torch.hub.get_dir()) / "checkpoints"
    assert found.hub_cache == tmp_path / "hh" / "hub"
    assert found.offline  # conftest sets HF_HUB_OFFLINE=1
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    found = Downloads.from_environment()
    assert (found.hub_cache, found.offline, found.endpoint) == (
        tmp_path / "elsewhere", False, "http://127.0.0.1:9")


# --- online: one short probe, not minutes of retries -----------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_is_named_within_the_probe_time(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    config = load_run_config(None, ["model.source=owner/repo", *EVAL_RANDOM])
    started = time.perf_counter()
    problems = find_problems(config, downloads=downloads(tmp_path, offline=False,
                                                         endpoint=endpoint))
    assert time.perf_counter() - started < 5
    assert fields(problems) == ["model.source", "reward.sources.aesthetic.source",
                                "reward.sources.aesthetic.backbone", "reward.sources.clip.source"]
    assert all(f"and {endpoint} does not answer (" in p.reason for p in problems)
    assert problems[0].fix.startswith("fix the network or HF_ENDPOINT, fetch it where the hub "
                                      "answers with `hf download owner/repo tokenizer/vocab.json")


def test_a_silent_hub_is_given_up_on_after_the_probe_timeout(tmp_path):
    with socket.socket() as server:  # accepts connections (backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        config = load_run_config(None, ["model.source=owner/repo", *EVAL_RANDOM])
        started = time.perf_counter()
        problems = find_problems(config, downloads=downloads(
            tmp_path, offline=False, endpoint=endpoint, probe_timeout_s=0.5))
        wall = time.perf_counter() - started
    assert 0.5 <= wall < 3
    assert len(problems) == 4 and all(f"and {endpoint} does not answer" in p.reason
                                      for p in problems)


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_reachable_hub_lets_the_run_download_what_is_not_cached(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        config = load_run_config(None, ["model.source=owner/repo", *EVAL_RANDOM])
        assert find_problems(config, downloads=downloads(tmp_path, offline=False,
                                                         endpoint=endpoint)) == []
    finally:
        server.shutdown()
        server.server_close()


def test_offline_no_network_call_is_made(tmp_path):
    # offline, an endpoint that would hang every probe: the check returns at once
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        config = load_run_config(None, ["model.source=owner/repo", *EVAL_RANDOM])
        started = time.perf_counter()
        problems = find_problems(config, downloads=downloads(tmp_path, endpoint=endpoint,
                                                             probe_timeout_s=30))
        assert time.perf_counter() - started < 1
    assert len(problems) == 4 and all("HF_HUB_OFFLINE is set" in p.reason for p in problems)
