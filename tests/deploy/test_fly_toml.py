"""fly.toml: valid TOML, only keys that Fly's configuration reference defines, and settings that fit the node."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

# The key tree of Fly's app configuration reference (https://fly.io/docs/reference/configuration/).
# A dict is a table whose keys are listed; ANY_KEY is a table of free names (env variables, check
# names, build args); None is a value. Tables that may also be arrays of tables ([[vm]]) are checked
# the same way for every element. [[services]] and [http_service] are left out on purpose: they give an
# app public (or Flycast) addresses, and the swarm's ports must be reachable only on 6PN.
ANY_KEY = "*"
_CHECK = {
    "type": None,
    "port": None,
    "grace_period": None,
    "interval": None,
    "timeout": None,
    "method": None,
    "path": None,
    "processes": None,
    "headers": {ANY_KEY: None},
}
FLY_KEYS: dict[str, Any] = {
    "app": None,
    "primary_region": None,
    "kill_signal": None,
    "kill_timeout": None,
    "console_command": None,
    "swap_size_mb": None,
    "build": {
        "builder": None,
        "buildpacks": None,
        "image": None,
        "dockerfile": None,
        "ignorefile": None,
        "build-target": None,
        "args": {ANY_KEY: None},
    },
    "deploy": {
        "release_command": None,
        "release_command_timeout": None,
        "release_command_vm": {"size": None, "memory": None},
        "strategy": None,
        "max_unavailable": None,
        "wait_timeout": None,
    },
    "env": {ANY_KEY: None},
    "mounts": {
        "source": None,
        "destination": None,
        "processes": None,
        "initial_size": None,
        "snapshot_retention": None,
        "auto_extend_size_threshold": None,
        "auto_extend_size_increment": None,
        "auto_extend_size_limit": None,
    },
    "vm": {
        "size": None,
        "memory": None,
        "cpus": None,
        "cpu_kind": None,
        "gpus": None,
        "gpu_kind": None,
        "kernel_args": None,
        "host_dedication_id": None,
        "processes": None,
    },
    "restart": {"policy": None, "retries": None, "processes": None},
    "checks": {ANY_KEY: _CHECK},
    "processes": {ANY_KEY: None},
    "metrics": {"port": None, "path": None, "processes": None},
    "statics": {"guest_path": None, "url_prefix": None, "tigris_bucket": None, "index_document": None},
    "files": {
        "guest_path": None,
        "raw_value": None,
        "local_path": None,
        "secret_name": None,
        "processes": None,
    },
    "experimental": {"cmd": None, "entrypoint": None, "exec": None},
}
KILL_TIMEOUT_S_MAX = 300  # Fly's limit
DRAIN_MARGIN_S = 60  # log fsync and connection close after the drain


def unknown_keys(table: Any, allowed: Any, path: str = "") -> list[str]:
    if allowed is None:
        return []
    if isinstance(table, list):
        return [k for i, item in enumerate(table) for k in unknown_keys(item, allowed, f"{path}[{i}]")]
    if not isinstance(table, dict):
        return [f"{path} should be a table"]
    found = []
    for key, value in table.items():
        sub = allowed.get(key, allowed.get(ANY_KEY, "missing"))
        if sub == "missing":
            found.append(f"{path}.{key}".lstrip("."))
        else:
            found += unknown_keys(value, sub, f"{path}.{key}")
    return found


def load() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as fh:
        return tomllib.load(fh)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_only_keys_from_flys_reference() -> None:
    assert unknown_keys(load(), FLY_KEYS) == []


def test_the_key_check_catches_a_stray_key() -> None:
    config = load()
    config["vm"][0]["gpu_count"] = 1
    config["services"] = [{"internal_port": 7000}]
    config["checks"]["healthz"]["expect"] = 200
    assert sorted(unknown_keys(config, FLY_KEYS)) == ["checks.healthz.expect", "services", "vm[0].gpu_count"]


def test_no_public_service_and_ports_only_on_6pn() -> None:
    config = load()
    assert "services" not in config
    assert "http_service" not in config
    env = config["env"]
    assert env["MOESWARM_LISTEN_HOST"] == "::"
    assert env["MOESWARM_PEER_PORT"] == "7000"
    assert env["MOESWARM_ADMIN_PORT"] == "7001"


def test_env_is_strings_and_names_fly_allows() -> None:
    env = load()["env"]
    assert all(isinstance(v, str) for v in env.values())
    assert not [k for k in env if k.startswith("FLY_")]
    assert all(re.fullmatch(r"MOESWARM_[A-Z0-9_]+", k) for k in env)
    assert env["MOESWARM_DISCOVERY"] == "fly"
    assert "MOESWARM_CLUSTER_KEY" not in env
    assert "MOESWARM_ADMIN_TOKEN" not in env


def test_cpu_machines_volume_and_restart() -> None:
    config = load()
    [vm] = as_list(config["vm"])
    assert vm["size"] == "performance-4x"
    assert "gpus" not in vm
    assert "gpu_kind" not in vm
    [mount] = as_list(config["mounts"])
    assert mount["destination"] == config["env"]["MOESWARM_DATA_DIR"] == "/data"
    assert [r["policy"] for r in as_list(config["restart"])] == ["always"]
    assert config["build"]["dockerfile"] == "Dockerfile"


def test_rolling_deploys_because_volumes_rule_out_bluegreen_and_canary() -> None:
    deploy = load()["deploy"]
    assert deploy["strategy"] == "rolling"
    assert deploy["max_unavailable"] == 1


def test_kill_timeout_covers_the_drain() -> None:
    config = load()
    assert config["kill_signal"] == "SIGTERM"
    drain_s = float(config["env"]["MOESWARM_DRAIN_TIMEOUT_S"])
    assert drain_s + DRAIN_MARGIN_S <= config["kill_timeout"] <= KILL_TIMEOUT_S_MAX


def test_health_check_on_the_admin_port() -> None:
    config = load()
    [(name, check)] = config["checks"].items()
    assert name == "healthz"
    assert check["type"] == "http"
    assert check["path"] == "/healthz"
    assert str(check["port"]) == config["env"]["MOESWARM_ADMIN_PORT"]
    assert str(config["metrics"]["port"]) == config["env"]["MOESWARM_ADMIN_PORT"]


def test_kubernetes_grace_period_matches_the_same_drain() -> None:
    fly_env = load()["env"]
    statefulset = yaml.safe_load((ROOT / "deploy/k8s/statefulset.yaml").read_text())
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    k8s_env = {e["name"]: e.get("value") for e in container["env"]}
    assert k8s_env["MOESWARM_DRAIN_TIMEOUT_S"] == fly_env["MOESWARM_DRAIN_TIMEOUT_S"]
    assert pod["terminationGracePeriodSeconds"] == load()["kill_timeout"]


def test_secrets_are_documented_not_set() -> None:
    text = (ROOT / "fly.toml").read_text()
    assert re.search(r"^# +fly secrets set MOESWARM_CLUSTER_KEY=.* MOESWARM_ADMIN_TOKEN=", text, re.MULTILINE)


def test_the_guide_uses_the_names_and_numbers_of_the_config() -> None:
    config = load()
    guide = (ROOT / "docs" / "deploy.md").read_text()
    [mount] = as_list(config["mounts"])
    assert f"fly volumes create {mount['source']} " in guide
    assert f"kill_timeout = {config['kill_timeout']}" in guide
    assert f"`MOESWARM_DRAIN_TIMEOUT_S` ({config['env']['MOESWARM_DRAIN_TIMEOUT_S']})" in guide
    assert "fly scale count 5 --region ord,ams" in guide
    assert "fly launch --no-deploy" in guide
