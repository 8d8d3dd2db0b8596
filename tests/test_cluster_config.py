"""cluster.yaml: valid for Ray 2.60's cluster launcher (checked offline with Ray's own
prepare_config / validate_config), broken copies fail naming the file and the fault, nothing
listens on 0.0.0.0, SSH is the only ingress, and the CLI exits 0 / 2."""

from __future__ import annotations

import builtins
import copy
import re
import socket
from pathlib import Path

import pytest
import yaml

from study.cluster import (
    ClusterConfigError,
    iter_commands,
    main,
    placeholders,
    policy_problems,
    validate_cluster_config,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def write(tmp_path: Path, config: dict, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mlflow_command(config: dict) -> str:
    found = [c for _, c in iter_commands(config) if re.search(r"\bmlflow server\b", c)]
    assert len(found) == 1, found
    return found[0]


def test_shipped_config_passes_rays_validation(raw):
    config = validate_cluster_config(SHIPPED)
    assert config["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert config["provider"]["type"] == "aws"
    head, types = config["head_node_type"], config["available_node_types"]
    assert types[head]["max_workers"] == 0
    gpu = [t for name, t in types.items() if name != head]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    # prepare_config merged the common setup into the head's and the workers' setup
    assert any("pip install" in c and "-e" in c for c in config["worker_setup_commands"])
    assert config["file_mounts"] and config["rsync_filter"] == [".gitignore"]


def _rename(key, new):
    def edit(c):
        c[new] = c.pop(key)
    return edit


def _set(*path_value):
    *path, value = path_value

    def edit(c):
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _minmax(c):
    c["available_node_types"]["gpu"].update(min_workers=3, max_workers=1)


BROKEN = {
    "misspelled top-level key": (_rename("max_workers", "max_worker"),
                                 ["'max_worker' was unexpected", "did you mean 'max_workers'"]),
    "min_workers > max_workers": (_minmax, ["'gpu'", "min_workers=3 > max_workers=1"]),
    "missing head_node_type": (lambda c: c.pop("head_node_type"),
                               ["'head_node_type' is missing"]),
    "unknown head node type": (_set("head_node_type", "hed"),
                               ["head_node_type 'hed'", "(head, gpu)"]),
    "wrong type, nested": (_set("available_node_types", "gpu", "resources", {"GPU": "eight"}),
                           ["not of type 'integer'", "available_node_types.gpu.resources.GPU"]),
    "misspelled node type key": (_set("available_node_types", "gpu", "min_worker", 1),
                                 ["'min_worker' was unexpected", "did you mean 'min_workers'",
                                  "at available_node_types.gpu"]),
    "sum of min_workers > max_workers": (_set("available_node_types", "gpu", "min_workers", 5),
                                         ["sum of min_workers=5", "max_workers=4"]),
    "no provider": (lambda c: c.pop("provider"), ["'provider' must be a mapping"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_copies_fail_naming_file_and_fault(case, raw, tmp_path):
    edit, expected = BROKEN[case]
    config = copy.deepcopy(raw)
    edit(config)
    path = write(tmp_path, config)
    with pytest.raises(ClusterConfigError) as error:
        validate_cluster_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    for text in expected:
        assert text in message, (text, message)


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster_name: x\n  provider: [\n")
    with pytest.raises(ClusterConfigError,
                       match=r"bad\.yaml: not valid YAML: line 2, column 11: mapping values"):
        validate_cluster_config(path)
    with pytest.raises(ClusterConfigError, match=r"nowhere\.yaml: cannot read"):
        validate_cluster_config(tmp_path / "nowhere.yaml")


def test_neither_mlflow_nor_dashboard_listens_on_all_interfaces(raw):
    for where, command in iter_commands(raw):
        assert "0.0.0.0" not in command, where
    head_start = " ".join(raw["head_start_ray_commands"])
    assert re.search(r"ray start --head .*--dashboard-host=127\.0\.0\.1\b", head_start)
    mlflow = mlflow_command(raw)
    host = re.search(r"--host[= ]+(\S+)", mlflow).group(1)
    assert host == '"$HEAD_IP"'
    assert "ray.util.get_node_ip_address()" in mlflow  # the head's private address
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in mlflow
    assert "--artifacts-destination s3://" in mlflow
    assert "--backend-store-uri sqlite:////" in mlflow
    assert policy_problems(raw) == []


@pytest.mark.parametrize("old,new,expected", [
    ('--host "$HEAD_IP"', "--host 0.0.0.0",
     "head_start_ray_commands[2] binds or refers to 0.0.0.0"),
    ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "without --dashboard-host"),
    ("--dashboard-host=127.0.0.1", "", "without --dashboard-host=127.0.0.1"),
    ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "", "job runner on"),
])
def test_public_bindings_and_job_runner_are_rejected(raw, tmp_path, old, new, expected):
    config = copy.deepcopy(raw)
    commands = config["head_start_ray_commands"]
    assert any(old in c for c in commands)
    config["head_start_ray_commands"] = [c.replace(old, new) for c in commands]
    with pytest.raises(ClusterConfigError, match=re.escape(expected)):
        validate_cluster_config(write(tmp_path, config))


def test_security_group_admits_ssh_only(raw, tmp_path):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert rules, "the shipped file must state its ingress"
    for rule in rules:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
        assert not rule.get("UserIdGroupPairs") and not rule.get("Ipv6Ranges")
        assert [r["CidrIp"] for r in rule["IpRanges"]] != ["0.0.0.0/0"]

    opened = copy.deepcopy(raw)
    opened["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
         "IpRanges": [{"CidrIp": "203.0.113.7/32"}]})
    with pytest.raises(ClusterConfigError, match=r"IpPermissions\[1\] opens tcp 8265-8265"):
        validate_cluster_config(write(tmp_path, opened))
    world = copy.deepcopy(raw)
    world["provider"]["security_group"]["IpPermissions"][0]["IpRanges"][0]["CidrIp"] = "0.0.0.0/0"
    with pytest.raises(ClusterConfigError, match=r"admits 0\.0\.0\.0/0"):
        validate_cluster_config(write(tmp_path, world))


def test_fields_a_user_must_set_are_placeholders(raw):
    todo = placeholders(raw)
    assert "provider.security_group.IpPermissions[0].IpRanges[0].CidrIp" in todo
    assert "available_node_types.gpu.node_config.ImageId" in todo
    assert "available_node_types.gpu.node_config.IamInstanceProfile.Arn" in todo
    assert "s3://CHANGE_ME_BUCKET/" in mlflow_command(raw)


def test_validation_contacts_no_cloud(monkeypatch):
    """prepare_config / validate_config only: no boto3, no network."""
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name.split(".")[0] in ("boto3", "botocore"):
            raise AssertionError(f"validation imported {name}")
        return real_import(name, *args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError("validation opened a network connection")

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    validate_cluster_config(SHIPPED)


def test_cli_exit_codes(run_module, raw, tmp_path, capsys):
    ok = run_module("study.cluster", "validate", str(SHIPPED), timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK: {SHIPPED} is a valid Ray 2.60.0 cluster config")
    assert "CHANGE_ME" in ok.stdout  # the placeholders still to set are listed

    config = copy.deepcopy(raw)
    config["max_worker"] = config.pop("max_workers")
    broken = write(tmp_path, config)
    bad = run_module("study.cluster", "validate", str(broken), timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: {broken}: ") and "'max_worker'" in bad.stderr
    assert bad.stdout == ""

    assert main(["validate", "--strict", str(SHIPPED)]) == 2
    assert "value(s) still contain CHANGE_ME" in capsys.readouterr().err
