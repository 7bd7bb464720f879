"""The simulated application behind consensus.

A value is the canonical encoding of SimValue (height, round, proposer, parent hash, a
nonce, and the evidence the proposer has seen); its hash is sha256 of those bytes. Fake
randomness is chained from each decided value's hash, and the proposer of (height, round)
rotates from an offset taken from the parent randomness: so every honest node derives the
same proposers only if it decided the same values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from chain.codec import Hash32, MaxLen, PubKey, decode, encode
from chain.constants import KIND_PRECOMMIT, KIND_PREVOTE
from chain.crypto import is_valid_signature, sha256
from chain.errors import ChainError
from chain.types import PREVOTE, Commit, Evidence

GENESIS_HASH = sha256(b"cairn-sim/genesis")
MAX_EVIDENCE_PER_VALUE = 16

EvidenceKey = tuple[bytes, int, int, int]     # (validator, height, round, kind)


@dataclass(frozen=True, slots=True)
class SimValue:
    height: int
    round: int
    proposer: PubKey
    parent: Hash32
    nonce: int                  # lets a byzantine proposer make a second, different value
    evidence: Annotated[tuple[Evidence, ...], MaxLen(MAX_EVIDENCE_PER_VALUE)]


def evidence_key(ev: Evidence) -> EvidenceKey:
    v = ev.vote_a.vote
    return (v.validator, v.height, v.round, v.kind)


def is_valid_evidence(chain_id: bytes, validators: tuple[bytes, ...], ev: Evidence) -> bool:
    a, b = ev.vote_a.vote, ev.vote_b.vote
    if a.validator not in validators:
        return False
    if (a.validator, a.height, a.round, a.kind) != (b.validator, b.height, b.round, b.kind):
        return False
    if a.block_hash == b.block_hash:
        return False
    domain = KIND_PREVOTE if a.kind == PREVOTE else KIND_PRECOMMIT
    return all(is_valid_signature(sv.vote.validator, sv.signature, chain_id, domain, encode(sv.vote))
               for sv in (ev.vote_a, ev.vote_b))


class EvidenceBook:
    """Double votes seen (pool) and those already on chain, one per offence: what both sim
    apps keep so each offence is proposed until it is decided, and never twice."""

    def __init__(self) -> None:
        self.pool: dict[EvidenceKey, Evidence] = {}
        self.decided_evidence: dict[EvidenceKey, Evidence] = {}

    def add_evidence(self, ev: Evidence) -> None:
        key = evidence_key(ev)
        if key not in self.decided_evidence:
            self.pool.setdefault(key, ev)

    def note_decided_evidence(self, ev: Evidence) -> None:
        key = evidence_key(ev)
        self.decided_evidence[key] = ev
        self.pool.pop(key, None)


class SimApp(EvidenceBook):
    def __init__(self, chain_id: bytes, validators: tuple[bytes, ...], me: bytes | None) -> None:
        self.chain_id = chain_id
        self.validators = validators
        self.me = me if me is not None else validators[0]
        self.parent = GENESIS_HASH
        self.randomness = sha256(b"cairn-sim/randomness" + GENESIS_HASH)
        super().__init__()
        self.decided: list[tuple[bytes, bytes]] = []           # (value hash, value) from height 1
        self.proposed: list[tuple[int, int, bytes]] = []       # (height, round, hash) we built

    @property
    def height(self) -> int:
        """The last decided height (0 = genesis)."""
        return len(self.decided)

    # ----- the consensus App interface

    def propose_value(self, height: int, round_: int) -> tuple[bytes, bytes]:
        return self.build_value(height, round_, nonce=0)

    def is_valid_value(self, height: int, value: bytes, value_hash: bytes) -> bool:
        if sha256(value) != value_hash or height != self.height + 1:
            return False
        try:
            sv = decode(value, SimValue)
        except ChainError:
            return False
        if sv.height != height or sv.parent != self.parent or sv.proposer not in self.validators:
            return False
        keys = [evidence_key(ev) for ev in sv.evidence]
        if len(set(keys)) != len(keys) or any(k in self.decided_evidence for k in keys):
            return False
        return all(k[1] < height and is_valid_evidence(self.chain_id, self.validators, ev) for k, ev in zip(keys, sv.evidence))

    def proposer(self, height: int, round_: int) -> bytes:
        offset = int.from_bytes(self.randomness[:8], "big")
        return self.validators[(offset + round_) % len(self.validators)]

    # ----- the shell's side

    def build_value(self, height: int, round_: int, nonce: int) -> tuple[bytes, bytes]:
        # Only evidence from finished heights: the block's validity must not depend on timing.
        ready = sorted((k, ev) for k, ev in self.pool.items() if k[1] < height)
        evidence = tuple(ev for _, ev in ready[:MAX_EVIDENCE_PER_VALUE])
        value = encode(SimValue(height, round_, self.me, self.parent, nonce, evidence))
        value_hash = sha256(value)
        self.proposed.append((height, round_, value_hash))
        return value, value_hash

    def apply(self, height: int, value: bytes, value_hash: bytes, commit: Commit | None = None) -> None:
        """Decide `value` at `height` (the commit is ignored: SimApp trusts consensus)."""
        if height != self.height + 1:
            raise ValueError(f"apply height {height} after {self.height}")
        sv = decode(value, SimValue)
        self.decided.append((value_hash, value))
        self.parent = value_hash
        self.randomness = sha256(b"cairn-sim/randomness" + self.randomness + value_hash)
        for ev in sv.evidence:
            self.note_decided_evidence(ev)

    # ----- what the simulation checks

    def randomness_at(self, height: int) -> bytes:
        """The randomness after `height`, replayed from the decided values."""
        app = SimApp(self.chain_id, self.validators, self.me)
        for h in range(1, height + 1):
            value_hash, value = self.decided[h - 1]
            app.apply(h, value, value_hash)
        return app.randomness

    def state_root_at(self, height: int) -> bytes:
        """SimApp's whole state is the chain of decided values: the value hash stands for it."""
        return self.decided[height - 1][0] if height else GENESIS_HASH

    def is_well_formed(self, height: int, value: bytes, value_hash: bytes) -> bool:
        try:
            sv = decode(value, SimValue)
        except ChainError:
            return False
        return sv.height == height and sv.proposer in self.validators and sha256(value) == value_hash
