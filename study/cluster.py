"""``python -m study.cluster validate cluster.yaml``: check a Ray cluster-launcher config offline.

The checks are Ray's own (``prepare_config``: merge with the provider's defaults.yaml, docker
and min/max fill-in; ``validate_config``: the autoscaler's JSON schema, head node type, worker
counts), the ones Ray leaves to launch time (a node type with ``min_workers > max_workers``,
a missing ``head_node_type`` that Ray's defaults would fill in silently), and this project's
rules: SSH is the only ingress, neither the dashboard nor MLflow listens on 0.0.0.0, and
MLflow's job runner is off.

Nothing here contacts AWS: the provider's ``bootstrap_config`` (IAM, key pair, subnets,
security group) and the resource auto-detection of ``ray up`` need boto3 and credentials and
are not called. Placeholders (``CHANGE_ME``) are listed; ``--strict`` fails on them.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = "CHANGE_ME"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
_ANY_ADDRESS = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|(?<![\w:])::(?![\w:])")


class ClusterConfigError(ValueError):
    """The cluster config is invalid; the message names the file and what is wrong."""


def validate_cluster_config(path: str | Path) -> dict[str, Any]:
    """The config at ``path`` as Ray's cluster launcher would prepare it (defaults merged),
    after Ray's validation and this project's rules; raises ClusterConfigError otherwise."""
    path = Path(path)
    raw = _load(path)
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        raise ClusterConfigError(f"{path}: 'provider' must be a mapping with a 'type' "
                                 "(e.g. provider: {type: aws, region: us-west-2})")
    prepared = _ray_prepare_and_validate(raw, path)
    problems = raw_problems(raw)  # what Ray's defaults filled in without a word
    problems = problems or node_type_problems(prepared) + policy_problems(raw)
    if problems:
        raise ClusterConfigError(f"{path}: " + "; ".join(problems))
    return prepared


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ClusterConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(error, "problem", None) or str(error)
        raise ClusterConfigError(f"{path}: not valid YAML: {where}{what}") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: the top level must be a mapping of Ray cluster "
                                 f"fields, got {type(config).__name__}")
    return config


def raw_problems(config: dict[str, Any]) -> list[str]:
    """What Ray's shallow ``defaults.update(config)`` papers over: a missing cluster_name,
    available_node_types, head_node_type or max_workers comes from the provider's defaults.yaml;
    and Ray's own message for an unknown head node type does not name it."""
    kind = config.get("provider", {}).get("type")
    keys = ("cluster_name", "available_node_types", "head_node_type", "max_workers")
    missing = [key for key in keys if key not in config]
    if missing:
        return [f"'{key}' is missing (Ray would silently take its {kind} default)"
                for key in missing]
    types = config["available_node_types"]
    head = config["head_node_type"]
    if isinstance(types, dict) and head not in types:
        return [f"head_node_type '{head}' is not one of available_node_types "
                f"({', '.join(map(str, types))})"]
    return []


def _ray_prepare_and_validate(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(raw)  # pure: reads the provider's defaults.yaml, no cloud call
        validate_config(prepared)
    except jsonschema.ValidationError as error:
        raise ClusterConfigError(f"{path}: {_schema_message(error)}") from None
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError,
            NotImplementedError) as error:
        message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
        problems = raw_problems(raw)
        if not problems and "sum of `min_workers`" in message:
            low = sum(t.get("min_workers", 0) for t in raw["available_node_types"].values())
            message += f" (max_workers={raw['max_workers']}, sum of min_workers={low})"
        message = "; ".join(problems) or message or type(error).__name__
        raise ClusterConfigError(f"{path}: {message}") from None
    return prepared


def _schema_message(error) -> str:
    where = format_path(error.absolute_path) or "top level"
    message = f"{error.message} (at {where})"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        for key in error.instance:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            if close:
                message += f"; did you mean '{close[0]}' instead of '{key}'?"
    return message


def format_path(parts) -> str:
    """available_node_types.gpu.resources.GPU; list indices as [i], dotted keys as ['a.b']."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in str(part):
            out += f"['{part}']"
        else:
            out += f".{part}" if out else str(part)
    return out


def node_type_problems(config: dict[str, Any]) -> list[str]:
    """Per node type: min_workers <= max_workers (Ray takes min(min, max) silently)."""
    problems = []
    for name, node_type in config.get("available_node_types", {}).items():
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
        if low > high:
            problems.append(f"node type '{name}' has min_workers={low} > max_workers={high} "
                            f"(at available_node_types.{name})")
    return problems


def policy_problems(config: dict[str, Any]) -> list[str]:
    """This project's rules on the raw config: SSH is the only ingress; the dashboard listens on
    127.0.0.1; nothing listens on 0.0.0.0; MLflow's job runner is off."""
    problems = []
    provider = config.get("provider", {})
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    for i, rule in enumerate(rules):
        where = f"provider.security_group.IpPermissions[{i}]"
        ports = (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort"))
        if str(ports[0]).lower() != "tcp" or ports[1:] != (22, 22):
            problems.append(f"{where} opens {ports[0]} {ports[1]}-{ports[2]}; only tcp 22 "
                            "(SSH) may be open")
        for key in ("UserIdGroupPairs", "PrefixListIds"):
            if rule.get(key):
                problems.append(f"{where} admits {key}; only CIDR ranges are expected")
        for j, cidr in enumerate(_cidrs(rule)):
            if cidr in ("0.0.0.0/0", "::/0"):
                problems.append(f"{where} admits {cidr} (the whole internet); set your /32")
            elif not cidr:
                problems.append(f"{where}.IpRanges[{j}] has no CidrIp")
    for where, command in iter_commands(config):
        if _ANY_ADDRESS.search(command):
            problems.append(f"{where} binds or refers to 0.0.0.0 / ::; listen on 127.0.0.1 "
                            "or the node's private address")
        if re.search(r"\bray start\b.*--head\b", command) and not re.search(
                r"--dashboard-host[= ]+(127\.0\.0\.1|localhost)\b", command):
            problems.append(f"{where} starts the head without --dashboard-host=127.0.0.1")
        if re.search(r"\bmlflow (server|ui)\b", command) and not re.search(
                r"\bMLFLOW_SERVER_ENABLE_JOB_EXECUTION=(false|0)\b", command, re.IGNORECASE):
            problems.append(f"{where} starts MLflow with its job runner on (the default in "
                            "MLflow 3): prefix MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false")
    return problems


def _cidrs(rule: dict[str, Any]) -> Iterator[str]:
    for entry in rule.get("IpRanges") or []:
        yield entry.get("CidrIp", "")
    for entry in rule.get("Ipv6Ranges") or []:
        yield entry.get("CidrIpv6", "")


def iter_commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, command) for every shell command of the config, global and per node type."""
    for key in COMMAND_LISTS:
        for i, command in enumerate(config.get(key) or []):
            yield f"{key}[{i}]", str(command)
    for name, node_type in (config.get("available_node_types") or {}).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for i, command in enumerate(node_type.get(key) or []):
                yield f"available_node_types.{name}.{key}[{i}]", str(command)


def placeholders(config: Any) -> list[str]:
    """Paths of the values that still contain CHANGE_ME (a user must set them)."""
    found = []

    def walk(value: Any, parts: list) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, [*parts, key])
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, [*parts, i])
        elif isinstance(value, str) and PLACEHOLDER in value:
            found.append(format_path(parts))

    walk(config, [])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a cluster config offline (exit 0 / 2)")
    check.add_argument("config", help="cluster YAML, e.g. cluster.yaml")
    check.add_argument("--strict", action="store_true",
                       help=f"also fail while values still contain {PLACEHOLDER}")
    args = parser.parse_args(argv)

    try:
        config = validate_cluster_config(args.config)
    except ClusterConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = placeholders(_load(Path(args.config)))
    if todo and args.strict:
        print(f"error: {args.config}: {len(todo)} value(s) still contain {PLACEHOLDER}: "
              + ", ".join(todo), file=sys.stderr)
        return 2
    import ray

    workers = ", ".join(f"{name} {t['min_workers']}..{t['max_workers']}"
                        for name, t in config["available_node_types"].items()
                        if name != config["head_node_type"])
    print(f"OK: {args.config} is a valid Ray {ray.__version__} cluster config "
          f"(provider {config['provider']['type']}, head '{config['head_node_type']}', "
          f"workers: {workers or 'none'}, at most {config['max_workers']})")
    if todo:
        print(f"to set before `ray up` ({PLACEHOLDER}): " + ", ".join(todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
