"""The `moe-swarm` entry point.

Each sub-command lives beside the part of the system it drives, in a module that exposes
`configure(parser)` and `run(args) -> int`. Modules are imported only for the command that runs, so
`moe-swarm simulate` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("moeswarm.simulator.launcher", "start a local swarm of N node processes on loopback"),
    "train": ("moeswarm.model.command", "single-node baseline: train the MoE model alone"),
    "node": ("moeswarm.node.command", "run the node daemon (what every machine runs)"),
    "simulate": ("moeswarm.simulator.command", "deterministic fault-injecting simulation of consensus"),
    "export": ("moeswarm.store.command", "export a committed round's weights as safetensors"),
}


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # the parent package is not installed in this build
            spec = None
        if spec is not None:
            found[name] = (module, help_text)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-swarm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except CliError as exc:
        print(f"moe-swarm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
