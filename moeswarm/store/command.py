"""`moe-swarm export --round R [--data-dir DIR] OUT.safetensors`: a checkpointed round as safetensors.

The output loads with plain `safetensors.torch.load_file`, with no moe-swarm code, so trained
weights leave the swarm in the format the rest of the ecosystem reads. The metadata carries the
round, the state hash (to match against what the swarm committed) and the model configuration.
Reading a live node's data dir is safe: export takes no lock and deletes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from moeswarm.cli import CliError
from moeswarm.store.errors import CheckpointCorrupt, CheckpointMissing

if TYPE_CHECKING:
    import torch

    from moeswarm.store.checkpoints import CheckpointStore, Manifest

DEFAULT_BASE = Path(".moeswarm")
OPTIMIZER_PREFIX = "optimizer."
ROUNDS_SHOWN_MAX = 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", required=True, metavar="R", help="a checkpointed round number, or 'latest'")
    parser.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR",
        help="the node's data dir (default: the only node dir under ./.moeswarm)",
    )
    parser.add_argument(
        "--with-optimizer", action="store_true",
        help=f"also write the outer optimizer's momentum, named with the prefix '{OPTIMIZER_PREFIX}'",
    )
    parser.add_argument("out", type=Path, metavar="OUT.safetensors", help="file to write")


def run(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir, DEFAULT_BASE)
    store = _open_checkpoints(data_dir)
    manifest = _pick_manifest(store, args.round, data_dir)
    tensors, metadata = _collect(store, manifest, with_optimizer=args.with_optimizer)
    written = _write_safetensors(args.out, tensors, metadata)
    print(
        f"wrote round {manifest.round} ({len(tensors)} tensors, {written} bytes, "
        f"state hash {manifest.state_hash.hex()}) to {args.out}"
    )
    return 0


def resolve_data_dir(explicit: Path | None, base: Path) -> Path:
    """The data dir to read: `--data-dir`, else the single node dir under `base`."""
    if explicit is not None:
        if not (explicit / "checkpoints").is_dir():
            raise CliError(f"{explicit} is not a node data dir (it has no checkpoints/ directory)")
        return explicit
    if not base.is_dir():
        raise CliError(f"no --data-dir given and {base}/ does not exist; pass --data-dir DIR")
    nodes = sorted(p for p in base.iterdir() if (p / "checkpoints").is_dir())
    if not nodes:
        raise CliError(f"no node data dir under {base}/; pass --data-dir DIR")
    if len(nodes) > 1:
        names = ", ".join(p.name for p in nodes)
        raise CliError(f"several node data dirs under {base}/ ({names}); pass --data-dir DIR")
    return nodes[0]


def _open_checkpoints(data_dir: Path) -> CheckpointStore:
    from moeswarm.store.checkpoints import CheckpointStore
    from moeswarm.store.chunks import ChunkStore

    return CheckpointStore(data_dir / "checkpoints", ChunkStore(data_dir / "chunks"))


def _pick_manifest(store: CheckpointStore, wanted: str, data_dir: Path) -> Manifest:
    if wanted == "latest":
        manifest = store.latest(verify_chunks=True)
        if manifest is None:
            raise CliError(f"no usable checkpoint in {data_dir}{_available(store)}")
        return manifest
    try:
        round = int(wanted)
    except ValueError:
        raise CliError(f"--round must be a round number or 'latest', got {wanted!r}") from None
    if round < 0 or round not in store.rounds():
        raise CliError(f"round {round} is not checkpointed in {data_dir}{_available(store)}")
    try:
        return store.manifest(round)
    except (CheckpointMissing, CheckpointCorrupt) as exc:
        raise CliError(f"checkpoint of round {round} is unusable: {exc}") from exc


def _available(store: CheckpointStore) -> str:
    rounds = store.rounds()
    if not rounds:
        return " (it holds no checkpoints yet)"
    shown = ", ".join(str(r) for r in rounds[-ROUNDS_SHOWN_MAX:])
    more = f"{len(rounds) - ROUNDS_SHOWN_MAX} older and " if len(rounds) > ROUNDS_SHOWN_MAX else ""
    return f"; available rounds: {more}{shown}"


def _collect(
    store: CheckpointStore, manifest: Manifest, *, with_optimizer: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        tensors, _ = store.load(manifest.round)
        if with_optimizer:
            for name, tensor in store.load_optimizer(manifest.round).items():
                full = OPTIMIZER_PREFIX + name
                if full in tensors:
                    raise CliError(f"optimizer tensor {name!r} clashes with weight {full!r}")
                tensors[full] = tensor
    except (CheckpointMissing, CheckpointCorrupt) as exc:
        raise CliError(f"checkpoint of round {manifest.round} is unusable: {exc}") from exc
    metadata = {
        "format": "pt",
        "round": str(manifest.round),
        "state_hash": manifest.state_hash.hex(),
        "epoch": str(manifest.epoch),
    }
    config = manifest.meta.get("model_config")
    if config is not None:
        metadata["model_config"] = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    return tensors, metadata


def _write_safetensors(out: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write via a temp file and rename, so OUT is never left half-written."""
    from safetensors.torch import save_file

    if not out.parent.is_dir():
        raise CliError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise CliError(f"cannot write {out}: it is a directory")
    tmp_name = ""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        if tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    return out.stat().st_size
