"""The `cairn` command: one entry point, role subcommands."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from chain.errors import ChainError
from chain.keys import new_keys


def get_version() -> str:
    try:
        return version("cairn")
    except PackageNotFoundError:
        return "0+unknown"


def cmd_keys_new(args: argparse.Namespace) -> int:
    node, vrf = new_keys(Path(args.datadir), vrf=args.validator)
    print(f"node key  {node.public_key.hex()}")
    if vrf is not None:
        print(f"vrf key   {vrf.public_key.hex()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn: controlled-redundancy storage on BitTorrent")
    parser.add_argument("--version", action="version", version=f"cairn {get_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="manage node keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="generate a node key (and a VRF key with --validator)")
    new.add_argument("--datadir", required=True)
    new.add_argument("--validator", action="store_true", help="also generate the separate VRF key")
    new.set_defaults(func=cmd_keys_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ChainError as exc:
        print(f"cairn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
