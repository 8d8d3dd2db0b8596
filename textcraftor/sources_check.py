"""Every model, reward and evaluation weight a run would load, resolved before any work starts.

``check_sources(config)`` runs where a mistake is cheap to report: in ``python -m
textcraftor.train`` before the trainer is built, and in the sweep driver before Ray starts (a
missing folder used to surface only inside Ray workers, after minutes of download retries).
It loads no weights. Local paths are looked up; hub files in the Hugging Face cache
(``try_to_load_from_cache``); URL downloads (torch.hub, open_clip) in their cache folders.
What is not cached is an error offline (``HF_HUB_OFFLINE``: no network call at all); online, each
host is probed once, all at once, for at most ``PROBE_TIMEOUT_S`` seconds, and what an
unreachable host would have to serve is an error. Problems are reported together, one line
each: the field (dotted config path), its value, what is wrong and how to fix it.

What a run loads: ``model.source`` (presets are built locally; a hub id needs the pipeline's
files); every active reward, the study's extra rewards and the CLIP model (the evaluation scores
CLIP even at λ = 0), each from ``reward.sources.<name>``, else from the preset (tiny, shapes), else
from ``DEFAULT_SOURCES``; and, when ``auto`` resolves to them, the evaluation's pretrained
networks (torchvision's AlexNet for LPIPS, torch-fidelity's Inception for KID/FID).

Rewards are imported only when a real reward source must be checked: ``textcraftor.rewards``
imports torch, transformers and open_clip (~8 s on a small CPU).
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from textcraftor.config import PRESETS, SHAPES_REWARDS, RunConfig
from textcraftor.shapes_weights import is_shapes_preset

HUB_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")  # a hub repo id, owner/repo
PROBE_TIMEOUT_S = 5.0  # the whole reachability probe, all hosts at once
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's truthy environment values

# The evaluation's pretrained networks, downloaded by torch.hub into
# $TORCH_HOME/hub/checkpoints/<file name>: torchvision's AlexNet_Weights.IMAGENET1K_V1 (the LPIPS
# trunk) and torch-fidelity's URL_INCEPTION_V3 (KID/FID features). A test pins both to the
# libraries' own constants.
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
# eval.lpips_trunk / eval.features = auto pick random networks for these (Evaluator's rule)
RANDOM_EVAL_PRESETS = ("tiny", "shapes", "shapes-s", "sd15-random")

# Files a loader reads, each as alternatives (any one present will do), first = the usual one.
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                         "pytorch_model.bin.index.json")
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.safetensors.index.json",
                      "diffusion_pytorch_model.bin.index.json")
TRANSFORMERS_MODEL = (("config.json",), _TRANSFORMERS_WEIGHTS)  # from_pretrained of a model
TOKENIZER = (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json"))  # CLIPTokenizer


def _within(folder: str, files: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"{folder}/{name}" for name in alternatives) for alternatives in files)


# What load_pipeline reads from a diffusers pipeline repo.
PIPELINE_FILES = (
    *_within("tokenizer", TOKENIZER),
    *_within("text_encoder", TRANSFORMERS_MODEL),
    *_within("unet", (("config.json",), _DIFFUSERS_WEIGHTS)),
    *_within("vae", (("config.json",), _DIFFUSERS_WEIGHTS)),
    ("scheduler/scheduler_config.json",),
)


@dataclass(frozen=True)
class Downloads:
    """Where downloads land and whether the network may be used, as the loaders will see it."""

    hub_cache: Path  # huggingface_hub's cache (HF_HUB_CACHE, default $HF_HOME/hub)
    torch_checkpoints: Path  # torch.hub's downloads ($TORCH_HOME/hub/checkpoints)
    clip_cache: Path  # open_clip's URL downloads (~/.cache/clip)
    offline: bool  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): no network call at all
    endpoint: str = DEFAULT_ENDPOINT  # the hub (HF_ENDPOINT)
    probe_timeout_s: float = PROBE_TIMEOUT_S  # longest wait for every host to answer

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Downloads:
        """Read now (not at import, as huggingface_hub's constants are) with the libraries'
        rules: this is the environment the driver forwards to every trial."""
        env = os.environ if environ is None else environ

        def expand(path: str) -> Path:
            return Path(os.path.expandvars(os.path.expanduser(path)))

        cache_home = env.get("XDG_CACHE_HOME", "~/.cache")
        hf_home = env.get("HF_HOME", os.path.join(cache_home, "huggingface"))
        hub = env.get("HF_HUB_CACHE",
                      env.get("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub")))
        torch_home = env.get("TORCH_HOME", os.path.join(cache_home, "torch"))
        offline = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
        return cls(hub_cache=expand(hub),
                   torch_checkpoints=expand(torch_home) / "hub" / "checkpoints",
                   clip_cache=expand("~/.cache/clip"), offline=offline.upper() in _TRUE,
                   endpoint=env.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/"))


@dataclass(frozen=True)
class Slot:
    """One config field that names weights to load."""

    field: str  # dotted config path, e.g. base.reward.sources.clip.backbone
    value: str | None  # what it holds (the default when unset); None: nothing
    default: bool = False  # the field is unset and ``value`` is its default
    needed_by: str = ""  # the field that makes the run load it, e.g. reward.weights.aesthetic

    def __str__(self) -> str:
        notes = ["default"] if self.default else []
        if self.needed_by:
            notes.append(f"needed by {self.needed_by}")
        text = self.field if self.value is None else f"{self.field} = {self.value!r}"
        return f"{text} ({'; '.join(notes)})" if notes else text


@dataclass(frozen=True)
class Problem:
    """Why one field's weights cannot be loaded, and how to fix it."""

    slot: Slot
    reason: str  # what is wrong
    fix: str = ""  # how to fix it

    def __str__(self) -> str:
        return f"{self.slot}: {self.reason}" + (f"; {self.fix}" if self.fix else "")


class SourceError(FileNotFoundError):
    """Weights a run needs are missing or cannot be fetched; one line per problem."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} weight source(s) cannot be used (checked before "
                         f"any model loads):\n{lines}")


@dataclass(frozen=True)
class HubFiles:
    """Files a loader would fetch from one hub repo (``hf_hub_download``, ``from_pretrained``)."""

    slot: Slot
    repo: str  # owner/repo
    files: tuple[tuple[str, ...], ...]  # each needed file as alternatives, the first suggested
    revision: str | None = None  # None: main


@dataclass(frozen=True)
class UrlFile:
    """A file a loader would download from a URL into a cache folder (torch.hub, open_clip)."""

    slot: Slot
    url: str
    target: Path  # where the loader looks for it first
    what: str  # e.g. "torchvision's AlexNet weights (the LPIPS trunk)"
    instead: str = ""  # an alternative to fetching it, e.g. "set eval.diversity=false"


@dataclass
class Plan:
    """What a run would load: problems found without looking at any cache, and downloads."""

    problems: list[Problem] = field(default_factory=list)
    hub: list[HubFiles] = field(default_factory=list)
    urls: list[UrlFile] = field(default_factory=list)


def check_sources(config: RunConfig, extra_rewards: Mapping[str, str] | None = None, *,
                  prefix: str = "", downloads: Downloads | None = None) -> None:
    """Raise SourceError listing every weight source of ``config`` that cannot be used.

    ``extra_rewards``: rewards loaded beyond the active ones → the field that asks for them
    (the sweep's ``objectives.quality_weights``, scored by every trial's evaluator). ``prefix``
    is put before the run config's fields (``base.`` in a study). ``downloads``: default, the
    environment. Offline it makes no network call; online, at most one probe of each host that
    would have to serve an uncached file (``Downloads.probe_timeout_s``, 5 s, in all).
    """
    problems = find_problems(config, extra_rewards, prefix=prefix, downloads=downloads)
    if problems:
        raise SourceError(problems)


def find_problems(config: RunConfig, extra_rewards: Mapping[str, str] | None = None, *,
                  prefix: str = "", downloads: Downloads | None = None) -> list[Problem]:
    """Every problem ``check_sources`` would raise, in field order (model, rewards, eval)."""
    downloads = downloads or Downloads.from_environment()
    plan = Plan()
    plan_model(plan, config, prefix)
    plan_rewards(plan, config, extra_rewards or {}, prefix, downloads)
    plan_eval(plan, config, prefix, downloads)
    return plan.problems + missing_downloads(plan, downloads)


def model_problems(config: RunConfig, downloads: Downloads | None = None) -> list[Problem]:
    """The problems of ``model.source`` alone: empty when the model's files can be read (what
    the limits check, ``textcraftor.limits``, needs before it reads the model's configs)."""
    downloads = downloads or Downloads.from_environment()
    plan = Plan()
    plan_model(plan, config, "")
    return plan.problems + missing_downloads(plan, downloads)


# --- model.source ----------------------------------------------------------------------------


def model_source_problem(source: str) -> str | None:
    """Why ``source`` (not a preset) cannot be a ``model.source``; None for an existing diffusers
    pipeline folder or a hub id (owner/repo)."""
    path = Path(source).expanduser()
    if path.exists():
        if (path / "unet").is_dir():
            return None
        return "is a path but not a diffusers pipeline folder (no unet/ subfolder)"
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return None
    return f"no such folder, and not a preset ({', '.join(PRESETS)}) or hub id"


def plan_model(plan: Plan, config: RunConfig, prefix: str) -> None:
    m = config.model
    slot = Slot(f"{prefix}model.source", m.source)
    if m.source in ("tiny", "sd15-random"):  # built here, from configs
        return
    if is_shapes_preset(m.source):
        from textcraftor.shapes_weights import shapes_folder  # every file's checksum, ~50 ms

        try:
            shapes_folder(m.source)
        except FileNotFoundError as error:  # DamagedWeightsError: the message says how to rebuild
            plan.problems.append(Problem(slot, str(error)))
        return
    problem = model_source_problem(m.source)
    if problem is not None:
        plan.problems.append(Problem(slot, problem, "give an existing diffusers folder (with "
                                     f"unet/), a preset ({', '.join(PRESETS)}) or a hub id "
                                     "owner/repo"))
    elif not Path(m.source).expanduser().exists():
        plan.hub.append(HubFiles(slot, m.source, PIPELINE_FILES, m.revision))


# --- rewards ---------------------------------------------------------------------------------


def rewards_needed(config: RunConfig, extra_rewards: Mapping[str, str],
                   prefix: str) -> dict[str, str]:
    """Every reward the run loads → the field that makes it load."""
    needed = {name: f"{prefix}reward.clip_constraint" if name == "clip"
              else f"{prefix}reward.weights.{name}" for name in config.reward.active()}
    for name in config.eval.quality_weights:  # scored at evaluation (the Evaluator builds them)
        needed.setdefault(name, f"{prefix}eval.quality_weights.{name}")
    for name, by in extra_rewards.items():
        needed.setdefault(name, by)
    needed.setdefault("clip", f"{prefix}eval (every evaluation reports the CLIP score)")
    return needed


def plan_rewards(plan: Plan, config: RunConfig, extra_rewards: Mapping[str, str], prefix: str,
                 downloads: Downloads) -> None:
    """Each reward's source as its loader reads it: an override, else the preset's (built here
    for tiny; the shapes folder, checked with model.source), else ``DEFAULT_SOURCES``."""
    preset = config.model.source
    for name, needed_by in rewards_needed(config, extra_rewards, prefix).items():
        field_ = f"{prefix}reward.sources.{name}"
        override = config.reward.sources.get(name)
        if override is None and (preset == "tiny" or config.reward.preset == "sd15-arch"):
            continue  # built here: tiny rewards, or real architectures with random weights
        if override is None and is_shapes_preset(preset):
            if name not in SHAPES_REWARDS:
                plan.problems.append(Problem(
                    Slot(field_, None, needed_by=needed_by),
                    f"the {preset} preset has rewards {', '.join(SHAPES_REWARDS)} only",
                    f"set {field_}.source (and .backbone) to real weights, or drop "
                    f"{needed_by}"))
            continue
        from textcraftor.rewards import DEFAULT_SOURCES

        chosen = DEFAULT_SOURCES[name] if override is None else override
        plan_reward(plan, name, chosen.source, chosen.backbone, field_, override is None,
                    needed_by, downloads)


def plan_reward(plan: Plan, name: str, source: str, backbone: str | None, field_: str,
                default: bool, needed_by: str, downloads: Downloads) -> None:
    """One reward's weights as its loader (``textcraftor.rewards.<loader>``) interprets them."""
    from textcraftor.rewards.clip_similarity import CLIP_BACKBONE, is_transformers_folder
    from textcraftor.rewards.hps import HPS_BACKBONE

    weights = Slot(f"{field_}.source", source, default, needed_by)

    def backbone_slot(value: str | None, implied: bool = False) -> Slot:
        return Slot(f"{field_}.backbone", value, default or implied, needed_by)

    if name == "aesthetic":  # load_aesthetic: the head file, the CLIP vision tower
        weights_file(plan, weights)
        if backbone is None:
            plan.problems.append(Problem(backbone_slot(None), "aesthetic needs the CLIP vision "
                                         "tower", f"set {field_}.backbone to a hub id or folder "
                                         "(default openai/clip-vit-large-patch14)"))
        else:
            pretrained(plan, backbone_slot(backbone), TRANSFORMERS_MODEL)
    elif name == "pickscore" or (name == "clip" and is_transformers_folder(source)):
        # load_clip_model: a transformers CLIPModel, its tokenizer (default: the same place)
        pretrained(plan, weights, TRANSFORMERS_MODEL)
        pretrained(plan, backbone_slot(backbone or source, backbone is None), TOKENIZER)
    else:  # hpsv2, hpsv2.1, clip: create_open_clip
        model = backbone or (CLIP_BACKBONE if name == "clip" else HPS_BACKBONE)
        open_clip_weights(plan, weights, backbone_slot(model, backbone is None), downloads)


def weights_file(plan: Plan, slot: Slot) -> None:
    """``resolve_file``: a local file, or one hub file ``owner/repo:filename``."""
    from textcraftor.rewards.sources import is_hub_file, is_local_path

    ref = slot.value
    if is_hub_file(ref):
        repo, _, filename = ref.partition(":")
        if HUB_ID.match(repo) and filename:
            plan.hub.append(HubFiles(slot, repo, ((filename,),)))
        else:
            plan.problems.append(Problem(slot, "not owner/repo:filename",
                                         "give a hub file owner/repo:filename or a local file"))
    elif is_local_path(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            plan.problems.append(Problem(slot, f"no such file: {path}", "fix the path"))
        elif not path.is_file():
            plan.problems.append(Problem(slot, f"{path} is a folder; expected a weights file",
                                         "give the weights file itself"))
    else:
        plan.problems.append(Problem(slot, "not a local file or a hub file owner/repo:filename",
                                     "give one of those"))


def pretrained(plan: Plan, slot: Slot, files: tuple[tuple[str, ...], ...]) -> None:
    """``hub_or_folder`` + ``from_pretrained``: a local folder holding ``files``, or a hub id."""
    from textcraftor.rewards.sources import is_local_path

    ref = slot.value
    if is_local_path(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            plan.problems.append(Problem(slot, f"no such folder: {path}" if not path.exists()
                                         else f"{path} is a file; expected a folder",
                                         "fix the path"))
            return
        lacking = [alternatives for alternatives in files
                   if not any((path / name).is_file() for name in alternatives)]
        if lacking:
            plan.problems.append(Problem(slot, f"{path} has no {_names(lacking)}",
                                         "give a folder written by save_pretrained"))
    elif HUB_ID.match(ref):
        plan.hub.append(HubFiles(slot, ref, files))
    else:
        plan.problems.append(Problem(slot, "not an existing folder or a hub id owner/repo",
                                     "give one of those"))


def open_clip_weights(plan: Plan, weights: Slot, backbone: Slot, downloads: Downloads) -> None:
    """``create_open_clip``: the backbone is an open_clip model name, a model-config ``.json``
    or ``hf-hub:owner/repo`` (config and weights from the hub; a pretrained tag is then
    ignored); the weights a checkpoint (path or ``owner/repo:file``) or a pretrained tag."""
    import open_clip

    from textcraftor.rewards.sources import is_local_path

    name, ref = backbone.value, weights.value
    model = None
    if name.startswith("hf-hub:"):
        repo = name.removeprefix("hf-hub:")
        plan.hub.append(HubFiles(backbone, repo, (("open_clip_config.json",),
                                                  _open_clip_hub_files(""))))
    elif name.endswith(".json"):
        if not Path(name).expanduser().is_file():
            plan.problems.append(Problem(backbone, f"no such model-config file: {name}",
                                         "fix the path or give an open_clip model name"))
    elif name in open_clip.list_models():
        model = name
    else:
        plan.problems.append(Problem(backbone, "not an open_clip model name "
                                     "(open_clip.list_models()), a model-config .json or "
                                     "hf-hub:owner/repo", "give one of those"))
    if is_local_path(ref) or ":" in ref:
        weights_file(plan, weights)
    elif model is not None:
        plan_open_clip_tag(plan, weights, model, downloads)


def plan_open_clip_tag(plan: Plan, slot: Slot, model: str, downloads: Downloads) -> None:
    """What ``open_clip.create_model(model, pretrained=tag)`` downloads: its pretrained config's
    hub repo/file (preferred), else its URL into ~/.cache/clip."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, slot.value)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        plan.problems.append(Problem(slot, f"not a pretrained tag of open_clip {model} (its "
                                     f"tags: {tags})", "give one of those or a checkpoint file"))
    elif cfg.get("file"):
        weights_file(plan, Slot(slot.field, cfg["file"], slot.default, slot.needed_by))
    elif cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        plan.hub.append(HubFiles(slot, repo, (_open_clip_hub_files(filename),)))
    elif cfg.get("url"):
        url = cfg["url"]
        plan.urls.append(UrlFile(slot, url, downloads.clip_cache / os.path.basename(url),
                                 f"open_clip {model} weights"))


def _open_clip_hub_files(filename: str) -> tuple[str, ...]:
    """``download_pretrained_from_hf``: the named file (default open_clip_pytorch_model.bin) or
    its safetensors twin, which open_clip tries first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return filename, HF_SAFE_WEIGHTS_NAME
    if filename.endswith((".bin", ".pth")):
        return filename, filename[:-4] + ".safetensors"
    return (filename,)


# --- evaluation ------------------------------------------------------------------------------


def plan_eval(plan: Plan, config: RunConfig, prefix: str, downloads: Downloads) -> None:
    """The evaluation's pretrained networks, where ``auto`` or the config picks them."""
    e, source = config.eval, config.model.source
    auto = "random" if source in RANDOM_EVAL_PRESETS else "pretrained"
    if e.diversity and (auto if e.lpips_trunk == "auto" else e.lpips_trunk) == "pretrained":
        slot = Slot(f"{prefix}eval.lpips_trunk", e.lpips_trunk,
                    needed_by=f"{prefix}eval.diversity")
        plan.urls.append(UrlFile(slot, ALEXNET_URL, downloads.torch_checkpoints
                                 / os.path.basename(ALEXNET_URL),
                                 "torchvision's AlexNet weights (the LPIPS trunk)",
                                 f"set {prefix}eval.diversity=false"))
    auto = "random" if source in RANDOM_EVAL_PRESETS else "inception"
    if e.distribution and (auto if e.features == "auto" else e.features) == "inception":
        slot = Slot(f"{prefix}eval.features", e.features, needed_by=f"{prefix}eval.distribution")
        plan.urls.append(UrlFile(slot, INCEPTION_URL, downloads.torch_checkpoints
                                 / os.path.basename(INCEPTION_URL),
                                 "torch-fidelity's Inception weights (KID/FID features)",
                                 f"set {prefix}eval.distribution=false"))


# --- caches and the network ------------------------------------------------------------------


def uncached(need: HubFiles, hub_cache: Path) -> list[tuple[str, ...]]:
    """The files of ``need`` with no alternative in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        found = try_to_load_from_cache(need.repo, name, cache_dir=hub_cache,
                                       revision=need.revision)
        return isinstance(found, str)  # else None, or the "known not to exist" marker

    return [alternatives for alternatives in need.files
            if not any(cached(name) for name in alternatives)]


def probe(urls: Iterable[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, str | None]:
    """{url: None if it answered (any HTTP status), else why not}. One HEAD request per URL, all
    in parallel; the whole probe returns within ``timeout_s`` (name resolution, which urllib's
    timeout does not bound, included). Proxies come from the environment, as for the loaders."""
    urls = list(dict.fromkeys(urls))
    answers: dict[str, str | None] = {}

    def ask(url: str) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                   timeout=timeout_s).close()
            answers[url] = None
        except urllib.error.HTTPError:  # it answered, if only with an error status
            answers[url] = None
        except (OSError, ValueError) as error:  # URLError, refused, timed out, bad URL
            answers[url] = str(getattr(error, "reason", error))

    threads = [threading.Thread(target=ask, args=(url,), daemon=True) for url in urls]
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    silent = f"no answer within {timeout_s:g} s"
    return {url: answers.get(url, silent) for url in urls}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def missing_downloads(plan: Plan, downloads: Downloads) -> list[Problem]:
    """Problems for what is not cached and cannot be fetched: everything offline; online, what
    an unreachable host would have to serve."""
    hub = [(need, lacking) for need in plan.hub
           if (lacking := uncached(need, downloads.hub_cache))]
    urls = [need for need in plan.urls if not need.target.is_file()]
    if not hub and not urls:
        return []
    if downloads.offline:
        answers: dict[str, str | None] = {}
    else:
        hosts = ([downloads.endpoint] if hub else []) + [_origin(u.url) for u in urls]
        answers = probe(hosts, downloads.probe_timeout_s)
    problems = []
    for need, lacking in hub:
        why = "HF_HUB_OFFLINE is set" if downloads.offline else answers[downloads.endpoint]
        if why is not None:
            problems.append(hub_problem(need, lacking, downloads, why))
    for need in urls:
        why = "HF_HUB_OFFLINE is set" if downloads.offline else answers[_origin(need.url)]
        if why is not None:
            problems.append(url_problem(need, downloads, why))
    return problems


def _names(files: Iterable[tuple[str, ...]]) -> str:
    """Each file with its usual alternative (sharded-index alternatives left unsaid)."""
    return ", ".join(alternatives[0] + (f" (or {alternatives[1]})" if alternatives[1:] else "")
                     for alternatives in files)


def hub_problem(need: HubFiles, lacking: list[tuple[str, ...]], downloads: Downloads,
                why: str) -> Problem:
    revision = f" --revision {need.revision}" if need.revision else ""
    command = (f"hf download {need.repo}{revision} "
               f"{' '.join(alternatives[0] for alternatives in lacking)}")
    reason = (f"{need.repo}{'@' + need.revision if need.revision else ''} is not in the Hugging "
              f"Face cache {downloads.hub_cache} (missing {_names(lacking)})")
    if downloads.offline:
        return Problem(need.slot, f"{reason} and {why}",
                       f"fetch it with `{command}` (with this HF_HOME / HF_HUB_CACHE), unset "
                       f"HF_HUB_OFFLINE to let the run download it, or point "
                       f"{need.slot.field} at a local copy")
    return Problem(need.slot, f"{reason} and {downloads.endpoint} does not answer ({why})",
                   f"fix the network or HF_ENDPOINT, fetch it where the hub answers with "
                   f"`{command}`, or point {need.slot.field} at a local copy")


def url_problem(need: UrlFile, downloads: Downloads, why: str) -> Problem:
    command = f"curl -L --create-dirs -o {need.target} {need.url}"
    instead = f", or {need.instead}" if need.instead else ""
    if downloads.offline:
        return Problem(need.slot, f"{need.what} not in {need.target.parent} and {why}",
                       f"fetch them with `{command}`{instead}")
    return Problem(need.slot, f"{need.what} not in {need.target.parent} and "
                   f"{_origin(need.url)} does not answer ({why})",
                   f"fix the network, fetch them with `{command}` where it works{instead}")
