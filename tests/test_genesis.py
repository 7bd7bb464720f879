"""Genesis files: format, validation, hash, and the state they start."""
import json

import pytest

from chain.constants import DOMAIN_GENESIS_RANDOMNESS
from chain.crypto import sha256
from chain.errors import GenesisError
from chain.genesis import (
    genesis_to_json,
    get_genesis_randomness,
    get_genesis_state,
    load_genesis,
    make_genesis,
    make_genesis_from_key_dirs,
    save_genesis,
)
from chain.keys import new_keys
from chain.state import get_chain_info, get_randomness, get_validators
from chain.types import Params
from tests.chainutil import make_key, make_test_genesis, make_validators


@pytest.fixture
def genesis():
    return make_test_genesis(make_validators(4), publishers=[make_key("pub").public_key])


def test_save_and_load_round_trip(genesis, tmp_path):
    save_genesis(genesis, tmp_path / "genesis.json")
    assert load_genesis(tmp_path / "genesis.json") == genesis
    text = (tmp_path / "genesis.json").read_text()
    assert genesis.validators[0].public_key.hex() in text and '"block_interval_ms": 1000' in text


def test_hash_ignores_file_formatting(genesis, tmp_path):
    (tmp_path / "g.json").write_text(json.dumps(genesis_to_json(genesis), sort_keys=True, separators=(",", ":")))
    assert load_genesis(tmp_path / "g.json").hash() == genesis.hash()


def test_hash_depends_on_every_part(genesis):
    import dataclasses
    variants = [
        dataclasses.replace(genesis, chain_id="other"),
        dataclasses.replace(genesis, genesis_time_ms=genesis.genesis_time_ms + 1),
        dataclasses.replace(genesis, params=dataclasses.replace(genesis.params, epoch_blocks=11)),
        dataclasses.replace(genesis, publishers=()),
        dataclasses.replace(genesis, validators=genesis.validators[:3]),
    ]
    assert len({genesis.hash(), *(v.hash() for v in variants)}) == 6


def test_genesis_state_and_randomness(genesis):
    state = get_genesis_state(genesis)
    randomness = sha256(DOMAIN_GENESIS_RANDOMNESS + genesis.hash())
    assert get_genesis_randomness(genesis) == randomness
    assert get_chain_info(state).height == 0 and get_chain_info(state).randomness == randomness
    assert get_chain_info(state).timestamp_ms == genesis.genesis_time_ms
    assert get_randomness(state, 0) == randomness and state.head_hash == genesis.hash()
    assert get_validators(state) == genesis.validators
    assert get_genesis_state(genesis).root == state.root


def test_make_genesis_from_key_dirs(tmp_path):
    dirs = [tmp_path / f"v{i}" for i in range(4)]
    keys = [new_keys(d, vrf=True) for d in dirs]
    addresses = [f"127.0.0.1:{7000 + i}" for i in range(4)]
    genesis = make_genesis_from_key_dirs("cairn-dev", dirs, addresses, Params(), 1_700_000_000_000)
    assert [v.public_key for v in genesis.validators] == [k[0].public_key for k in keys]
    assert [v.vrf_public_key for v in genesis.validators] == [k[1].public_key for k in keys]
    assert [v.address for v in genesis.validators] == addresses and genesis.validators[2].name == "v2"
    with pytest.raises(GenesisError):
        make_genesis_from_key_dirs("cairn-dev", dirs, addresses[:3], Params(), 0)


def edit(genesis, path: str, value):
    obj = genesis_to_json(genesis)
    target = obj
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return obj


@pytest.mark.parametrize(("path", "value"), [
    ("chain_id", "Bad Chain"),
    ("chain_id", ""),
    ("chain_id", "x" * 33),
    ("genesis_time_ms", -1),
    ("genesis_time_ms", 1.5),
    ("genesis_time_ms", True),
    ("genesis_time_ms", KeyError),
    ("validators", []),
    ("validators.0.public_key", "00" * 32),                 # not a valid point
    ("validators.0.public_key", "ab"),
    ("validators.0.public_key", "AB" * 32),                 # not lowercase hex
    ("validators.0.address", "localhost"),
    ("validators.0.address", "localhost:99999"),
    ("validators.0.name", ""),
    ("validators.0.extra", 1),
    ("params.epoch_blocks", 0),
    ("params.default_target", 17),
    ("params.randomness_mix_blocks", 1),                    # n=4: f+1 = 2
    ("params.block_interval_ms", "1000"),
    ("params.unknown_param", 1),
    ("params.max_target", KeyError),
    ("publishers.0", "zz"),
    ("surprise", 1),
])
def test_invalid_genesis_is_refused(genesis, tmp_path, path, value):
    (tmp_path / "g.json").write_text(json.dumps(edit(genesis, path, value)))
    with pytest.raises(GenesisError):
        load_genesis(tmp_path / "g.json")


def test_duplicate_or_shared_keys_are_refused():
    infos = [v.info for v in make_validators(4)]
    import dataclasses
    with pytest.raises(GenesisError):
        make_genesis("c", [infos[0], infos[0], infos[1], infos[2]], Params(), 0)
    with pytest.raises(GenesisError):
        make_genesis("c", [dataclasses.replace(infos[0], vrf_public_key=infos[0].public_key)], Params(), 0)


def test_unreadable_file_is_a_genesis_error(tmp_path):
    (tmp_path / "g.json").write_text("{not json")
    with pytest.raises(GenesisError):
        load_genesis(tmp_path / "g.json")
    with pytest.raises(GenesisError):
        load_genesis(tmp_path / "missing.json")
