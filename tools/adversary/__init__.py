"""Byzantine storage peers, each a separate program built on the honest node.peer.PeerNode.

Each module subclasses PeerNode, overrides only its misbehaviour, and runs exactly like
`cairn peer run` (same data dir, same config.toml):

    python -m tools.adversary.<name> run --datadir D [--capacity 64MiB] [--listen H:P]

    claimer    claims assigned shards it never fetched; cannot answer       -> MISS, suspended, excluded
    corrupter  fetches, then corrupts its copy on disk and signs forged proofs -> INVALID, excluded
    replayer   holds nothing; re-signs other holders' proofs as its own      -> INVALID, excluded
    wrongleaf  holds the data, answers with a proof of another leaf          -> INVALID, excluded
    silent     fetches, claims, proves once, then never answers again        -> MISS, suspended, excluded

Used by tests/test_adversaries.py through `Network.add_peer(..., program=...)`; see
docs/adversaries.md for how each is caught and in how many blocks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ADVERSARIES = ("claimer", "corrupter", "replayer", "wrongleaf", "silent")


def program(name: str) -> str:
    """The module to pass as `Network.add_peer(program=...)`."""
    if name not in ADVERSARIES:
        raise ValueError(f"unknown adversary {name!r}")
    return f"tools.adversary.{name}"


def make_main(node_cls, prog: str):
    """A `main(argv)` that runs `node_cls` like `cairn peer run` does (node/cli.py cmd_peer_run)."""

    def main(argv: list[str] | None = None) -> int:
        from node.chainnode import run_node
        from node.cli import setup_logging
        from node.config import load_config

        ap = argparse.ArgumentParser(prog=f"python -m {prog}")
        sub = ap.add_subparsers(dest="command", required=True)
        run = sub.add_parser("run", help=f"run the {node_cls.__name__} byzantine storage peer")
        run.add_argument("--datadir", required=True)
        run.add_argument("--capacity", help="bytes offered, e.g. 20GiB")
        run.add_argument("--listen")
        args = ap.parse_args(argv)
        datadir = Path(args.datadir)
        cfg = load_config(datadir, {"capacity": args.capacity, "listen": args.listen})
        setup_logging(cfg.log_level)
        return run_node(lambda: node_cls(datadir, cfg))

    return main


def is_verified_holder(node, info_hash: bytes, index: int) -> bool:
    """Whether `node` is on chain as a verified holder of the shard (its claim proven)."""
    entry = node.holder_entry(info_hash, index)
    return entry is not None and entry.verified_height > 0


def run_module(main) -> None:
    sys.exit(main())
