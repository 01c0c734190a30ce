"""Node configuration: one frozen `NodeConfig` built from CLI flags, environment and a TOML file.

Precedence, highest first: CLI flags > environment variables `MOESWARM_<FIELD>` > the TOML file given
with `--config` > Fly's own variables (`FLY_REGION`, `FLY_PRIVATE_IP`, ...) > defaults. Every field has one
spec in `_FIELDS`, so the flag, the environment variable and the TOML key of a setting cannot drift apart.

Secrets (`cluster_key`, `admin_token`) have no CLI flag, because a command line is visible to every user of
the machine through `ps`; they come from the environment (Fly secrets) or the TOML file, and `NodeConfig`
keeps them out of its `repr` so they never reach a log line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeswarm.swarm import POISON_MODES

log = logging.getLogger(__name__)

ENV_PREFIX = "MOESWARM_"
ADMIN_TOKEN_FILE = "admin_token"
CLUSTER_KEY_CHARS_MIN = 16
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")
OUTER_OPTIMIZERS = ("average", "nesterov")


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the setting and its source."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node daemon needs to start; built by `load_config`, never mutated."""

    name: str
    data_dir: Path
    listen_host: str
    peer_port: int
    admin_host: str
    admin_port: int
    peers: tuple[str, ...]
    discovery: str | None
    region: str
    app_name: str | None
    machine_id: str | None
    cluster_key: str | None = field(repr=False)
    admin_token: str = field(repr=False)
    admin_token_path: Path | None
    preset: str
    data_path: Path | None
    device: str
    seed: int
    rounds: int
    inner_steps: int
    codec: str
    outer_optimizer: str
    outer_lr: float
    outer_momentum: float
    round_deadline_s: float
    checkpoint_interval_rounds: int
    log_level: str
    drain_timeout_s: float
    bootstrap_nodes: int
    batch_size: int
    inner_lr: float
    replicas: int
    staleness_rounds_max: int
    poison: str | None
    aggregation: str
    dead_removal_grace_s: float

    @property
    def on_fly(self) -> bool:
        return self.app_name is not None

    def peer_addresses(self) -> list[tuple[str, int]]:
        return [parse_address(p) for p in self.peers]


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the one place addresses from users are parsed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"bad address {text!r}: expected host:port (IPv6 as [addr]:port)")
    if not host:
        raise ConfigError(f"bad address {text!r}: empty host")
    port = _to_port(port_text, f"address {text!r}")
    if port == 0:
        raise ConfigError(f"bad address {text!r}: port 0")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- value parsers: text (CLI, environment) or TOML values -> typed values ---------------------------


def _to_port(value: Any, where: str) -> int:
    port = _to_int(value, where)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} out of range 0..65535")
    return port


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _to_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _to_path(value: Any, where: str) -> Path:
    return Path(_to_str(value, where)).expanduser()


def _to_peers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [p for p in (s.strip() for s in value.split(",")) if p]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        items = [p.strip() for p in value if p.strip()]
    else:
        raise ConfigError(f"{where}: expected 'host:port,...' or a list of strings, got {value!r}")
    for item in items:
        try:
            parse_address(item)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(items)


def _choice(*allowed: str) -> Callable[[Any, str], str]:
    def parse(value: Any, where: str) -> str:
        text = _to_str(value, where).lower()
        if text not in allowed:
            raise ConfigError(f"{where}: {text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    parse: Callable[[Any, str], Any]
    help: str
    flag: bool = True  # secrets have no flag
    metavar: str | None = None


_FIELDS: tuple[_Field, ...] = (
    _Field("name", _to_str, "node name (default: Fly machine id, else node-<peer port>)"),
    _Field("data_dir", _to_path, "data directory (default ./.moeswarm/<name>)", metavar="DIR"),
    _Field("listen_host", _to_str, "peer listen host (default :: on Fly, 127.0.0.1 locally)"),
    _Field("peer_port", _to_port, "peer port: WebSockets and blobs (default 7000)", metavar="PORT"),
    _Field("admin_host", _to_str, "admin bind host (default FLY_PRIVATE_IP on Fly, 127.0.0.1 locally)"),
    _Field("admin_port", _to_port, "admin HTTP port (default 7001)", metavar="PORT"),
    _Field("peers", _to_peers, "seed peers host:port,... ([v6]:port for IPv6)", metavar="LIST"),
    _Field("discovery", _to_str, "discovery spec, e.g. fly:<app>, dns:<name>, srv:<name> (default fly:<app> on Fly)"),
    _Field("region", _to_str, "region for placement (default FLY_REGION, else 'local')"),
    _Field("app_name", _to_str, "Fly app name (default FLY_APP_NAME)"),
    _Field("machine_id", _to_str, "machine id (default FLY_MACHINE_ID)"),
    _Field("cluster_key", _to_str, "cluster key (secret)", flag=False),
    _Field("admin_token", _to_str, "admin bearer token (secret)", flag=False),
    _Field("preset", _to_str, "model preset (default cpu-tiny)"),
    _Field("data_path", _to_path, "training data: files or directories (default: embedded corpus)", metavar="PATH"),
    _Field("device", _choice(*DEVICES), "training device: auto, cpu or cuda (default auto)"),
    _Field("seed", _to_int, "seed of the node's RNG and data order (default 0)", metavar="N"),
    _Field("rounds", _to_int, "rounds to run, 0 = until stopped (default 0)", metavar="N"),
    _Field("inner_steps", _to_int, "inner steps H per round (default 25)", metavar="H"),
    _Field("codec", _to_str, "delta codec spec: lowrank:32+int8+zstd (the default), topk:0.1+int8+zstd, int8+zstd, fp16"),
    _Field("outer_optimizer", _choice(*OUTER_OPTIMIZERS), "outer optimizer: average or nesterov (default average)"),
    _Field("outer_lr", _to_float, "outer learning rate (default 1.0)", metavar="LR"),
    _Field("outer_momentum", _to_float, "outer momentum (default 0.0)", metavar="M"),
    _Field("round_deadline_s", _to_float, "seconds before a round commits without late deltas (default 120)", metavar="S"),
    _Field("checkpoint_interval_rounds", _to_int, "checkpoint every K rounds (default 10)", metavar="K"),
    _Field("log_level", _choice(*LOG_LEVELS), "log level: debug, info, warning, error (default info)"),
    _Field("drain_timeout_s", _to_float, "seconds to leave the swarm cleanly on SIGTERM (default 30)", metavar="S"),
    _Field("bootstrap_nodes", _to_int, "nodes that form a new swarm together; later ones join (default 1)", metavar="N"),
    _Field("batch_size", _to_int, "inner batch size (default 32)", metavar="B"),
    _Field("inner_lr", _to_float, "inner AdamW learning rate (default 3e-3)", metavar="LR"),
    _Field("replicas", _to_int, "owners per expert R (default 2)", metavar="R"),
    _Field("staleness_rounds_max", _to_int, "rounds a late delta may still enter a commit (default 2)", metavar="S"),
    _Field("aggregation", _choice("robust", "mean"),
           "robust (trimmed mean per expert, centered clipping on the trunk; the default) or mean"),
    _Field("dead_removal_grace_s", _to_float,
           "seconds a member SWIM declares dead may stay gone before it is voted out (default 60)", metavar="S"),
    _Field("poison", _choice(*POISON_MODES), "test only: make this node Byzantine (scale, flip or nan deltas)"),
)
_BY_NAME = {f.name: f for f in _FIELDS}
# fields whose CLI flag is not simply --<name-with-dashes>
_FLAG_NAMES = {"data_path": "--data"}

_DEFAULTS: dict[str, Any] = {
    "peer_port": 7000,
    "admin_port": 7001,
    "peers": (),
    "preset": "cpu-tiny",
    "device": "auto",
    "seed": 0,
    "rounds": 0,
    "inner_steps": 25,
    "codec": "lowrank:32+int8+zstd",
    "outer_optimizer": "average",
    "outer_lr": 1.0,
    "outer_momentum": 0.0,
    "round_deadline_s": 120.0,
    "checkpoint_interval_rounds": 10,
    "log_level": "info",
    "drain_timeout_s": 30.0,
    "bootstrap_nodes": 1,
    "batch_size": 32,
    "inner_lr": 3e-3,
    "replicas": 2,
    "staleness_rounds_max": 2,
    "aggregation": "robust",
    "dead_removal_grace_s": 60.0,
}


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the node's flags. All default to None so that an absent flag lets lower sources speak."""
    parser.add_argument("--config", dest="config", default=None, metavar="TOML", help="TOML config file")
    for spec in _FIELDS:
        if spec.flag:
            parser.add_argument(_flag(spec.name), dest=spec.name, default=None, metavar=spec.metavar, help=spec.help)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            table = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    return table


def _collect(args: argparse.Namespace | None, environ: Mapping[str, str], toml: Mapping[str, Any],
             toml_path: Path | None) -> dict[str, Any]:
    """Parse every explicitly given setting, highest-precedence source first; absent ones are left out."""
    values: dict[str, Any] = {}
    for spec in _FIELDS:
        raw_flag = getattr(args, spec.name, None) if (args is not None and spec.flag) else None
        env_name = ENV_PREFIX + spec.name.upper()
        if raw_flag is not None:
            values[spec.name] = spec.parse(raw_flag, _flag(spec.name))
        elif environ.get(env_name, "").strip():
            values[spec.name] = spec.parse(environ[env_name], env_name)
        elif spec.name in toml:
            values[spec.name] = spec.parse(toml[spec.name], f"{toml_path}: {spec.name}")
    return values


def _apply_platform_defaults(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Fill what Fly tells us about this machine, then the plain defaults."""
    for key, env_name in (("app_name", "FLY_APP_NAME"), ("machine_id", "FLY_MACHINE_ID"), ("region", "FLY_REGION")):
        if key not in values and environ.get(env_name, "").strip():
            values[key] = environ[env_name].strip()
    on_fly = values.get("app_name") is not None
    if "admin_host" not in values:
        private_ip = environ.get("FLY_PRIVATE_IP", "").strip()
        values["admin_host"] = private_ip if (on_fly and private_ip) else "127.0.0.1"
    values.setdefault("listen_host", "::" if on_fly else "127.0.0.1")
    values.setdefault("region", "local")
    if "discovery" not in values and on_fly and not values.get("peers"):
        values["discovery"] = f"fly:{values['app_name']}"
    for key, default in _DEFAULTS.items():
        values.setdefault(key, default)
    if "name" not in values:
        values["name"] = values.get("machine_id") or f"node-{values['peer_port']}"
    values.setdefault("data_dir", Path(".moeswarm") / values["name"])
    for key in ("app_name", "machine_id", "discovery", "cluster_key", "data_path", "poison"):
        values.setdefault(key, None)


def _validate(values: Mapping[str, Any]) -> None:
    name = values["name"]
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"name {name!r}: must not contain '/'")
    for key in ("inner_steps", "checkpoint_interval_rounds", "bootstrap_nodes", "batch_size", "replicas"):
        if values[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {values[key]}")
    if values["rounds"] < 0:
        raise ConfigError(f"rounds must be 0 (until stopped) or positive, got {values['rounds']}")
    if values["staleness_rounds_max"] < 0:
        raise ConfigError(f"staleness_rounds_max cannot be negative, got {values['staleness_rounds_max']}")
    for key in ("round_deadline_s", "drain_timeout_s", "outer_lr", "inner_lr", "dead_removal_grace_s"):
        if not values[key] > 0:
            raise ConfigError(f"{key} must be positive, got {values[key]}")
    if not 0.0 <= values["outer_momentum"] < 1.0:
        raise ConfigError(f"outer_momentum must be in [0, 1), got {values['outer_momentum']}")
    if values["peer_port"] != 0 and values["peer_port"] == values["admin_port"]:
        raise ConfigError(f"peer_port and admin_port are both {values['peer_port']}: they must differ")
    key = values["cluster_key"]
    multi_node = bool(values["peers"]) or values["discovery"] is not None
    if key is None and multi_node:
        raise ConfigError("MOESWARM_CLUSTER_KEY is required to join a swarm (peers or discovery are set); "
                          "set the same secret on every node")
    if key is not None and len(key) < CLUSTER_KEY_CHARS_MIN:
        raise ConfigError(f"MOESWARM_CLUSTER_KEY is too short: use at least {CLUSTER_KEY_CHARS_MIN} characters")


def ensure_admin_token(data_dir: Path) -> tuple[str, Path]:
    """Read `<data_dir>/admin_token`, or create it (0600) so a restarted node keeps the same token."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise ConfigError(f"cannot read admin token file {path}: {exc.strerror or exc}") from None
    if token:
        return token, path
    token = secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write admin token file {path}: {exc.strerror or exc}") from None
    log.info("no MOESWARM_ADMIN_TOKEN set: generated an admin token in %s", path)
    return token, path


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
                toml_path: str | Path | None = None) -> NodeConfig:
    """Build the node's configuration. `toml_path` defaults to `args.config`; `environ` to `os.environ`.

    Side effect: when no admin token is configured, one is generated and stored in the data dir.
    """
    environ = os.environ if environ is None else environ
    if toml_path is None and args is not None:
        toml_path = getattr(args, "config", None)
    path = Path(toml_path).expanduser() if toml_path is not None else None
    toml = _read_toml(path) if path is not None else {}
    values = _collect(args, environ, toml, path)
    _apply_platform_defaults(values, environ)
    _validate(values)
    if values.get("admin_token"):
        values["admin_token_path"] = None
    else:
        values["admin_token"], values["admin_token_path"] = ensure_admin_token(values["data_dir"])
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    return NodeConfig(**{k: v for k, v in values.items() if k in names})
