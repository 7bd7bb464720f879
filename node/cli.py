"""The `cairn` command: one entry point, role subcommands.

    cairn init beacon|peer --datadir D ...   keys and config.toml in a 0700 data dir
    cairn keys new --datadir D [--validator] generate keys only
    cairn genesis --chain-id X --validator D1 --validator D2 ... --out genesis.json
    cairn genesis install FILE --datadir D    copy a genesis file into a data dir
    cairn beacon run --datadir D              run a validator beacon
    cairn peer run --datadir D [--capacity]   run a storage peer
    cairn publish DIR --target 3 --beacon H:P publish a collection and seed it
    cairn fetch NAME DEST --beacon H:P        download a collection and verify it
    cairn status --beacon H:P                 print the network summary
    cairn demo [--exit-when-converged]        run a local demo network
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from chain.errors import ChainError
from chain.keys import ensure_private_dir, new_keys
from node.config import CONFIG_FILE, GENESIS_FILE, ConfigError, NodeConfig, load_config, save_config


def get_version() -> str:
    try:
        return version("cairn")
    except PackageNotFoundError:
        return "0+unknown"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_keys_new(args: argparse.Namespace) -> int:
    node, vrf = new_keys(Path(args.datadir), vrf=args.validator)
    print(f"node key  {node.public_key.hex()}")
    if vrf is not None:
        print(f"vrf key   {vrf.public_key.hex()}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    datadir = Path(args.datadir)
    if (datadir / CONFIG_FILE).exists():
        raise ConfigError(f"{datadir} is already initialised")
    node, _ = new_keys(datadir, vrf=args.role == "beacon")
    cfg = NodeConfig(role=args.role)
    overrides = {"listen": args.listen, "bootstrap": args.bootstrap}
    if args.role == "peer":
        overrides |= {"bt_listen": args.bt_listen, "capacity": args.capacity}
    save_config(datadir, cfg)
    cfg = load_config(datadir, overrides)
    save_config(datadir, cfg)
    print(f"initialised {args.role} in {datadir}: key {node.public_key.hex()}, listen {cfg.listen}")
    return 0


def cmd_init_set(args: argparse.Namespace) -> int:
    datadir = Path(args.datadir)
    pairs = dict(kv.split("=", 1) for kv in args.pairs)
    cfg = load_config(datadir, pairs)
    save_config(datadir, cfg)
    return 0


def cmd_genesis(args: argparse.Namespace) -> int:
    from chain.genesis import make_genesis_from_key_dirs, save_genesis
    from chain.types import Params

    params = Params()
    for item in args.param or []:
        key, _, value = item.partition("=")
        if key not in {f.name for f in fields(Params)}:
            raise ConfigError(f"unknown genesis parameter {key!r}")
        params = replace(params, **{key: int(value)})
    datadirs = [Path(d) for d in args.validator]
    given = {item.partition("=")[0] for item in args.param or []}
    if "randomness_mix_blocks" not in given:
        # challenge seeds mix at least f+1 blocks, so no f validators can predict them
        f = (len(datadirs) + 2) // 3 - 1
        params = replace(params, randomness_mix_blocks=max(params.randomness_mix_blocks, f + 1))
    addresses = [load_config(d).listen for d in datadirs]
    genesis_time = args.genesis_time_ms if args.genesis_time_ms is not None else int(time.time() * 1000)
    try:
        publishers = tuple(bytes.fromhex(k) for k in args.publisher or [])
    except ValueError as exc:
        raise ConfigError(f"--publisher takes a hex public key: {exc}") from exc
    genesis = make_genesis_from_key_dirs(args.chain_id, datadirs, addresses, params, genesis_time, publishers)
    save_genesis(genesis, Path(args.out))
    print(f"wrote {args.out}: chain {genesis.chain_id}, {len(genesis.validators)} validators, hash {genesis.hash().hex()}")
    return 0


def cmd_genesis_install(args: argparse.Namespace) -> int:
    from chain.genesis import load_genesis

    genesis = load_genesis(Path(args.file))
    datadir = Path(args.datadir)
    ensure_private_dir(datadir)
    shutil.copyfile(args.file, datadir / GENESIS_FILE)
    print(f"installed genesis {genesis.hash().hex()[:16]} into {datadir}")
    return 0


def cmd_beacon_run(args: argparse.Namespace) -> int:
    from node.beacon import run_beacon

    cfg = load_config(Path(args.datadir), {"listen": args.listen})
    setup_logging(cfg.log_level)
    return run_beacon(Path(args.datadir), cfg)


def cmd_peer_run(args: argparse.Namespace) -> int:
    from node.peer import run_peer

    cfg = load_config(Path(args.datadir), {"capacity": args.capacity, "listen": args.listen})
    setup_logging(cfg.log_level)
    return run_peer(Path(args.datadir), cfg)


def cmd_publish(args: argparse.Namespace) -> int:
    from node.client import publish

    return publish(Path(args.directory), name=args.name, target=args.target, beacon=args.beacon,
                   datadir=Path(args.datadir) if args.datadir else None, seed_until_target=not args.no_seed)


def cmd_fetch(args: argparse.Namespace) -> int:
    from node.client import fetch

    return fetch(args.name, Path(args.dest), beacon=args.beacon)


def cmd_status(args: argparse.Namespace) -> int:
    from node.client import status

    return status(args.beacon)


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo launcher lives in tools/ (imports go one way: node never imports tools).
    argv = [sys.executable, "-m", "tools.demo"]
    if args.exit_when_converged:
        argv.append("--exit-when-converged")
    argv += ["--root", args.root]
    os.execv(sys.executable, argv)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Cairn: controlled-redundancy storage on BitTorrent")
    parser.add_argument("--version", action="version", version=f"cairn {get_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="manage node keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="generate a node key (and a VRF key with --validator)")
    new.add_argument("--datadir", required=True)
    new.add_argument("--validator", action="store_true", help="also generate the separate VRF key")
    new.set_defaults(func=cmd_keys_new)

    init = sub.add_parser("init", help="create a data dir with keys and config.toml")
    init_sub = init.add_subparsers(dest="role", required=True)
    for role in ("beacon", "peer"):
        p = init_sub.add_parser(role)
        p.add_argument("--datadir", required=True)
        p.add_argument("--listen", help="host:port of the node's web/API/p2p server")
        p.add_argument("--bootstrap", help="comma-separated host:port of nodes to dial")
        if role == "peer":
            p.add_argument("--bt-listen", help="host:port of the BitTorrent listener")
            p.add_argument("--capacity", help="bytes offered, e.g. 20GiB")
        p.set_defaults(func=cmd_init)
    p = init_sub.add_parser("set", help="change config.toml keys: key=value ...")
    p.add_argument("--datadir", required=True)
    p.add_argument("pairs", nargs="+")
    p.set_defaults(func=cmd_init_set)

    gen = sub.add_parser("genesis", help="make a genesis file from validator data dirs")
    gen.add_argument("--chain-id", default="cairn-local")
    gen.add_argument("--validator", action="append", default=[], help="a validator's data dir (repeat)")
    gen.add_argument("--param", action="append", help="override a parameter: name=int")
    gen.add_argument("--publisher", action="append",
                     help="hex public key allowed to publish (repeat); none given: anyone may publish")
    gen.add_argument("--genesis-time-ms", type=int)
    gen.add_argument("--out", default=GENESIS_FILE)
    gen.set_defaults(func=cmd_genesis)
    gen_sub = gen.add_subparsers(dest="genesis_command")
    inst = gen_sub.add_parser("install", help="copy a genesis file into a data dir")
    inst.add_argument("file")
    inst.add_argument("--datadir", required=True)
    inst.set_defaults(func=cmd_genesis_install)

    beacon = sub.add_parser("beacon", help="validator beacon").add_subparsers(dest="beacon_command", required=True)
    run = beacon.add_parser("run")
    run.add_argument("--datadir", required=True)
    run.add_argument("--listen")
    run.set_defaults(func=cmd_beacon_run)

    peer = sub.add_parser("peer", help="storage peer").add_subparsers(dest="peer_command", required=True)
    run = peer.add_parser("run")
    run.add_argument("--datadir", required=True)
    run.add_argument("--capacity", help="bytes offered, e.g. 20GiB")
    run.add_argument("--listen")
    run.set_defaults(func=cmd_peer_run)

    pub = sub.add_parser("publish", help="publish a directory as a collection")
    pub.add_argument("directory")
    pub.add_argument("--name")
    pub.add_argument("--target", type=int, default=3)
    pub.add_argument("--beacon", required=True, help="host:port of a beacon")
    pub.add_argument("--datadir", help="publisher data dir (key, seeding state); default: a temp dir")
    pub.add_argument("--no-seed", action="store_true", help="register only; do not seed")
    pub.set_defaults(func=cmd_publish)

    fetch = sub.add_parser("fetch", help="download a collection onto disk and verify it")
    fetch.add_argument("name")
    fetch.add_argument("dest")
    fetch.add_argument("--beacon", required=True)
    fetch.set_defaults(func=cmd_fetch)

    st = sub.add_parser("status", help="print the network summary")
    st.add_argument("--beacon", required=True)
    st.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run a local network with a sample collection")
    demo.add_argument("--exit-when-converged", action="store_true")
    demo.add_argument("--root", default="demo-data")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from node.client import ClientError
    from storage.errors import StorageError
    try:
        return args.func(args)
    except (ChainError, ConfigError, ClientError, StorageError, OSError) as exc:
        print(f"cairn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
