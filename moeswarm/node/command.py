"""`moe-swarm node`: the daemon every machine runs (flags > MOESWARM_* environment > TOML > defaults)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from moeswarm.cli import CliError
from moeswarm.node.config import ConfigError, add_node_arguments, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    add_node_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    logging.getLogger().setLevel(config.log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {config.name} %(name)s: %(message)s"))
    from moeswarm.model.data import DataError
    from moeswarm.node.daemon import NodeDaemon
    from moeswarm.store import StoreError

    try:
        daemon = NodeDaemon(config)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        return asyncio.run(daemon.run())
    except DataError as exc:
        raise CliError(str(exc)) from None
