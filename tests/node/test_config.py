"""Node configuration: precedence of sources, Fly defaults, validation and the admin token file."""

from __future__ import annotations

import argparse
import logging
import stat
from pathlib import Path

import pytest

from moeswarm.node.config import (
    ConfigError,
    NodeConfig,
    add_node_arguments,
    format_address,
    load_config,
    parse_address,
)

KEY = "k" * 32
FLY_ENV = {
    "FLY_APP_NAME": "swarm-app",
    "FLY_MACHINE_ID": "148e21ea7e9289",
    "FLY_REGION": "ord",
    "FLY_PRIVATE_IP": "fdaa:0:1:a7b:1f4:6f1e:1b4c:2",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return parser.parse_args(argv)


def load(tmp_path: Path, argv: list[str] | None = None, env: dict[str, str] | None = None,
         toml: str | None = None) -> NodeConfig:
    argv = ["--data-dir", str(tmp_path / "data"), *(argv or [])]
    toml_path = None
    if toml is not None:
        toml_path = tmp_path / "node.toml"
        toml_path.write_text(toml)
    return load_config(parse(argv), env or {}, toml_path)


def test_local_defaults(tmp_path: Path) -> None:
    config = load_config(parse([]), {"MOESWARM_ADMIN_TOKEN": "t" * 20}, None)
    assert config.listen_host == "127.0.0.1"
    assert config.admin_host == "127.0.0.1"
    assert (config.peer_port, config.admin_port) == (7000, 7001)
    assert config.region == "local"
    assert config.name == "node-7000"
    assert config.data_dir == Path(".moeswarm/node-7000")
    assert config.peers == ()
    assert config.discovery is None
    assert config.cluster_key is None
    assert not config.on_fly
    assert config.device == "auto"
    assert config.outer_optimizer == "average"


def test_fly_environment_sets_host_region_and_discovery(tmp_path: Path) -> None:
    config = load(tmp_path, env={**FLY_ENV, "MOESWARM_CLUSTER_KEY": KEY})
    assert config.on_fly
    assert config.listen_host == "::"
    assert config.admin_host == FLY_ENV["FLY_PRIVATE_IP"]
    assert config.region == "ord"
    assert config.app_name == "swarm-app"
    assert config.machine_id == "148e21ea7e9289"
    assert config.name == "148e21ea7e9289"
    assert config.discovery == "fly:swarm-app"


def test_precedence_cli_over_env_over_toml_over_default(tmp_path: Path) -> None:
    toml = 'peer_port = 7100\nadmin_port = 7101\nregion = "ams"\ninner_steps = 5\nseed = 3\n'
    env = {"MOESWARM_PEER_PORT": "7200", "MOESWARM_REGION": "fra", "MOESWARM_SEED": "4"}
    config = load(tmp_path, ["--peer-port", "7300"], env, toml)
    assert config.peer_port == 7300  # CLI beats env and TOML
    assert config.region == "fra"  # env beats TOML
    assert config.seed == 4
    assert config.admin_port == 7101  # TOML beats default
    assert config.inner_steps == 5
    assert config.checkpoint_interval_rounds == 10  # default


def test_moeswarm_region_beats_fly_region(tmp_path: Path) -> None:
    config = load(tmp_path, env={**FLY_ENV, "MOESWARM_REGION": "syd", "MOESWARM_CLUSTER_KEY": KEY})
    assert config.region == "syd"
    assert load(tmp_path, ["--region", "lhr"], {**FLY_ENV, "MOESWARM_CLUSTER_KEY": KEY}).region == "lhr"


def test_peers_from_flag_and_toml_list(tmp_path: Path) -> None:
    env = {"MOESWARM_CLUSTER_KEY": KEY}
    config = load(tmp_path, ["--peers", "127.0.0.1:7000, [::1]:7002,node-b:7004"], env)
    assert config.peers == ("127.0.0.1:7000", "[::1]:7002", "node-b:7004")
    assert config.peer_addresses() == [("127.0.0.1", 7000), ("::1", 7002), ("node-b", 7004)]
    config = load(tmp_path, [], env, 'peers = ["a:1", "b:2"]\n')
    assert config.peers == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--peer-port", "70000"], {}, "out of range"),
        (["--peer-port", "abc"], {}, "--peer-port"),
        ([], {"MOESWARM_ADMIN_PORT": "x"}, "MOESWARM_ADMIN_PORT"),
        (["--device", "tpu"], {}, "auto, cpu, cuda"),
        (["--peers", "nohostport"], {"MOESWARM_CLUSTER_KEY": KEY}, "host:port"),
        (["--peers", "h:1"], {}, "MOESWARM_CLUSTER_KEY is required"),
        (["--discovery", "dns:swarm.local"], {}, "MOESWARM_CLUSTER_KEY is required"),
        (["--peers", "h:1"], {"MOESWARM_CLUSTER_KEY": "short"}, "too short"),
        (["--inner-steps", "0"], {}, "inner_steps"),
        (["--outer-momentum", "1.5"], {}, "outer_momentum"),
        (["--peer-port", "7001"], {}, "must differ"),
        (["--name", "a/b"], {}, "name"),
    ],
)
def test_bad_values_raise_config_error_naming_the_setting(
    tmp_path: Path, argv: list[str], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(tmp_path, argv, env)


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key.*peer_prot"):
        load(tmp_path, [], {}, "peer_prot = 1\n")


def test_toml_wrong_type_and_bad_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected an integer"):
        load(tmp_path, [], {}, 'peer_port = "7000x"\n')
    with pytest.raises(ConfigError, match="expected an integer"):
        load(tmp_path, [], {}, "seed = true\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, [], {}, "peer_port = = 1\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(parse([]), {}, tmp_path / "missing.toml")


def test_config_flag_is_used_when_no_path_given(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("seed = 9\n")
    config = load_config(parse(["--config", str(path), "--data-dir", str(tmp_path)]), {})
    assert config.seed == 9


def test_admin_token_generated_once_with_private_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="moeswarm.node.config"):
        first = load(tmp_path)
    assert first.admin_token_path == tmp_path / "data" / "admin_token"
    assert stat.S_IMODE(first.admin_token_path.stat().st_mode) == 0o600
    assert first.admin_token_path.read_text().strip() == first.admin_token
    assert len(first.admin_token) >= 32
    assert str(first.admin_token_path) in caplog.text
    assert first.admin_token not in caplog.text
    second = load(tmp_path)
    assert second.admin_token == first.admin_token  # a restart keeps the token


def test_admin_token_from_environment_writes_no_file(tmp_path: Path) -> None:
    config = load(tmp_path, env={"MOESWARM_ADMIN_TOKEN": "secret-token-123"})
    assert config.admin_token == "secret-token-123"
    assert config.admin_token_path is None
    assert not (tmp_path / "data" / "admin_token").exists()


def test_secrets_never_appear_in_repr_and_have_no_flags(tmp_path: Path) -> None:
    config = load(tmp_path, ["--peers", "h:1"], {"MOESWARM_CLUSTER_KEY": KEY, "MOESWARM_ADMIN_TOKEN": "tok-xyz-123"})
    assert config.cluster_key == KEY
    assert KEY not in repr(config)
    assert "tok-xyz-123" not in repr(config)
    with pytest.raises(SystemExit):
        parse(["--cluster-key", KEY])


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path)
    with pytest.raises(AttributeError):
        config.peer_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", ("h", 1)), ("[fdaa::3]:53", ("fdaa::3", 53)), (" 10.0.0.1:7000 ", ("10.0.0.1", 7000))],
)
def test_parse_address_round_trip(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize("text", ["h", ":1", "fdaa::3:53", "[fdaa::3]53", "h:0", "h:-1", "h:99999"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)
