"""Tendermint consensus as a sans-IO state machine.

This is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus"
(the CometBFT paper), for a fixed validator set, generic over an opaque value: a block as
bytes plus its 32-byte hash. The application sits behind `App` (three calls); the core
never does I/O, never reads a clock and never draws randomness. Events go in with the
current time in integer milliseconds; a list of actions comes out, to be carried out by
the shell in order:

- `Persist(SignState)`: what the core is about to sign. It must be durable before any
  later action in the same list is carried out ("persist before you speak").
- `Broadcast(message, value_bytes)`: a SignedProposal (with its value) or a SignedVote.
- `ScheduleTimeout(at_ms, kind, height, round)`: call `on_timeout(action.timeout, now)`
  at or after `at_ms`. Stale timeouts are ignored, so the shell need not cancel them.
- `Decide(height, round, value_bytes, value_hash, commit)`: the value is final. The shell
  stores it with its commit (again before carrying out later actions), applies it, and
  calls `start(height + 1, now)` when it wants the next height to begin (immediately, or
  after a block interval). Messages for the next height are buffered meanwhile.
- `EvidenceFound(Evidence)`: two conflicting signed votes by one validator; the app keeps
  them and puts them on chain.

Signatures: the core verifies every signature itself (Ed25519 through chain.crypto, which
is pure computation), after cheap checks (membership, height and round window, duplicate)
so that replays and floods cost no verification. Malformed messages, non-validators and
bad signatures raise `InvalidMessage` so the shell can drop the connection; stale,
duplicate and out-of-window messages are silently ignored (honest peers send those).

Memory is bounded: only the current height and the next one are kept; per (kind, round,
validator) at most MAX_VOTES_PER_SLOT votes with distinct hashes (more than one only from
an equivocator: each counts for its own hash, as the paper counts messages, and the first
pair is reported as evidence); per (round, proposer) at most MAX_PROPOSALS_PER_ROUND
proposals; rounds only up to `current round + max_rounds_ahead`. For rounds beyond the
window the core remembers just each validator's highest round seen, which is all the
round-skip rule needs; the votes themselves come back through gossip.

Gossip: the paper assumes that a message one correct node received reaches every correct
node. The shell provides that by relaying consensus messages it had not seen before (a
seen-cache flood) and by re-sending `own_messages()` periodically.

Restart safety: every signature is preceded by a `Persist(SignState)` holding the
(height, round, step, value hash) being signed and the lock. A core built with that last
record refuses to sign anything at a lower (height, round, step), or a different value at
the same one, and resumes the height with its lock, so it neither double-signs nor
forgets a lock (no "amnesia") after a crash.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from chain.codec import encode
from chain.constants import KIND_PRECOMMIT, KIND_PREVOTE, KIND_PROPOSAL
from chain.crypto import SigningKey, is_valid_signature
from chain.errors import ChainError
from chain.types import (
    NIL, PRECOMMIT, PREVOTE, Commit, CommitSig, Evidence, Params, Proposal, SignedProposal, SignedVote, Vote,
)

# Steps of a round, in signing order: a validator signs at most one message per step.
STEP_PROPOSE = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3

TIMEOUT_PROPOSE = 1
TIMEOUT_PREVOTE = 2
TIMEOUT_PRECOMMIT = 3

MAX_PROPOSALS_PER_ROUND = 2     # per (height, round, proposer): the real one plus one equivocation
MAX_VOTES_PER_SLOT = 3          # per (height, round, kind, validator): nil and two values

_VOTE_DOMAIN = {PREVOTE: KIND_PREVOTE, PRECOMMIT: KIND_PRECOMMIT}
_VOTE_STEP = {PREVOTE: STEP_PREVOTE, PRECOMMIT: STEP_PRECOMMIT}


class ConsensusError(ChainError):
    """The consensus core was driven wrongly (e.g. started at a height it has passed)."""


class InvalidMessage(ConsensusError):
    """A consensus message is malformed, from a non-validator, or badly signed."""


class InvalidCommit(ConsensusError):
    """A commit offered for catch-up does not carry a quorum of valid precommits."""


# ---------------------------------------------------------------------------- configuration

@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    timeout_propose_ms: int = 1500
    timeout_prevote_ms: int = 500
    timeout_precommit_ms: int = 500
    timeout_delta_ms: int = 500        # each timeout grows by this much per round
    max_rounds_ahead: int = 4          # rounds above the current one whose messages are kept

    @classmethod
    def from_params(cls, params: Params) -> "ConsensusConfig":
        """The timeouts a genesis file sets."""
        return cls(
            timeout_propose_ms=params.timeout_propose_ms,
            timeout_prevote_ms=params.timeout_prevote_ms,
            timeout_precommit_ms=params.timeout_precommit_ms,
            timeout_delta_ms=params.timeout_delta_ms,
        )

    def timeout_ms(self, kind: int, round_: int) -> int:
        base = {TIMEOUT_PROPOSE: self.timeout_propose_ms, TIMEOUT_PREVOTE: self.timeout_prevote_ms,
                TIMEOUT_PRECOMMIT: self.timeout_precommit_ms}[kind]
        return base + round_ * self.timeout_delta_ms


def quorum(n: int) -> int:
    """q = floor(2n/3) + 1: any two quorums share an honest validator when f <= ceil(n/3) - 1."""
    return 2 * n // 3 + 1


def max_faulty(n: int) -> int:
    """f = ceil(n/3) - 1."""
    return (n + 2) // 3 - 1


class App(Protocol):
    """What consensus needs from the application (the beacon's chain, or the simulator's)."""

    def propose_value(self, height: int, round_: int) -> tuple[bytes, bytes]:
        """A fresh value to propose and its 32-byte hash (we are proposer, no valid value)."""
        ...

    def is_valid_value(self, height: int, value: bytes, value_hash: bytes) -> bool:
        """True iff value is a valid next value and value_hash is its hash. Deterministic."""
        ...

    def proposer(self, height: int, round_: int) -> bytes:
        """Public key of the proposer of (height, round); only called for the started height."""
        ...


# ---------------------------------------------------------------------------- events and actions

@dataclass(frozen=True, slots=True)
class Timeout:
    kind: int
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class SignState:
    """What a validator is about to sign, plus its lock: the record that makes restarts safe."""
    height: int
    round: int
    step: int                  # STEP_PROPOSE (a proposal), STEP_PREVOTE or STEP_PRECOMMIT
    value_hash: bytes          # NIL for a nil vote
    locked_round: int
    locked_hash: bytes
    valid_round: int
    valid_hash: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    record: SignState


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: SignedProposal | SignedVote
    value: bytes = b""         # the proposed value, for a SignedProposal


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    at_ms: int
    kind: int
    height: int
    round: int

    @property
    def timeout(self) -> Timeout:
        return Timeout(self.kind, self.height, self.round)


@dataclass(frozen=True, slots=True)
class Decide:
    height: int
    round: int
    value: bytes
    value_hash: bytes
    commit: Commit


@dataclass(frozen=True, slots=True)
class EvidenceFound:
    evidence: Evidence


Action = Persist | Broadcast | ScheduleTimeout | Decide | EvidenceFound


# ---------------------------------------------------------------------------- message log

class _HeightLog:
    """Every admitted message of one height, with running tallies."""

    __slots__ = ("height", "proposals", "votes", "tally", "totals", "highest_round", "evidence")

    def __init__(self, height: int) -> None:
        self.height = height
        # round -> sender -> proposals in arrival order (at most MAX_PROPOSALS_PER_ROUND, so an
        # equivocating proposer's second value can still be decided); pruned to the proposer
        # at start, when the proposer becomes known.
        self.proposals: dict[int, dict[int, list[tuple[SignedProposal, bytes]]]] = {}
        # (kind, round) -> idx -> that validator's votes, distinct hashes, arrival order
        # (more than one only for an equivocator; at most MAX_VOTES_PER_SLOT).
        self.votes: dict[tuple[int, int], dict[int, list[SignedVote]]] = {}
        self.tally: dict[tuple[int, int], dict[bytes, int]] = {}           # (kind, round) -> hash -> voters
        self.totals: dict[tuple[int, int], int] = {}                       # (kind, round) -> distinct voters
        self.highest_round: dict[int, int] = {}                            # idx -> highest round seen
        self.evidence: list[Evidence] = []

    def note_round(self, idx: int, round_: int) -> None:
        if round_ > self.highest_round.get(idx, -1):
            self.highest_round[idx] = round_

    def add_vote(self, idx: int, sv: SignedVote) -> None:
        """Count a vote. An equivocator's votes each count for their own hash (as the paper
        counts messages): a node that saw a polka including one of them and locked must be
        matched by the others seeing that polka too, or the lock could never be released."""
        key = (sv.vote.kind, sv.vote.round)
        mine = self.votes.setdefault(key, {}).setdefault(idx, [])
        if not mine:
            self.totals[key] = self.totals.get(key, 0) + 1
        mine.append(sv)
        counts = self.tally.setdefault(key, {})
        counts[sv.vote.block_hash] = counts.get(sv.vote.block_hash, 0) + 1
        self.note_round(idx, sv.vote.round)

    def count(self, kind: int, round_: int, block_hash: bytes) -> int:
        return self.tally.get((kind, round_), {}).get(block_hash, 0)

    def total(self, kind: int, round_: int) -> int:
        return self.totals.get((kind, round_), 0)


def _order_evidence(a: SignedVote, b: SignedVote) -> Evidence:
    """One canonical order, so every node reports the same record for the same pair."""
    if (a.vote.block_hash, a.signature) > (b.vote.block_hash, b.signature):
        a, b = b, a
    return Evidence(a, b)


# ---------------------------------------------------------------------------- the core

class Tendermint:
    """One validator's (or observer's, with key=None) consensus state machine."""

    def __init__(
        self,
        chain_id: bytes,
        validators: tuple[bytes, ...],
        app: App,
        config: ConsensusConfig = ConsensusConfig(),
        key: SigningKey | None = None,
        last_signed: SignState | None = None,
    ) -> None:
        if len(set(validators)) != len(validators) or not validators:
            raise ConsensusError("the validator set must be non-empty and without duplicates")
        self.chain_id = chain_id
        self.validators = validators
        self.app = app
        self.config = config
        self.key = key
        self._index = {pk: i for i, pk in enumerate(validators)}
        self.my_index = self._index.get(key.public_key) if key is not None else None
        if key is not None and self.my_index is None:
            raise ConsensusError("the signing key is not in the validator set")
        self.q = quorum(len(validators))
        self.f = max_faulty(len(validators))
        self._last_signed = last_signed
        self.refused_signatures = 0       # signatures the restart guard refused (tests, metrics)

        self.height = 0
        self.started = False
        self.round = 0
        self.step = STEP_PROPOSE
        self.locked_round = -1
        self.locked_hash = NIL
        self.valid_round = -1
        self.valid_hash = NIL
        self._log = _HeightLog(0)
        self._next = _HeightLog(1)
        self._own: list[Broadcast] = []
        self._fired: set[tuple[int, int]] = set()     # (rule, round) of "for the first time" rules
        self._validity: dict[tuple[bytes, bytes], bool] = {}
        self._proposer_idx: dict[int, int] = {}

    # ------------------------------------------------------------------ events

    def start(self, height: int, now_ms: int) -> list[Action]:
        """Begin `height` (the app has applied height-1). Buffered messages are kept."""
        if height < self.height or (height == self.height and self.started):
            raise ConsensusError(f"cannot start height {height} at height {self.height}")
        if height == self.height + 1:
            self._log, self._next = self._next, _HeightLog(height + 1)
        elif height > self.height + 1:
            self._log, self._next = _HeightLog(height), _HeightLog(height + 1)
        self.height = height
        self.started = True
        self.round, self.step = 0, STEP_PROPOSE
        self.locked_round, self.locked_hash = -1, NIL
        self.valid_round, self.valid_hash = -1, NIL
        self._own = []
        self._fired = set()
        self._validity = {}
        self._proposer_idx = {}
        self._prune_proposals()
        out: list[Action] = []
        last = self._last_signed
        if last is not None and last.height == height:
            self._resume(last, now_ms, out)
        else:
            self._start_round(0, now_ms, out)
        self._advance(now_ms, out)
        return out

    def on_proposal(self, signed: SignedProposal, value: bytes, now_ms: int) -> list[Action]:
        p = signed.proposal
        log = self._log_for(p.height)
        if log is None:
            return []
        idx = self._index.get(p.proposer)
        if idx is None:
            raise InvalidMessage("proposal from a non-validator")
        if p.round < 0 or not -1 <= p.valid_round < p.round or len(p.block_hash) != 32:
            raise InvalidMessage(f"malformed proposal round {p.round} valid_round {p.valid_round}")
        current = log is self._log and self.started
        if current and idx != self._proposer_of(p.round):
            # Ignored, not rejected: an honest peer may relay it from its next-height buffer,
            # filled before the proposer of that height could be known.
            return []
        in_window = p.round <= self._base_round(log) + self.config.max_rounds_ahead
        existing = log.proposals.get(p.round, {}).get(idx, [])
        if any(e[0].proposal == p for e in existing) or len(existing) >= MAX_PROPOSALS_PER_ROUND:
            return []        # a duplicate, or an equivocating proposer past its bound
        if not in_window and p.round <= log.highest_round.get(idx, -1):
            return []
        if not is_valid_signature(p.proposer, signed.signature, self.chain_id, KIND_PROPOSAL, encode(p)):
            raise InvalidMessage("bad proposal signature")
        log.note_round(idx, p.round)
        if in_window:
            log.proposals.setdefault(p.round, {}).setdefault(idx, []).append((signed, value))
        out: list[Action] = []
        if current:
            self._advance(now_ms, out)
        return out

    def on_vote(self, signed: SignedVote, now_ms: int) -> list[Action]:
        v = signed.vote
        log = self._log_for(v.height)
        if log is None:
            return []
        idx = self._index.get(v.validator)
        if idx is None:
            raise InvalidMessage("vote from a non-validator")
        if v.kind not in _VOTE_DOMAIN or v.round < 0 or len(v.block_hash) not in (0, 32):
            raise InvalidMessage("malformed vote")
        key = (v.kind, v.round)
        existing = log.votes.get(key, {}).get(idx, [])
        if any(e.vote == v for e in existing) or len(existing) >= MAX_VOTES_PER_SLOT:
            return []        # a replay, or an equivocator past its bound
        in_window = v.round <= self._base_round(log) + self.config.max_rounds_ahead
        if not in_window and v.round <= log.highest_round.get(idx, -1):
            return []
        if not is_valid_signature(v.validator, signed.signature, self.chain_id, _VOTE_DOMAIN[v.kind], encode(v)):
            raise InvalidMessage("bad vote signature")
        out: list[Action] = []
        if not in_window:
            log.note_round(idx, v.round)
        else:
            log.add_vote(idx, signed)
            if len(existing) == 2:         # the first conflict is the evidence; one per slot
                evidence = _order_evidence(existing[0], signed)
                log.evidence.append(evidence)
                out.append(EvidenceFound(evidence))
        if log is self._log and self.started:
            self._advance(now_ms, out)
        return out

    def on_timeout(self, timeout: Timeout, now_ms: int) -> list[Action]:
        if not self.started or timeout.height != self.height or timeout.round != self.round:
            return []
        out: list[Action] = []
        if timeout.kind == TIMEOUT_PROPOSE and self.step == STEP_PROPOSE:
            self._vote(PREVOTE, NIL, out)
            self.step = STEP_PREVOTE
        elif timeout.kind == TIMEOUT_PREVOTE and self.step == STEP_PREVOTE:
            self._vote(PRECOMMIT, NIL, out)
            self.step = STEP_PRECOMMIT
        elif timeout.kind == TIMEOUT_PRECOMMIT:
            self._start_round(self.round + 1, now_ms, out)
        else:
            return []
        self._advance(now_ms, out)
        return out

    def on_commit(self, value: bytes, value_hash: bytes, commit: Commit, now_ms: int) -> list[Action]:
        """Catch-up: decide the current height from a commit received through sync.

        The commit alone proves finality (q valid precommits for the hash in one round), so
        a node that missed the round's messages still decides the same value.
        """
        if not self.started or commit.height != self.height:
            return []
        if commit.block_hash != value_hash:
            raise InvalidCommit("commit is for another value")
        seen: set[int] = set()
        for cs in commit.signatures:
            if cs.validator_index in seen or not 0 <= cs.validator_index < len(self.validators):
                raise InvalidCommit("duplicate or unknown validator index in commit")
            seen.add(cs.validator_index)
            vote = Vote(PRECOMMIT, commit.height, commit.round, value_hash, self.validators[cs.validator_index])
            if not is_valid_signature(vote.validator, cs.signature, self.chain_id, KIND_PRECOMMIT, encode(vote)):
                raise InvalidCommit("bad precommit signature in commit")
        if len(seen) < self.q:
            raise InvalidCommit(f"commit has {len(seen)} signatures, quorum is {self.q}")
        if not self.app.is_valid_value(self.height, value, value_hash):
            raise InvalidCommit("committed value is not valid here")
        out: list[Action] = []
        self._decide(commit.round, value, value_hash, commit, out)
        return out

    def on_applied(self, height: int) -> None:
        """The app applied `height` by other means (sync) while a round may still run at
        or below it: that round is over. Its timeouts and messages no longer act (a stale
        timeout would otherwise start a round against the next height's state), and
        nothing of it is resent. Messages for later heights stay buffered for start()."""
        if self.started and self.height <= height:
            self.started = False
            self._own = []

    # ------------------------------------------------------------------ queries

    def is_validator(self, public_key: bytes) -> bool:
        """For the shell's gossip filter: messages signed by anyone else are rejected."""
        return public_key in self._index

    def own_messages(self) -> list[Broadcast]:
        """Everything this node signed at the current height, for gossip retransmission."""
        return list(self._own)

    @property
    def evidence(self) -> list[Evidence]:
        return list(self._log.evidence)

    @property
    def last_signed(self) -> SignState | None:
        return self._last_signed

    # ------------------------------------------------------------------ the rules

    def _advance(self, now_ms: int, out: list[Action]) -> None:
        """Apply the upon-rules of Algorithm 1 until none fires."""
        while self.started:
            if self._rule_decide(out):
                return
            if self._rule_round_skip(now_ms, out):
                continue
            if self.step == STEP_PROPOSE and self._rule_prevote_on_proposal(out):
                continue
            if self._rule_polka_for_value(out):
                continue
            if self._rule_polka_for_nil(out):
                continue
            self._rule_schedule_timeouts(now_ms, out)
            return

    def _rule_decide(self, out: list[Action]) -> bool:
        """Lines 49-54: a proposal and q precommits for it in any round decide it."""
        log = self._log
        for (kind, r), counts in log.tally.items():
            if kind != PRECOMMIT:
                continue
            for block_hash, n in counts.items():
                if n < self.q or block_hash == NIL:
                    continue
                value = self._proposal_for(r, block_hash)
                if value is None:
                    continue
                sigs = tuple(
                    CommitSig(i, sv.signature)
                    for i, votes in sorted(log.votes[(PRECOMMIT, r)].items())
                    for sv in votes
                    if sv.vote.block_hash == block_hash
                )
                self._decide(r, value, block_hash, Commit(self.height, r, block_hash, sigs), out)
                return True
        return False

    def _rule_round_skip(self, now_ms: int, out: list[Action]) -> bool:
        """Lines 55-56: f+1 validators seen in rounds above ours take us to the highest such round."""
        rounds = sorted(self._log.highest_round.values(), reverse=True)
        if len(rounds) <= self.f:
            return False
        target = rounds[self.f]     # at least f+1 validators are at this round or above
        if target <= self.round:
            return False
        self._start_round(target, now_ms, out)
        return True

    def _rule_prevote_on_proposal(self, out: list[Action]) -> bool:
        """Lines 22-33: prevote the round's proposal if the lock allows it, else nil."""
        for signed, value in self._proposals(self.round):
            p = signed.proposal
            vr = p.valid_round
            if vr == -1:
                ok = self._is_valid(value, p.block_hash) and (
                    self.locked_round == -1 or self.locked_hash == p.block_hash)
            elif self._log.count(PREVOTE, vr, p.block_hash) >= self.q:
                ok = self._is_valid(value, p.block_hash) and (
                    self.locked_round <= vr or self.locked_hash == p.block_hash)
            else:
                continue     # wait for the polka of round vr (or time out)
            self._vote(PREVOTE, p.block_hash if ok else NIL, out)
            self.step = STEP_PREVOTE
            return True
        return False

    def _rule_polka_for_value(self, out: list[Action]) -> bool:
        """Lines 36-43: proposal plus q prevotes for it in this round: lock and precommit."""
        if self.step < STEP_PREVOTE or (36, self.round) in self._fired:
            return False
        counts = self._log.tally.get((PREVOTE, self.round), {})
        polka = next((h for h, n in counts.items() if n >= self.q and h != NIL), None)
        if polka is None or self._proposal_for(self.round, polka) is None:
            return False
        self._fired.add((36, self.round))
        if self.step == STEP_PREVOTE:
            self.locked_round, self.locked_hash = self.round, polka
            self._vote(PRECOMMIT, polka, out)
            self.step = STEP_PRECOMMIT
        self.valid_round, self.valid_hash = self.round, polka
        return True

    def _rule_polka_for_nil(self, out: list[Action]) -> bool:
        """Lines 44-46: q prevotes for nil: precommit nil."""
        if self.step != STEP_PREVOTE or self._log.count(PREVOTE, self.round, NIL) < self.q:
            return False
        self._vote(PRECOMMIT, NIL, out)
        self.step = STEP_PRECOMMIT
        return True

    def _rule_schedule_timeouts(self, now_ms: int, out: list[Action]) -> None:
        """Lines 34-35 and 47-48: q votes of any kind start the prevote / precommit timers."""
        r = self.round
        if self.step == STEP_PREVOTE and (34, r) not in self._fired and self._log.total(PREVOTE, r) >= self.q:
            self._fired.add((34, r))
            self._schedule(TIMEOUT_PREVOTE, now_ms, out)
        if (47, r) not in self._fired and self._log.total(PRECOMMIT, r) >= self.q:
            self._fired.add((47, r))
            self._schedule(TIMEOUT_PRECOMMIT, now_ms, out)

    # ------------------------------------------------------------------ round and height changes

    def _start_round(self, round_: int, now_ms: int, out: list[Action]) -> None:
        """Lines 11-21."""
        self.round, self.step = round_, STEP_PROPOSE
        if self.key is not None and self._proposer_of(round_) == self.my_index:
            value, value_hash, vr = self._value_to_propose(round_)
            if self._propose(value, value_hash, vr, out):
                return
        self._schedule(TIMEOUT_PROPOSE, now_ms, out)

    def _value_to_propose(self, round_: int) -> tuple[bytes, bytes, int]:
        if self.valid_round >= 0:
            value = self._value_bytes(self.valid_hash)
            if value is not None:
                return value, self.valid_hash, self.valid_round
        value, value_hash = self.app.propose_value(self.height, round_)
        return value, value_hash, -1

    def _resume(self, last: SignState, now_ms: int, out: list[Action]) -> None:
        """Re-enter the height we crashed in: its round, step and lock, re-sending our last vote.

        Re-signing the identical vote yields the identical Ed25519 signature, so it is never
        a conflict, and it lets the others count us again.
        """
        self.round = last.round
        self.locked_round, self.locked_hash = last.locked_round, last.locked_hash
        self.valid_round, self.valid_hash = last.valid_round, last.valid_hash
        if last.step == STEP_PROPOSE:
            self.step = STEP_PROPOSE
            self._schedule(TIMEOUT_PROPOSE, now_ms, out)    # we lost the proposal's bytes
            return
        kind = PREVOTE if last.step == STEP_PREVOTE else PRECOMMIT
        self.step = last.step
        self._vote(kind, last.value_hash, out)

    def _decide(self, round_: int, value: bytes, value_hash: bytes, commit: Commit, out: list[Action]) -> None:
        out.append(Decide(self.height, round_, value, value_hash, commit))
        # Wait for start(height + 1): the app must apply the value before it can name proposers.
        self.height += 1
        self.started = False
        self._log, self._next = self._next, _HeightLog(self.height + 1)
        self._own = []
        self._proposer_idx = {}
        self._validity = {}

    # ------------------------------------------------------------------ signing

    def _may_sign(self, round_: int, step: int, value_hash: bytes) -> bool:
        """The restart guard: never sign below the last signed (height, round, step), nor a
        different value at the same one."""
        last = self._last_signed
        if last is None:
            return True
        here, there = (self.height, round_, step), (last.height, last.round, last.step)
        return here > there or (here == there and value_hash == last.value_hash)

    def _persist(self, round_: int, step: int, value_hash: bytes, out: list[Action]) -> bool:
        if not self._may_sign(round_, step, value_hash):
            self.refused_signatures += 1
            return False
        record = SignState(self.height, round_, step, value_hash, self.locked_round, self.locked_hash,
                           self.valid_round, self.valid_hash)
        self._last_signed = record
        out.append(Persist(record))
        return True

    def _propose(self, value: bytes, value_hash: bytes, valid_round: int, out: list[Action]) -> bool:
        if self.key is None or self.my_index is None:
            return False
        if not self._persist(self.round, STEP_PROPOSE, value_hash, out):
            return False
        p = Proposal(self.height, self.round, value_hash, valid_round, self.key.public_key)
        signed = SignedProposal(p, self.key.sign(self.chain_id, KIND_PROPOSAL, encode(p)))
        self._log.proposals.setdefault(self.round, {}).setdefault(self.my_index, []).append((signed, value))
        self._log.note_round(self.my_index, self.round)
        message = Broadcast(signed, value)
        self._own.append(message)
        out.append(message)
        return True

    def _vote(self, kind: int, block_hash: bytes, out: list[Action]) -> None:
        """Sign and send a vote; an observer, or the restart guard, only moves the step."""
        if self.key is None or self.my_index is None:
            return
        if not self._persist(self.round, _VOTE_STEP[kind], block_hash, out):
            return
        v = Vote(kind, self.height, self.round, block_hash, self.key.public_key)
        signed = SignedVote(v, self.key.sign(self.chain_id, _VOTE_DOMAIN[kind], encode(v)))
        if not self._log.votes.get((kind, self.round), {}).get(self.my_index):
            self._log.add_vote(self.my_index, signed)
        message = Broadcast(signed)
        self._own.append(message)
        out.append(message)

    # ------------------------------------------------------------------ helpers

    def _schedule(self, kind: int, now_ms: int, out: list[Action]) -> None:
        out.append(ScheduleTimeout(now_ms + self.config.timeout_ms(kind, self.round), kind, self.height, self.round))

    def _log_for(self, height: int) -> _HeightLog | None:
        if height == self._log.height:
            return self._log
        if height == self._next.height:
            return self._next
        return None       # an old height, or too far ahead to be worth memory

    def _base_round(self, log: _HeightLog) -> int:
        return self.round if log is self._log and self.started else 0

    def _proposer_of(self, round_: int) -> int:
        idx = self._proposer_idx.get(round_)
        if idx is None:
            pk = self.app.proposer(self.height, round_)
            idx = self._index.get(pk)
            if idx is None:
                raise ConsensusError("the app named a proposer outside the validator set")
            self._proposer_idx[round_] = idx
        return idx

    def _prune_proposals(self) -> None:
        """Proposals buffered before the proposer was known: keep only the right sender's."""
        for round_, by_sender in list(self._log.proposals.items()):
            proposer = self._proposer_of(round_)
            if proposer in by_sender:
                self._log.proposals[round_] = {proposer: by_sender[proposer]}
            else:
                del self._log.proposals[round_]

    def _proposals(self, round_: int) -> list[tuple[SignedProposal, bytes]]:
        by_sender = self._log.proposals.get(round_)
        if not by_sender:
            return []
        return by_sender.get(self._proposer_of(round_), [])

    def _proposal_for(self, round_: int, value_hash: bytes) -> bytes | None:
        """The value of round_'s proposal for value_hash, if we have it and it is valid."""
        for signed, value in self._proposals(round_):
            if signed.proposal.block_hash == value_hash and self._is_valid(value, value_hash):
                return value
        return None

    def _value_bytes(self, value_hash: bytes) -> bytes | None:
        for round_ in self._log.proposals:
            value = self._proposal_for(round_, value_hash)
            if value is not None:
                return value
        return None

    def _is_valid(self, value: bytes, value_hash: bytes) -> bool:
        key = (value_hash, value)
        ok = self._validity.get(key)
        if ok is None:
            ok = bool(self.app.is_valid_value(self.height, value, value_hash))
            self._validity[key] = ok
        return ok
