"""Genesis: the file every node is given, its validation, its hash, and the state it starts.

The file is JSON for people to read and diff; the chain only ever hashes its canonical
encoding (`Genesis.hash()`), so whitespace or key order in the file do not matter.

    {
      "chain_id": "cairn-demo",
      "genesis_time_ms": 1700000000000,
      "validators": [{"name": "v0", "public_key": "<hex>", "vrf_public_key": "<hex>",
                      "address": "127.0.0.1:7000"}, ...],
      "params": {"block_interval_ms": 1000, ...every field of Params...},
      "publishers": ["<hex>", ...]          (empty: anyone may publish)
    }
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from chain.constants import DOMAIN_GENESIS_RANDOMNESS
from chain.crypto import is_valid_chain_id, sha256
from chain.errors import GenesisError
from chain.keys import load_keys
from chain.state import KEY_CHAIN, KEY_VALIDATORS, ChainInfo, Overlay, PersistentMap, State, commit_overlay, get_randomness_key
from chain.state_root import EMPTY_TREE
from chain.types import Genesis, Params, ValidatorInfo
from chain.vrf import is_prime_order_point

MAX_NAME_BYTES = 255
PARAM_NAMES = tuple(f.name for f in dataclasses.fields(Params))


# ---------------------------------------------------------------------------- rules

def get_max_faulty(n: int) -> int:
    """f: the most byzantine validators n can tolerate (n >= 3f + 1)."""
    return (n - 1) // 3


def is_valid_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536


def validate_params(params: Params, n_validators: int) -> None:
    for name in PARAM_NAMES:
        value = getattr(params, name)
        if type(value) is not int or value < 0:
            raise GenesisError(f"param {name} must be a non-negative integer, got {value!r}")
    for name in ("block_interval_ms", "epoch_blocks", "proof_deadline_blocks", "default_target",
                 "max_target", "max_shard_bytes", "max_records_per_block", "randomness_mix_blocks"):
        if getattr(params, name) == 0:
            raise GenesisError(f"param {name} must be positive")
    if not params.default_target <= params.max_target:
        raise GenesisError("default_target is above max_target")
    if params.randomness_mix_blocks < get_max_faulty(n_validators) + 1:
        raise GenesisError("randomness_mix_blocks must be at least f+1, or f validators could predict challenges")
    if params.reputation_alpha_ppm > 1_000_000 or params.reputation_start_ppm > 1_000_000 or params.suspend_below_ppm > 1_000_000:
        raise GenesisError("ppm parameters must be at most 1_000_000")


def validate_validators(validators: Sequence[ValidatorInfo]) -> None:
    if not validators:
        raise GenesisError("genesis needs at least one validator")
    for v in validators:
        if not (is_prime_order_point(v.public_key) and is_prime_order_point(v.vrf_public_key)):
            raise GenesisError(f"validator {v.name!r}: a key is not a valid Ed25519 public key")
        if v.public_key == v.vrf_public_key:
            raise GenesisError(f"validator {v.name!r}: the VRF key must differ from the signing key")
        if not is_valid_address(v.address):
            raise GenesisError(f"validator {v.name!r}: address {v.address!r} is not host:port")
        if not v.name or len(v.name.encode()) > MAX_NAME_BYTES:
            raise GenesisError("a validator name must be 1..255 bytes")
    keys = [v.public_key for v in validators] + [v.vrf_public_key for v in validators]
    if len(set(keys)) != len(keys):
        raise GenesisError("validator keys must be distinct")


def validate_genesis(genesis: Genesis) -> None:
    if not is_valid_chain_id(genesis.chain_id.encode("utf-8")):
        raise GenesisError(f"chain id {genesis.chain_id!r} must be 1..32 of [a-z0-9-], starting alphanumeric")
    if type(genesis.genesis_time_ms) is not int or genesis.genesis_time_ms < 0:
        raise GenesisError("genesis_time_ms must be a non-negative integer")
    validate_validators(genesis.validators)
    validate_params(genesis.params, len(genesis.validators))
    if len(set(genesis.publishers)) != len(genesis.publishers):
        raise GenesisError("publisher keys must be distinct")


def make_genesis(chain_id: str, validators: Sequence[ValidatorInfo], params: Params,
                 genesis_time_ms: int, publishers: Sequence[bytes] = ()) -> Genesis:
    genesis = Genesis(chain_id, genesis_time_ms, tuple(validators), params, tuple(publishers))
    validate_genesis(genesis)
    return genesis


def make_genesis_from_key_dirs(chain_id: str, datadirs: list[Path], addresses: list[str], params: Params,
                               genesis_time_ms: int, publishers: Sequence[bytes] = ()) -> Genesis:
    """Genesis for validators whose node.key and vrf.key live in `datadirs` (names: dir names)."""
    if len(datadirs) != len(addresses):
        raise GenesisError(f"{len(datadirs)} validator dirs but {len(addresses)} addresses")
    infos = []
    for datadir, address in zip(datadirs, addresses):
        node_key, vrf_key = load_keys(Path(datadir), vrf=True)
        infos.append(ValidatorInfo(node_key.public_key, vrf_key.public_key, address, Path(datadir).name))
    return make_genesis(chain_id, infos, params, genesis_time_ms, publishers)


# ---------------------------------------------------------------------------- file format

def genesis_to_json(genesis: Genesis) -> dict:
    return {
        "chain_id": genesis.chain_id,
        "genesis_time_ms": genesis.genesis_time_ms,
        "validators": [
            {"name": v.name, "public_key": v.public_key.hex(), "vrf_public_key": v.vrf_public_key.hex(), "address": v.address}
            for v in genesis.validators
        ],
        "params": {name: getattr(genesis.params, name) for name in PARAM_NAMES},
        "publishers": [p.hex() for p in genesis.publishers],
    }


def _field(obj: object, name: str, kind: type, where: str):
    if not isinstance(obj, dict) or name not in obj:
        raise GenesisError(f"{where}: missing {name!r}")
    value = obj[name]
    if type(value) is not kind:
        raise GenesisError(f"{where}: {name!r} must be a {kind.__name__}")
    return value


def _only_keys(obj: dict, allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise GenesisError(f"{where}: unknown fields {unknown}")


def _key32(text: object, where: str) -> bytes:
    try:
        key = bytes.fromhex(text) if type(text) is str else b""
    except ValueError:
        key = b""
    if len(key) != 32 or key.hex() != text:
        raise GenesisError(f"{where}: expected 64 lowercase hex digits")
    return key


def _validator_from_json(obj: object, i: int) -> ValidatorInfo:
    where = f"validators[{i}]"
    if not isinstance(obj, dict):
        raise GenesisError(f"{where} must be an object")
    _only_keys(obj, ("name", "public_key", "vrf_public_key", "address"), where)
    return ValidatorInfo(
        public_key=_key32(_field(obj, "public_key", str, where), f"{where}.public_key"),
        vrf_public_key=_key32(_field(obj, "vrf_public_key", str, where), f"{where}.vrf_public_key"),
        address=_field(obj, "address", str, where),
        name=_field(obj, "name", str, where),
    )


def genesis_from_json(obj: object) -> Genesis:
    if not isinstance(obj, dict):
        raise GenesisError("genesis must be a JSON object")
    _only_keys(obj, ("chain_id", "genesis_time_ms", "validators", "params", "publishers"), "genesis")
    params_obj = _field(obj, "params", dict, "genesis")
    _only_keys(params_obj, PARAM_NAMES, "params")
    params = Params(**{name: _field(params_obj, name, int, "params") for name in PARAM_NAMES})
    validators = tuple(_validator_from_json(v, i) for i, v in enumerate(_field(obj, "validators", list, "genesis")))
    publishers = tuple(_key32(p, f"publishers[{i}]") for i, p in enumerate(_field(obj, "publishers", list, "genesis")))
    return make_genesis(_field(obj, "chain_id", str, "genesis"), validators, params,
                        _field(obj, "genesis_time_ms", int, "genesis"), publishers)


def save_genesis(genesis: Genesis, path: Path) -> None:
    validate_genesis(genesis)
    Path(path).write_text(json.dumps(genesis_to_json(genesis), indent=2) + "\n")


def load_genesis(path: Path) -> Genesis:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenesisError(f"cannot read genesis file {path}: {exc}") from exc
    return genesis_from_json(obj)


# ---------------------------------------------------------------------------- genesis state

def get_genesis_randomness(genesis: Genesis) -> bytes:
    return sha256(DOMAIN_GENESIS_RANDOMNESS + genesis.hash())


def get_genesis_state(genesis: Genesis) -> State:
    """Height 0: the validators, and the genesis randomness as the first history entry."""
    randomness = get_genesis_randomness(genesis)
    empty = State(genesis, genesis.hash(), PersistentMap(), EMPTY_TREE, ())
    overlay = Overlay(empty)
    overlay.put(KEY_VALIDATORS, genesis.validators)
    overlay.put(KEY_CHAIN, ChainInfo(0, genesis.genesis_time_ms, randomness))
    overlay.put(get_randomness_key(0), randomness)
    return commit_overlay(overlay, genesis.hash())
