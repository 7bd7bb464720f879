"""The honest node shell: what the beacon's asyncio shell does, over the simulated network.

It carries out the core's actions in order (persist, then broadcast; timers; decisions;
evidence) and provides the gossip the paper assumes (a message one correct node got
reaches every correct node): it relays each consensus message the first time it sees it
(a seen-cache flood, which also keeps duplicates away from the core) and re-sends its own
messages of the current height every `gossip_ms`. It catches up from a peer's commits when
it sees messages from heights it has not reached (the GET_BLOCK path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chain.consensus import (
    STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE, Broadcast, Decide, EvidenceFound,
    InvalidCommit, InvalidMessage, Persist, ScheduleTimeout, SignState, Tendermint, Timeout,
)
from chain.crypto import SigningKey
from chain.types import PREVOTE, Commit, Evidence, SignedProposal, SignedVote
from tools.sim.app import SimApp, is_valid_evidence

if TYPE_CHECKING:
    from tools.sim.chainapp import ChainApp
    from tools.sim.runner import Simulation

SYNC_BATCH = 8


class SimInvariantError(AssertionError):
    """An honest node broke a rule the simulator checks (e.g. spoke before persisting)."""


@dataclass(frozen=True, slots=True)
class SyncRequest:
    height: int


@dataclass(frozen=True, slots=True)
class SyncEntry:
    height: int
    value: bytes
    value_hash: bytes
    commit: Commit


@dataclass(frozen=True, slots=True)
class SyncResponse:
    entries: tuple[SyncEntry, ...]


@dataclass(frozen=True, slots=True)
class EvidenceGossip:
    """Evidence one node found, shared so any honest proposer can put it on chain (a
    conflicting precommit often reaches only the nodes that had not yet decided)."""
    evidence: Evidence


def message_height(message: Broadcast) -> int:
    m = message.message
    return m.proposal.height if isinstance(m, SignedProposal) else m.vote.height


def signed_slot(message: Broadcast) -> tuple[bytes, int, int, int, bytes]:
    """(signer, height, round, step, hash) of a signed consensus message."""
    m = message.message
    if isinstance(m, SignedProposal):
        p = m.proposal
        return p.proposer, p.height, p.round, STEP_PROPOSE, p.block_hash
    v = m.vote
    return v.validator, v.height, v.round, STEP_PREVOTE if v.kind == PREVOTE else STEP_PRECOMMIT, v.block_hash


class Node:
    """An honest validator (or, with key=None, an observer)."""

    honest = True

    def __init__(self, sim: "Simulation", idx: int, key: SigningKey | None,
                 last_signed: SignState | None = None, app: "SimApp | ChainApp | None" = None) -> None:
        self.sim = sim
        self.idx = idx
        self.key = key
        self.app = app if app is not None else sim.new_app(key.public_key if key else None)
        self.core = Tendermint(sim.chain_id, sim.validators, self.app, sim.config.consensus, key, last_signed)
        self.persisted: list[SignState] = [last_signed] if last_signed is not None else []
        self.decisions: dict[int, Decide] = {}
        self.alive = True
        self.invalid_messages = 0
        self._sync_asked: dict[int, int] = {}       # peer -> time of our last request
        self._seen: dict[int, set[Broadcast]] = {}  # height -> consensus messages seen

    # ----- lifecycle

    def boot(self, now_ms: int) -> None:
        self._start(self.app.height + 1, now_ms)
        self.sim.queue.at(now_ms + self.sim.config.gossip_ms, self._gossip_tick)

    def _start(self, height: int, now_ms: int) -> None:
        if self.alive and self.core.height <= height and not (self.core.height == height and self.core.started):
            self.sim.note_start(self, height, now_ms)
            self.handle(self.core.start(height, now_ms), now_ms)

    def _gossip_tick(self, now_ms: int) -> None:
        if not self.alive:
            return
        for message in self.core.own_messages():
            self.broadcast(message, now_ms)
        self.sim.queue.at(now_ms + self.sim.config.gossip_ms, self._gossip_tick)

    # ----- the core's actions

    def handle(self, actions: list, now_ms: int) -> None:
        for action in actions:
            if isinstance(action, Persist):
                self.persisted.append(action.record)
            elif isinstance(action, Broadcast):
                self._check_persisted(action)
                self.sim.note_signed(self, action)
                self._first_sight(action)
                self.broadcast(action, now_ms)
            elif isinstance(action, ScheduleTimeout):
                timeout = action.timeout
                self.sim.queue.at(action.at_ms, lambda t, to=timeout: self._on_timeout(to, t))
            elif isinstance(action, Decide):
                self._on_decide(action, now_ms)
            elif isinstance(action, EvidenceFound):
                self.app.add_evidence(action.evidence)
                self.sim.note_evidence(self, action.evidence)
                self.send_all(EvidenceGossip(action.evidence), now_ms)

    def _check_persisted(self, action: Broadcast) -> None:
        """Persist before you speak: the last durable record is exactly what is being sent."""
        signer, h, r, step, value_hash = signed_slot(action)
        last = self.persisted[-1] if self.persisted else None
        if last is None or (last.height, last.round, last.step, last.value_hash) != (h, r, step, value_hash):
            raise SimInvariantError(f"node {self.idx} broadcast {(h, r, step)} before persisting it")

    def _on_timeout(self, timeout: Timeout, now_ms: int) -> None:
        if self.alive:
            self.handle(self.core.on_timeout(timeout, now_ms), now_ms)

    def _on_decide(self, decide: Decide, now_ms: int) -> None:
        self.decisions[decide.height] = decide
        self.app.apply(decide.height, decide.value, decide.value_hash, decide.commit)
        self.sim.note_decide(self, decide, now_ms)
        next_height = decide.height + 1
        self.sim.queue.at(now_ms + self.sim.config.block_interval_ms, lambda t: self._start(next_height, t))

    # ----- the network

    def broadcast(self, message: Broadcast, now_ms: int) -> None:
        """Send one of our consensus messages to every other node (byzantine classes override)."""
        self.send_all(message, now_ms)

    def send_all(self, message: Any, now_ms: int) -> None:
        for dst in range(len(self.sim.nodes)):
            if dst != self.idx:
                self.send(dst, message, now_ms)

    def send(self, dst: int, message: Any, now_ms: int) -> None:
        if isinstance(message, Broadcast) and isinstance(message.message, SignedProposal):
            self.sim.proposed.add(message.message.proposal.block_hash)
        self.sim.network.send(self.idx, dst, message, now_ms)

    def deliver(self, src: int, message: Any, now_ms: int) -> None:
        try:
            if isinstance(message, Broadcast):
                self._deliver_consensus(src, message, now_ms)
            elif isinstance(message, SyncRequest):
                self._answer_sync(src, message, now_ms)
            elif isinstance(message, SyncResponse):
                self._apply_sync(message, now_ms)
            elif isinstance(message, EvidenceGossip):
                if is_valid_evidence(self.sim.chain_id, self.sim.validators, message.evidence):
                    self.app.add_evidence(message.evidence)
                else:
                    self.invalid_messages += 1
        except (InvalidMessage, InvalidCommit):
            self.invalid_messages += 1      # the real shell logs and closes the connection

    def _first_sight(self, message: Broadcast) -> bool:
        height = message_height(message)
        if height < self.core.height - 1:
            return False
        seen = self._seen.setdefault(height, set())
        if message in seen:
            return False
        seen.add(message)
        for old in [h for h in self._seen if h < self.core.height - 1]:
            del self._seen[old]
        return True

    def _deliver_consensus(self, src: int, message: Broadcast, now_ms: int) -> None:
        if message_height(message) > self.core.height:
            self._ask_sync(src, now_ms)
        if not self._first_sight(message):
            return
        m = message.message
        if isinstance(m, SignedVote):
            actions = self.core.on_vote(m, now_ms)
        else:
            actions = self.core.on_proposal(m, message.value, now_ms)
        if self.sim.config.relay:       # only what the core did not reject as invalid
            for dst in range(len(self.sim.nodes)):
                if dst not in (src, self.idx):
                    self.send(dst, message, now_ms)
        self.handle(actions, now_ms)

    def _ask_sync(self, src: int, now_ms: int) -> None:
        last = self._sync_asked.get(src)
        if last is not None and now_ms - last < self.sim.config.gossip_ms:
            return
        self._sync_asked[src] = now_ms
        self.send(src, SyncRequest(self.core.height), now_ms)

    def _answer_sync(self, src: int, request: SyncRequest, now_ms: int) -> None:
        entries = tuple(
            SyncEntry(h, d.value, d.value_hash, d.commit)
            for h in range(request.height, request.height + SYNC_BATCH)
            if (d := self.decisions.get(h)) is not None
        )
        if entries:
            self.send(src, SyncResponse(entries), now_ms)

    def _apply_sync(self, response: SyncResponse, now_ms: int) -> None:
        for entry in sorted(response.entries, key=lambda e: e.height):
            if entry.height != self.core.height:
                continue
            if not self.core.started:
                self._start(entry.height, now_ms)
                if self.core.height != entry.height:
                    continue        # starting decided it from buffered messages already
            self.handle(self.core.on_commit(entry.value, entry.value_hash, entry.commit, now_ms), now_ms)
