"""The real chain behind the simulator's consensus cores (SimConfig(app="chain")).

ChainApp offers the sim nodes the interface SimApp does, but every value is a real block
of the chain, handled the way node/beacon.py handles it:

  propose_value  chain.transition.build_block with the proposer's signing and VRF keys,
                 on this node's head state, with the evidence it has gathered (as Evidence
                 records chosen by select_records, like the beacon's record pool) and a
                 timestamp from the simulation's clock (genesis time + simulated ms),
                 inside (parent, parent + MAX_TIMESTAMP_STEP_MS];
  is_valid_value the block decodes, hashes to the value hash, is not too far in the
                 future of the simulated clock, and passes process_proposal;
  proposer       chain.transition.get_proposer on the head state;
  apply          process_block with the decided commit (a block that fails it is a bug);
  randomness     get_chain_info(state).randomness, i.e. the ECVRF-derived chain randomness.

ChainSetup is the shared genesis: the sim's validator keys (sim_key(i), so consensus
signatures and commits are the genesis validators'), a VRF key per validator, and the
params every node starts from.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from chain.codec import decode, encode
from chain.constants import MAX_BLOCK_BYTES, MAX_FUTURE_DRIFT_MS, MAX_TIMESTAMP_STEP_MS
from chain.crypto import SigningKey, sha256
from chain.errors import ChainError
from chain.genesis import get_genesis_state, get_max_faulty, make_genesis
from chain.state import State, get_chain_info, get_height
from chain.transition import build_block, get_proposer, process_block, process_proposal, select_records
from chain.types import Block, Commit, CommittedBlock, Evidence, Genesis, Params, SignedRecord, ValidatorInfo
from tools.sim.app import EvidenceBook, evidence_key

SIM_GENESIS_TIME_MS = 1_700_000_000_000


@lru_cache(maxsize=64)
def sim_vrf_key(i: int) -> SigningKey:
    return SigningKey(sha256(b"cairn-sim/vrf-key/%d" % i))


@dataclass(frozen=True)
class ChainSetup:
    genesis: Genesis
    genesis_state: State
    keys: dict[bytes, tuple[SigningKey, SigningKey]]      # public key -> (signing key, VRF key)

    @property
    def chain_id(self) -> bytes:
        return self.genesis.chain_id_bytes


def make_chain_setup(chain_id: bytes, signing_keys: list[SigningKey],
                     genesis_time_ms: int = SIM_GENESIS_TIME_MS) -> ChainSetup:
    """A genesis whose validators, in order, are the given keys (index i also gets VRF key i)."""
    n = len(signing_keys)
    infos, keys = [], {}
    for i, key in enumerate(signing_keys):
        vrf_key = sim_vrf_key(i)
        infos.append(ValidatorInfo(key.public_key, vrf_key.public_key, f"127.0.0.1:{7000 + i}", f"sim{i}"))
        keys[key.public_key] = (key, vrf_key)
    params = Params(randomness_mix_blocks=max(Params().randomness_mix_blocks, get_max_faulty(n) + 1))
    genesis = make_genesis(chain_id.decode("ascii"), infos, params, genesis_time_ms)
    return ChainSetup(genesis, get_genesis_state(genesis), keys)


def evidence_record(ev: Evidence) -> SignedRecord:
    """Evidence as the beacon submits it: a record without an author signature."""
    return SignedRecord(ev, b"")


class ChainApp(EvidenceBook):
    """One node's chain: head state, decided blocks, and its pool of evidence records."""

    def __init__(self, setup: ChainSetup, me: bytes | None, clock_ms: Callable[[], int]) -> None:
        super().__init__()
        self.setup = setup
        self.genesis = setup.genesis
        self.chain_id = setup.chain_id
        self.validators = tuple(v.public_key for v in setup.genesis.validators)
        self.me = me if me is not None else self.validators[0]
        self._keys = setup.keys.get(me) if me is not None else None
        self._clock_ms = clock_ms
        self.state: State = setup.genesis_state
        self.decided: list[tuple[bytes, bytes]] = []           # (block hash, block bytes) from height 1
        self.blocks: list[CommittedBlock] = []
        self.randomness_history: list[bytes] = [get_chain_info(self.state).randomness]   # by height
        self.states: list[State] = [self.state]                 # by height (persistent: shared structure)
        self.proposed: list[tuple[int, int, bytes]] = []        # (height, round, hash) we built

    @property
    def height(self) -> int:
        return get_height(self.state)

    @property
    def randomness(self) -> bytes:
        return get_chain_info(self.state).randomness

    def now_ms(self) -> int:
        """Wall time on the chain: genesis time plus the simulated clock."""
        return self.genesis.genesis_time_ms + self._clock_ms()

    # ----- the consensus App interface

    def propose_value(self, height: int, round_: int) -> tuple[bytes, bytes]:
        return self.build_value(height, round_, nonce=0)

    def is_valid_value(self, height: int, value: bytes, value_hash: bytes) -> bool:
        if height != self.height + 1:
            return False
        try:
            block = decode(value, Block, max_bytes=MAX_BLOCK_BYTES)
            if block.hash() != value_hash or block.header.height != height:
                return False
            if block.header.timestamp_ms > self.now_ms() + MAX_FUTURE_DRIFT_MS:
                return False
            process_proposal(self.state, block)
        except ChainError:
            return False
        return True

    def proposer(self, height: int, round_: int) -> bytes:
        return get_proposer(self.state, height, round_).public_key

    # ----- the shell's side

    def timestamp(self, nonce: int = 0) -> int:
        """The beacon's rule (clock, at least parent + 1, at most parent + the step), moved by
        `nonce` ms so a byzantine proposer can make a second, different block."""
        parent_ts = get_chain_info(self.state).timestamp_ms
        low, high = parent_ts + 1, parent_ts + MAX_TIMESTAMP_STEP_MS
        base = min(max(self.now_ms(), low), high)
        ts = base + nonce
        return ts if ts <= high else max(low, base - nonce)

    def build_value(self, height: int, round_: int, nonce: int) -> tuple[bytes, bytes]:
        if self._keys is None:
            raise ValueError("an observer has no keys to build blocks with")
        if height != self.height + 1:
            raise ValueError(f"build height {height} on a head at {self.height}")
        key, vrf_key = self._keys
        limit = self.genesis.params.max_records_per_block
        pooled = [evidence_record(ev) for _, ev in sorted(self.pool.items())][:limit]
        records = select_records(self.state, pooled)
        if len(records) < limit:
            # every candidate was tried: the ones left out are invalid on this head (but
            # evidence of a height this head has not reached may become valid later)
            for r in pooled:
                ev_key = evidence_key(r.record)
                if r not in records and ev_key[1] <= height:
                    self.pool.pop(ev_key, None)
        block = build_block(self.state, key, vrf_key, round_, self.timestamp(nonce), records)
        value, value_hash = encode(block), block.hash()
        self.proposed.append((height, round_, value_hash))
        return value, value_hash

    def apply(self, height: int, value: bytes, value_hash: bytes, commit: Commit | None = None) -> None:
        if height != self.height + 1:
            raise ValueError(f"apply height {height} after {self.height}")
        if commit is None:
            raise ValueError("the chain applies a block only with its commit")
        block = decode(value, Block, max_bytes=MAX_BLOCK_BYTES)
        if block.hash() != value_hash:
            raise ValueError("decided value does not hash to the decided hash")
        self.state = process_block(self.state, block, commit)
        self.blocks.append(CommittedBlock(block, commit))
        self.decided.append((value_hash, value))
        self.randomness_history.append(self.randomness)
        self.states.append(self.state)
        for signed in block.body:
            if isinstance(signed.record, Evidence):
                self.note_decided_evidence(signed.record)

    # ----- what the simulation checks

    def randomness_at(self, height: int) -> bytes:
        return self.randomness_history[height]

    def state_root_at(self, height: int) -> bytes:
        return self.states[height].root

    def is_well_formed(self, height: int, value: bytes, value_hash: bytes) -> bool:
        """A decided value is a block of that height by a validator, hashing to its hash."""
        try:
            block = decode(value, Block, max_bytes=MAX_BLOCK_BYTES)
        except ChainError:
            return False
        return (block.hash() == value_hash and block.header.height == height
                and block.header.proposer in self.validators)
