"""Beacon-side proof handling: pool the peers' signed answers, put verdicts in blocks,
gather and check a proposal's answers before voting.

The split (docs/protocol.md §8): the state transition applies a ProofResult to the open
challenge it names; whether the verdict is right is checked here, by every validator,
against the signed answer the record names. The committed block keeps only the compact
result; the answers go to the prunable proof store.

**The sidecar is not signed, and needs no signature.** A ProofResult names its answer by
digest (`proof_digest = compute_proof_digest(answer)`, a hash of the whole signed answer),
the block's body root covers the records and the proposal signature covers the block, so
the proposer has committed to exactly one answer per record. The sidecar of a proposal
message is only a way to deliver those answers: any copy may have lost some (a relay can
strip it, swap answers or add junk), and the same answers also arrive as flooded ProofMsgs
and sit in the validator's own ProofPool. So a validator:

- gathers, per proposed block, the answers whose digest a record names, from every copy
  of the proposal, from its pool and from ProofMsgs arriving later (`ProposalSidecars`);
  anything else in a sidecar (junk, another answer to the same challenge) is not kept,
  and a digest names one answer, so nothing a relay sends can replace a gathered one;
- judges the block only when every named answer is there (`check_sidecar`): INVALID if a
  named answer does not earn the record's verdict on the parent state (a contradiction:
  the block is invalid, whoever delivers it); INCOMPLETE while one is missing, which says
  nothing about the block. A proposal stays out of consensus while INCOMPLETE (node/beacon.py),
  as if it had not arrived yet: if the answers never come, the propose timeout prevotes
  nil, exactly as for a proposal that never arrived.
"""
from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

from chain.codec import encode
from chain.errors import ChainError
from chain.proofs import ProofAnswer, compute_proof_digest, get_proof_verdict
from chain.state import State, get_challenge, get_height
from chain.types import INVALID, PASS, Block, Proposal, ProofResult, SignedProposal, SignedRecord
from node.messages import MAX_SIDECAR_PROOFS, ProofMsg

log = logging.getLogger("cairn.proofs")

MAX_POOLED = 10_000
# Proposed blocks whose answers are gathered at once. Beyond it the oldest block not pinned
# (the locked or valid value) is forgotten: the beacon admits per height, round and
# proposer at most as many blocks as consensus keeps, so honest operation needs a few.
MAX_TRACKED_BLOCKS = 32
# Signed proposals of one block held back while its answers are missing (one per round in
# which it is proposed or re-proposed), and remembered once handed to consensus (the
# highest rounds: a locked block is re-proposed round after round).
MAX_HELD_PER_BLOCK = 8
MAX_RELEASED_PER_BLOCK = 64


def to_answer(msg: ProofMsg) -> ProofAnswer:
    return ProofAnswer(msg.peer, msg.challenge_id, msg.proof, msg.signature)


def answer_digest(msg: ProofMsg) -> bytes:
    """What a ProofResult's proof_digest is for this answer (sha256 of the signed answer)."""
    return compute_proof_digest(to_answer(msg))


def compute_verdict(node, state: State, msg: ProofMsg, height: int) -> int | None:
    """The verdict `msg` earns at `height`, or None when it proves nothing (unknown or
    closed challenge, bad signature, unknown collection)."""
    challenge = get_challenge(state, msg.challenge_id)
    if challenge is None or challenge.peer != msg.peer:
        return None
    meta = node.collection_meta(challenge.collection)
    if meta is None:
        return None
    try:
        return get_proof_verdict(state.chain_id, challenge, to_answer(msg), meta, height)
    except ChainError as exc:
        log.info("proof answer for %s rejected: %s", msg.challenge_id.hex()[:12], exc)
        return None


class ProofPool:
    """Answers flooded by storage peers, one per challenge (the first that earns a verdict)."""

    def __init__(self) -> None:
        self._answers: OrderedDict[bytes, ProofMsg] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def add(self, msg: ProofMsg) -> bool:
        if msg.challenge_id in self._answers or len(self._answers) >= MAX_POOLED:
            return False
        self._answers[msg.challenge_id] = msg
        return True

    def get(self, challenge_id: bytes) -> ProofMsg | None:
        return self._answers.get(challenge_id)

    def remove(self, challenge_ids) -> None:
        for cid in challenge_ids:
            self._answers.pop(cid, None)

    def select(self, node, state: State, limit: int = MAX_SIDECAR_PROOFS) -> tuple[list[SignedRecord], tuple[ProofMsg, ...]]:
        """Up to `limit` ProofResult records for the next block, and the answers they name
        (one proposal message carries at most MAX_SIDECAR_PROOFS of them)."""
        height = get_height(state) + 1
        records, answers, stale = [], [], []
        for cid, msg in self._answers.items():
            if len(records) >= limit:
                break
            verdict = compute_verdict(node, state, msg, height)
            if verdict is None:
                stale.append(cid)
            elif verdict in (PASS, INVALID):
                records.append(SignedRecord(ProofResult(msg.peer, cid, verdict, answer_digest(msg)), b""))
                answers.append(msg)
        self.remove(stale)
        return records, tuple(answers)


# ---------------------------------------------------------------------------- checking a block's verdicts

class SidecarCheck(enum.Enum):
    VALID = "valid"              # every ProofResult is backed by the answer it names
    INCOMPLETE = "incomplete"    # some named answer is not here (yet): no judgement
    INVALID = "invalid"          # a named answer does not earn its record's verdict


VALID, INCOMPLETE, INVALID_SIDECAR = SidecarCheck.VALID, SidecarCheck.INCOMPLETE, SidecarCheck.INVALID


def get_proof_results(block: Block) -> list[ProofResult]:
    return [s.record for s in block.body if isinstance(s.record, ProofResult)]


def get_needed_answers(block: Block) -> tuple[tuple[bytes, ProofResult], ...]:
    """(digest, record) of each answer the block names, in body order, each digest once."""
    seen: set[bytes] = set()
    out = []
    for rec in get_proof_results(block):
        if rec.proof_digest not in seen:
            seen.add(rec.proof_digest)
            out.append((rec.proof_digest, rec))
    return tuple(out)


def check_sidecar(node, state: State, block: Block, answers: Iterable[ProofMsg]) -> SidecarCheck:
    """Judge the block's ProofResults on `state` (its parent) against `answers`, gathered
    from any source: answers no record names are ignored, order does not matter.

    INVALID as soon as one named answer is present and does not earn its record's verdict
    (or names another peer or challenge), or when the block names more answers than one
    proposal message can carry: that is a property of the block alone. Else INCOMPLETE
    while an answer is missing, else VALID."""
    results = get_proof_results(block)
    if len(results) > MAX_SIDECAR_PROOFS:
        log.info("block %d: %d proof results, more than a sidecar carries", block.header.height, len(results))
        return INVALID_SIDECAR
    by_digest: dict[bytes, ProofMsg] = {}
    if results:
        for msg in answers:
            by_digest.setdefault(answer_digest(msg), msg)
    height = block.header.height
    missing = False
    for rec in results:
        msg = by_digest.get(rec.proof_digest)
        if msg is None:
            missing = True
            continue
        if msg.peer != rec.peer or msg.challenge_id != rec.challenge_id:
            log.info("block %d: result for %s names an answer to another challenge", height, rec.challenge_id.hex()[:12])
            return INVALID_SIDECAR
        if compute_verdict(node, state, msg, height) != rec.verdict:
            log.info("block %d: verdict for %s is not the one its proof earns", height, rec.challenge_id.hex()[:12])
            return INVALID_SIDECAR
    return INCOMPLETE if missing else VALID


def is_valid_sidecar(node, state: State, block: Block, sidecar: Iterable[ProofMsg]) -> bool:
    """Every ProofResult in the block is the verdict the answer it names earns, and that
    answer is among `sidecar`."""
    return check_sidecar(node, state, block, sidecar) is VALID


def order_sidecar(block: Block, answers: Iterable[ProofMsg]) -> tuple[ProofMsg, ...]:
    """The canonical sidecar of a block: the named answers among `answers`, in body order,
    nothing else. Every honest node sends this, so honest copies of a proposal are one
    gossip message."""
    by_digest: dict[bytes, ProofMsg] = {}
    for msg in answers:
        by_digest.setdefault(answer_digest(msg), msg)
    return tuple(by_digest[d] for d, _ in get_needed_answers(block) if d in by_digest)


def sidecar_proofs(block: Block, sidecar: Iterable[ProofMsg]) -> dict[bytes, bytes]:
    """What the proof store keeps for a decided block: by challenge id, each answer one of
    its ProofResults names (by digest, for that peer and challenge), encoded."""
    by_digest: dict[bytes, ProofMsg] = {}
    for msg in sidecar:
        by_digest.setdefault(answer_digest(msg), msg)
    out = {}
    for rec in get_proof_results(block):
        msg = by_digest.get(rec.proof_digest)
        if msg is not None and msg.peer == rec.peer and msg.challenge_id == rec.challenge_id:
            out[rec.challenge_id] = encode(to_answer(msg))
    return out


# ---------------------------------------------------------------------------- gathering a proposal's answers

@dataclass(slots=True)
class TrackedBlock:
    """A proposed block (its bytes checked against the signed proposal) and its answers."""
    height: int
    value: bytes                                 # the block's canonical bytes
    needed: tuple[bytes, ...]                    # digests of the answers it names, body order
    missing: set[bytes]                          # of those, the ones not gathered yet
    held: dict[Proposal, SignedProposal] = field(default_factory=dict)     # waiting for the answers
    released: dict[Proposal, SignedProposal] = field(default_factory=dict)  # handed to consensus

    @property
    def complete(self) -> bool:
        return not self.missing

    def knows(self, signed: SignedProposal) -> bool:
        return self.held.get(signed.proposal) == signed or self.released.get(signed.proposal) == signed


class ProposalSidecars:
    """The answers each tracked block names, gathered from any source (sans-IO).

    Memory is bounded: at most `max_blocks` blocks (the oldest unpinned one goes first);
    per block, only answers whose digest one of its records names (so at most
    MAX_SIDECAR_PROOFS, each kept once however many blocks name it), at most
    MAX_HELD_PER_BLOCK held proposals and MAX_RELEASED_PER_BLOCK released ones.
    `prune(height)` forgets decided heights."""

    def __init__(self, max_blocks: int = MAX_TRACKED_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[bytes, TrackedBlock] = OrderedDict()
        self._answers: dict[bytes, ProofMsg] = {}       # digest -> answer some tracked block names
        self._wanted: dict[bytes, int] = {}             # digest -> how many tracked blocks name it

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def answer_count(self) -> int:
        return len(self._answers)

    def get(self, block_hash: bytes) -> TrackedBlock | None:
        return self._blocks.get(block_hash)

    def track(self, block: Block, value: bytes, pinned: Iterable[bytes] = ()) -> TrackedBlock:
        """Start gathering for `block` (whose bytes are `value`); already-gathered answers
        count at once. A block with more ProofResults than a sidecar carries (check_sidecar)
        or with two for one challenge (the second finds it closed: UnknownChallenge) is
        invalid as it is: nothing is gathered for it, it is complete at once."""
        block_hash = block.hash()
        entry = self._blocks.get(block_hash)
        if entry is not None:
            return entry
        results = get_proof_results(block)
        needed = tuple(d for d, _ in get_needed_answers(block))
        if len(results) > MAX_SIDECAR_PROOFS or len({r.challenge_id for r in results}) < len(results):
            needed = ()
        self._evict(set(pinned))
        entry = TrackedBlock(block.header.height, value, needed, {d for d in needed if d not in self._answers})
        self._blocks[block_hash] = entry
        for d in needed:
            self._wanted[d] = self._wanted.get(d, 0) + 1
        return entry

    def _evict(self, pinned: set[bytes]) -> None:
        while len(self._blocks) >= self.max_blocks:
            victim = next((h for h in self._blocks if h not in pinned), None)
            if victim is None:
                victim = next(iter(self._blocks))
            self._forget(victim)

    def _forget(self, block_hash: bytes) -> None:
        entry = self._blocks.pop(block_hash)
        for d in entry.needed:
            left = self._wanted[d] - 1
            if left:
                self._wanted[d] = left
            else:
                del self._wanted[d]
                self._answers.pop(d, None)

    def wants_answers(self) -> bool:
        """Whether some tracked block still misses an answer (else offer() is a no-op)."""
        return len(self._answers) < len(self._wanted)

    def offer(self, msg: ProofMsg) -> bool:
        """Keep `msg` if a tracked block names it and it was missing; True if kept."""
        if not self.wants_answers():
            return False
        digest = answer_digest(msg)
        if digest not in self._wanted or digest in self._answers:
            return False
        self._answers[digest] = msg
        for entry in self._blocks.values():
            entry.missing.discard(digest)
        return True

    def missing(self, block_hash: bytes) -> int:
        entry = self._blocks.get(block_hash)
        return len(entry.missing) if entry is not None else 0

    def needed_challenges(self, block: Block) -> list[tuple[bytes, bytes]]:
        """(challenge id, digest) of each answer `block` names that is still missing."""
        entry = self._blocks.get(block.hash())
        if entry is None:
            return []
        return [(rec.challenge_id, d) for d, rec in get_needed_answers(block) if d in entry.missing]

    def sidecar(self, block_hash: bytes) -> tuple[ProofMsg, ...]:
        """The gathered answers of a block, in body order (its canonical sidecar once complete)."""
        entry = self._blocks.get(block_hash)
        if entry is None:
            return ()
        return tuple(self._answers[d] for d in entry.needed if d in self._answers)

    # -- proposals held until their block's answers are all here

    def hold(self, block_hash: bytes, signed: SignedProposal) -> bool:
        """Keep a (verified) signed proposal of a tracked block until take_ready(); False
        if it is known already, or MAX_HELD_PER_BLOCK wait already (a block is proposed
        once per round, and an incomplete one is not in consensus's hands yet)."""
        entry = self._blocks.get(block_hash)
        if entry is None or entry.knows(signed) or len(entry.held) >= MAX_HELD_PER_BLOCK:
            return False
        entry.held[signed.proposal] = signed
        return True

    @staticmethod
    def _released(entry: TrackedBlock, signed: SignedProposal) -> None:
        entry.released[signed.proposal] = signed
        if len(entry.released) > MAX_RELEASED_PER_BLOCK:
            del entry.released[min(entry.released, key=lambda p: (p.round, p.valid_round, p.proposer))]

    def note_released(self, block_hash: bytes, signed: SignedProposal) -> None:
        """A proposal consensus has already (our own): copies of it are not held again."""
        entry = self._blocks.get(block_hash)
        if entry is not None:
            entry.held.pop(signed.proposal, None)
            self._released(entry, signed)

    def take_ready(self) -> list[tuple[SignedProposal, bytes]]:
        """The held proposals whose block is complete, in tracking order; each is released
        once."""
        out = []
        for entry in self._blocks.values():
            if entry.held and entry.complete:
                for signed in entry.held.values():
                    self._released(entry, signed)
                    out.append((signed, entry.value))
                entry.held.clear()
        return out

    def ready_for(self, height: int) -> list[tuple[SignedProposal, bytes]]:
        """Every released proposal at `height` (to hand to consensus again when it starts
        the height: it drops duplicates, and it may have missed them while behind)."""
        return [(signed, entry.value) for entry in self._blocks.values() if entry.height == height
                for signed in entry.released.values()]

    def prune(self, height: int) -> None:
        """Forget every block at or below `height` (decided, or never will be)."""
        for block_hash in [h for h, e in self._blocks.items() if e.height <= height]:
            self._forget(block_hash)
