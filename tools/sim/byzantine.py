"""Misbehaving validators. Each is its own class around the unchanged honest core: the
misbehaviour lives in what the shell sends, never in flags inside chain/consensus.py.

They sign with their real keys (a byzantine validator owns its key), so every lie they
tell is attributable, and double votes become evidence.
"""
from __future__ import annotations

import random
from typing import Any

from chain.codec import encode
from chain.constants import KIND_PRECOMMIT, KIND_PREVOTE, KIND_PROPOSAL
from chain.consensus import Broadcast, max_faulty
from chain.crypto import sha256
from chain.types import NIL, PRECOMMIT, PREVOTE, Proposal, SignedProposal, SignedVote, Vote
from tools.sim.nodes import Node, SyncRequest


class Withholding(Node):
    """Follows the protocol internally but never sends anything (a crashed or censoring node)."""

    honest = False

    def send(self, dst: int, message: Any, now_ms: int) -> None:
        return


class ByzantineBase(Node):
    honest = False

    def halves(self) -> tuple[list[int], list[int]]:
        """Other nodes split in two fixed groups, the same at every round."""
        others = [i for i in range(len(self.sim.nodes)) if i != self.idx]
        return others[: len(others) // 2], others[len(others) // 2:]


class EquivocatingProposer(ByzantineBase):
    """As proposer, sends one valid proposal to half the nodes and a different valid one
    to the other half (the same split on every retransmission)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._twins: dict[tuple[int, int], Broadcast] = {}

    def broadcast(self, message: Broadcast, now_ms: int) -> None:
        m = message.message
        if not isinstance(m, SignedProposal):
            self.send_all(message, now_ms)
            return
        twin = self._twin(m.proposal)
        first, second = self.halves()
        for dst in first:
            self.send(dst, message, now_ms)
        for dst in second:
            self.send(dst, twin, now_ms)

    def _twin(self, p: Proposal) -> Broadcast:
        key = (p.height, p.round)
        if key not in self._twins:
            value, value_hash = self.app.build_value(p.height, p.round, nonce=1 + p.round)
            twin = Proposal(p.height, p.round, value_hash, -1, p.proposer)
            signed = SignedProposal(twin, self.key.sign(self.sim.chain_id, KIND_PROPOSAL, encode(twin)))
            self._twins[key] = Broadcast(signed, value)
        return self._twins[key]


class DoubleVoter(ByzantineBase):
    """Signs two different votes for every vote it casts (value vs nil, or nil vs a forged
    hash) and sends them in opposite orders to the two halves, so the halves count
    different votes first and every node ends up holding both."""

    def broadcast(self, message: Broadcast, now_ms: int) -> None:
        m = message.message
        if not isinstance(m, SignedVote):
            self.send_all(message, now_ms)
            return
        v = m.vote
        other_hash = NIL if v.block_hash != NIL else sha256(b"double-vote" + encode(v))
        other = Vote(v.kind, v.height, v.round, other_hash, v.validator)
        domain = KIND_PREVOTE if v.kind == PREVOTE else KIND_PRECOMMIT
        twin = Broadcast(SignedVote(other, self.key.sign(self.sim.chain_id, domain, encode(other))))
        first, second = self.halves()
        for dst in first:
            self.send(dst, message, now_ms)
            self.send(dst, twin, now_ms)
        for dst in second:
            self.send(dst, twin, now_ms)
            self.send(dst, message, now_ms)


class StaleReplayer(ByzantineBase):
    """Votes honestly, but keeps every consensus message it receives and, on each gossip
    tick, replays a seeded sample of them (old rounds and old heights) to everyone."""

    REPLAY_PER_TICK = 24

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heard: list[Broadcast] = []

    def deliver(self, src: int, message: Any, now_ms: int) -> None:
        if isinstance(message, Broadcast) and len(self._heard) < 5000:
            self._heard.append(message)
        super().deliver(src, message, now_ms)

    def _gossip_tick(self, now_ms: int) -> None:
        if self.alive and self._heard:
            rng = self.sim.rng
            for _ in range(self.REPLAY_PER_TICK):
                self.send_all(self._heard[rng.randrange(len(self._heard))], now_ms)
        super()._gossip_tick(now_ms)

    def _answer_sync(self, src: int, request: SyncRequest, now_ms: int) -> None:
        return          # and it never helps anyone catch up


class LockBreaker(EquivocatingProposer):
    """Tries to make honest validators that precommitted a value change their minds. In
    round 0 it precommits nil (so the others can move on without deciding) and at once
    sends its round-1 attack: as proposer of round 1 a fresh value w (valid_round -1, not
    the valid value it knows), with its prevote and precommit for w. Later messages of its
    core in rounds >= 1 are turned into votes for w too. Only the others' locks stop it."""

    def broadcast(self, message: Broadcast, now_ms: int) -> None:
        m = message.message
        if isinstance(m, SignedProposal) and m.proposal.round >= 1:
            self.send_all(self._twin(m.proposal), now_ms)
            return
        if isinstance(m, SignedVote):
            v = m.vote
            if v.round == 0 and v.kind == PRECOMMIT:
                self.send_all(self._signed_vote(v, NIL), now_ms)
                self._attack(v.height, now_ms)
                return
            if v.round >= 1 and (v.height, v.round) in self._twins:
                message = self._signed_vote(v, self._twins[(v.height, v.round)].message.proposal.block_hash)
        self.send_all(message, now_ms)

    def _attack(self, height: int, now_ms: int) -> None:
        if self.app.proposer(height, 1) != self.key.public_key:
            return
        pk = self.key.public_key
        twin = self._twin(Proposal(height, 1, bytes(32), -1, pk))
        self.send_all(twin, now_ms)
        w = twin.message.proposal.block_hash
        for kind in (PREVOTE, PRECOMMIT):
            self.send_all(self._signed_vote(Vote(kind, height, 1, w, pk), w), now_ms)

    def _signed_vote(self, v: Vote, block_hash: bytes) -> Broadcast:
        lie = Vote(v.kind, v.height, v.round, block_hash, v.validator)
        domain = KIND_PREVOTE if v.kind == PREVOTE else KIND_PRECOMMIT
        return Broadcast(SignedVote(lie, self.key.sign(self.sim.chain_id, domain, encode(lie))))


def byzantine_slots(n: int, seed: int, behaviours: list[type]) -> tuple[tuple[int, type], ...]:
    """f byzantine validators at seeded positions, cycling through the given behaviours."""
    slots = random.Random(seed * 7919 + n).sample(range(n), max_faulty(n))
    return tuple((i, behaviours[k % len(behaviours)]) for k, i in enumerate(slots))
