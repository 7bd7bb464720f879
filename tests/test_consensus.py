"""Single rules of the Tendermint core, driven by hand over a fake link.

The core under test is validator 0 of four (q = 3, f = 1) unless a test says otherwise;
the other validators' messages are signed here with their real keys.
"""
from __future__ import annotations

import random

import pytest

from chain.codec import encode
from chain.consensus import (
    STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE, TIMEOUT_PRECOMMIT, TIMEOUT_PREVOTE, TIMEOUT_PROPOSE,
    Broadcast, ConsensusConfig, ConsensusError, Decide, EvidenceFound, InvalidCommit, InvalidMessage,
    Persist, ScheduleTimeout, SignState, Tendermint, Timeout, max_faulty, quorum,
)
from chain.constants import KIND_PRECOMMIT, KIND_PREVOTE, KIND_PROPOSAL
from chain.crypto import SigningKey, is_valid_signature, sha256
from chain.types import NIL, PRECOMMIT, PREVOTE, Commit, CommitSig, Proposal, SignedProposal, SignedVote, Vote

CHAIN = b"test"
KEYS = [SigningKey(sha256(b"consensus-test-key-%d" % i)) for i in range(7)]
CONFIG = ConsensusConfig(timeout_propose_ms=1000, timeout_prevote_ms=400, timeout_precommit_ms=300,
                         timeout_delta_ms=100, max_rounds_ahead=4)


def value(name: bytes) -> tuple[bytes, bytes]:
    return name, sha256(name)


class FakeApp:
    """Proposer of (h, r) is validator (h + r) % n; values are any bytes except those marked bad."""

    def __init__(self, n: int) -> None:
        self.validators = tuple(k.public_key for k in KEYS[:n])
        self.bad: set[bytes] = set()
        self.proposed: list[tuple[int, int]] = []

    def propose_value(self, height: int, round_: int) -> tuple[bytes, bytes]:
        self.proposed.append((height, round_))
        return value(b"fresh-%d-%d" % (height, round_))

    def is_valid_value(self, height: int, v: bytes, h: bytes) -> bool:
        return sha256(v) == h and v not in self.bad

    def proposer(self, height: int, round_: int) -> bytes:
        return self.validators[(height + round_) % len(self.validators)]


def make_core(n: int = 4, me: int | None = 0, last: SignState | None = None,
              config: ConsensusConfig = CONFIG) -> tuple[Tendermint, FakeApp]:
    app = FakeApp(n)
    key = KEYS[me] if me is not None else None
    return Tendermint(CHAIN, app.validators, app, config, key, last), app


def vote(i: int, kind: int, h: int, r: int, block_hash: bytes) -> SignedVote:
    v = Vote(kind, h, r, block_hash, KEYS[i].public_key)
    return SignedVote(v, KEYS[i].sign(CHAIN, KIND_PREVOTE if kind == PREVOTE else KIND_PRECOMMIT, encode(v)))


def proposal(i: int, h: int, r: int, v: bytes, vr: int = -1) -> SignedProposal:
    p = Proposal(h, r, sha256(v), vr, KEYS[i].public_key)
    return SignedProposal(p, KEYS[i].sign(CHAIN, KIND_PROPOSAL, encode(p)))


def sent(actions: list) -> list:
    return [a.message for a in actions if isinstance(a, Broadcast)]


def sent_votes(actions: list) -> list[Vote]:
    return [m.vote for m in sent(actions) if isinstance(m, SignedVote)]


def feed_votes(core: Tendermint, voters: list[int], kind: int, h: int, r: int, block_hash: bytes,
               now: int = 0) -> list:
    out: list = []
    for i in voters:
        out += core.on_vote(vote(i, kind, h, r, block_hash), now)
    return out


def lock_on(core: Tendermint, v: bytes, h: int = 1, r: int = 0, proposer: int = 1) -> list:
    """Drive `core` to a polka and a precommit for v at (h, r)."""
    out = core.on_proposal(proposal(proposer, h, r, v), v, 0)
    out += feed_votes(core, [1, 2], PREVOTE, h, r, sha256(v))
    return out


# ---------------------------------------------------------------------------- thresholds

def test_config_from_genesis_params():
    from chain.types import Params
    cfg = ConsensusConfig.from_params(Params())
    assert cfg.timeout_ms(TIMEOUT_PROPOSE, 2) == 1500 + 2 * 500
    assert cfg.timeout_ms(TIMEOUT_PRECOMMIT, 0) == 500


@pytest.mark.parametrize("n,q,f", [(1, 1, 0), (4, 3, 1), (5, 4, 1), (6, 5, 1), (7, 5, 2), (10, 7, 3)])
def test_quorum_and_fault_bound(n, q, f):
    assert (quorum(n), max_faulty(n)) == (q, f)
    assert 2 * quorum(n) - n > max_faulty(n)        # two quorums always share an honest node
    assert n - max_faulty(n) >= quorum(n)           # the honest alone form a quorum


# ---------------------------------------------------------------------------- the happy path

def test_happy_path_decides_with_a_verifiable_commit():
    core, _ = make_core()
    out = core.start(1, 0)
    assert out == [ScheduleTimeout(1000, TIMEOUT_PROPOSE, 1, 0)]     # (1+0)%4 = 1 proposes
    v, vh = value(b"block-1")
    out = core.on_proposal(proposal(1, 1, 0, v), v, 5)
    assert sent_votes(out) == [Vote(PREVOTE, 1, 0, vh, KEYS[0].public_key)]
    out = feed_votes(core, [1, 2], PREVOTE, 1, 0, vh, 10)
    assert sent_votes(out) == [Vote(PRECOMMIT, 1, 0, vh, KEYS[0].public_key)]
    assert (core.locked_round, core.locked_hash, core.valid_round) == (0, vh, 0)
    out = feed_votes(core, [1, 2], PRECOMMIT, 1, 0, vh, 20)
    decides = [a for a in out if isinstance(a, Decide)]
    assert len(decides) == 1
    d = decides[0]
    assert (d.height, d.round, d.value, d.value_hash) == (1, 0, v, vh)
    assert [s.validator_index for s in d.commit.signatures] == [0, 1, 2]
    for s in d.commit.signatures:
        pc = Vote(PRECOMMIT, 1, 0, vh, KEYS[s.validator_index].public_key)
        assert is_valid_signature(pc.validator, s.signature, CHAIN, KIND_PRECOMMIT, encode(pc))
    assert core.height == 2 and not core.started


def test_proposer_proposes_fresh_value_then_its_valid_value():
    core, app = make_core(me=1)          # proposer of (1, 0) and again of (1, 4)
    out = core.start(1, 0)
    props = [m for m in sent(out) if isinstance(m, SignedProposal)]
    assert len(props) == 1 and props[0].proposal.valid_round == -1
    v = [a.value for a in out if isinstance(a, Broadcast)][0]
    assert sent_votes(out)[0].block_hash == sha256(v)   # it prevotes its own proposal at once
    # polka for v at round 0 makes v the valid value; round 4 (its turn again) re-proposes v
    feed_votes(core, [2, 3], PREVOTE, 1, 0, sha256(v))
    assert core.valid_round == 0
    feed_votes(core, [2, 3, 0], PRECOMMIT, 1, 0, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 100)
    for r in (1, 2, 3):
        feed_votes(core, [2, 3, 0], PRECOMMIT, 1, r, NIL)
        core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, r), 100)
    assert core.round == 4
    props = [m for m in sent(core.own_messages()) if isinstance(m, SignedProposal) and m.proposal.round == 4]
    assert props[0].proposal.block_hash == sha256(v) and props[0].proposal.valid_round == 0
    assert app.proposed == [(1, 0)]      # no fresh value was asked for at round 4


# ---------------------------------------------------------------------------- locks

def test_locked_validator_prevotes_nil_for_another_value_without_a_polka():
    core, _ = make_core()
    core.start(1, 0)
    v, w = b"v", b"w"
    lock_on(core, v)
    assert core.locked_hash == sha256(v)
    feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 0, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 0)
    assert core.round == 1                         # proposer (1+1)%4 = 2
    out = core.on_proposal(proposal(2, 1, 1, w), w, 0)
    assert sent_votes(out) == [Vote(PREVOTE, 1, 1, NIL, KEYS[0].public_key)]


def test_proposal_with_valid_round_waits_for_that_polka_then_unlocks():
    core, _ = make_core()
    core.start(1, 0)
    v, w = b"v", b"w"
    lock_on(core, v)                               # locked on v at round 0
    feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 0, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 0)
    # round 1: the others formed a polka for w that we did not take part in
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 1), 0)          # we prevote nil in round 1
    feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 1, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 1), 0)
    assert core.round == 2                         # proposer (1+2)%4 = 3
    out = core.on_proposal(proposal(3, 1, 2, w, vr=1), w, 0)
    assert sent_votes(out) == []                   # no polka at round 1 seen yet: wait
    out = feed_votes(core, [1, 2, 3], PREVOTE, 1, 1, sha256(w))
    assert sent_votes(out) == [Vote(PREVOTE, 1, 2, sha256(w), KEYS[0].public_key)]


def test_polka_after_precommit_updates_only_valid_value():
    core, _ = make_core()
    core.start(1, 0)
    v = b"v"
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 0)           # prevote nil
    feed_votes(core, [1, 2], PREVOTE, 1, 0, NIL)
    assert core.step == STEP_PRECOMMIT                            # q prevotes any -> ...
    out = core.on_proposal(proposal(1, 1, 0, v), v, 0)
    out += feed_votes(core, [3], PREVOTE, 1, 0, sha256(v))
    assert sent_votes(out) == []
    assert core.locked_round == -1 and core.valid_round == -1     # only 1 prevote for v


def test_nil_polka_precommits_nil_and_q_prevotes_start_the_prevote_timer():
    core, _ = make_core()
    core.start(1, 0)
    out = core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 50)
    assert sent_votes(out) == [Vote(PREVOTE, 1, 0, NIL, KEYS[0].public_key)]
    out = feed_votes(core, [1], PREVOTE, 1, 0, sha256(b"x"), 60)
    out += feed_votes(core, [2], PREVOTE, 1, 0, NIL, 60)
    assert ScheduleTimeout(60 + 400, TIMEOUT_PREVOTE, 1, 0) in out
    assert sent_votes(out) == []
    out = feed_votes(core, [3], PREVOTE, 1, 0, NIL, 70)
    assert sent_votes(out) == [Vote(PRECOMMIT, 1, 0, NIL, KEYS[0].public_key)]


def test_prevote_timeout_precommits_nil_and_stale_timeouts_do_nothing():
    core, _ = make_core()
    core.start(1, 0)
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 0)
    assert core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 0) == []       # already prevoted
    assert core.on_timeout(Timeout(TIMEOUT_PREVOTE, 0, 0), 0) == []       # other height
    out = core.on_timeout(Timeout(TIMEOUT_PREVOTE, 1, 0), 0)
    assert sent_votes(out) == [Vote(PRECOMMIT, 1, 0, NIL, KEYS[0].public_key)]
    assert core.step == STEP_PRECOMMIT


def test_invalid_value_gets_a_nil_prevote():
    core, app = make_core()
    core.start(1, 0)
    app.bad.add(b"bad")
    out = core.on_proposal(proposal(1, 1, 0, b"bad"), b"bad", 0)
    assert sent_votes(out) == [Vote(PREVOTE, 1, 0, NIL, KEYS[0].public_key)]
    # bytes that do not match the signed hash are invalid too
    core2, _ = make_core()
    core2.start(1, 0)
    out = core2.on_proposal(proposal(1, 1, 0, b"real"), b"fake", 0)
    assert sent_votes(out)[0].block_hash == NIL


# ---------------------------------------------------------------------------- rounds and timeouts

def test_round_skip_on_f_plus_one_higher_round_senders():
    core, _ = make_core()
    core.start(1, 0)
    out = feed_votes(core, [1], PREVOTE, 1, 3, NIL, 10)
    assert core.round == 0 and out == []           # one sender may be byzantine
    out = feed_votes(core, [1], PRECOMMIT, 1, 3, NIL, 10)
    assert core.round == 0                         # still one distinct sender
    out = feed_votes(core, [2], PRECOMMIT, 1, 2, NIL, 20)
    assert core.round == 2                         # f+1 = 2 senders at round >= 2
    assert ScheduleTimeout(20 + 1000 + 2 * 100, TIMEOUT_PROPOSE, 1, 2) in out


def test_round_skip_counts_rounds_beyond_the_kept_window():
    core, _ = make_core()
    core.start(1, 0)
    feed_votes(core, [1, 2], PREVOTE, 1, 1000, NIL)
    assert core.round == 1000


@pytest.mark.parametrize("r", [0, 1, 2])   # rounds where validator 0 does not propose
def test_timeouts_grow_linearly_with_the_round(r):
    for kind, base in ((TIMEOUT_PROPOSE, 1000), (TIMEOUT_PREVOTE, 400), (TIMEOUT_PRECOMMIT, 300)):
        assert CONFIG.timeout_ms(kind, r) == base + 100 * r
    core, _ = make_core()
    core.start(1, 0)
    feed_votes(core, [1], PREVOTE, 1, r, NIL, 0)        # for r > 0 these two also skip to round r
    feed_votes(core, [2], PREVOTE, 1, r, sha256(b"z"), 0)
    assert core.round == r
    out = core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, r), 7)     # our nil prevote makes q, no polka
    assert ScheduleTimeout(7 + 400 + 100 * r, TIMEOUT_PREVOTE, 1, r) in out
    out = feed_votes(core, [1, 2, 3], PRECOMMIT, 1, r, NIL, 9)
    assert ScheduleTimeout(9 + 300 + 100 * r, TIMEOUT_PRECOMMIT, 1, r) in out
    assert core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, r), 9 + 300 + 100 * r)
    assert core.round == r + 1


def test_decides_on_precommits_of_any_round():
    core, _ = make_core()
    core.start(1, 0)
    v = b"late"
    # we are in round 0; round 2's proposal and precommits arrive (f+1 senders -> skip too)
    core.on_proposal(proposal(3, 1, 2, v), v, 0)
    out = feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 2, sha256(v))
    assert [(d.height, d.round, d.value) for d in out if isinstance(d, Decide)] == [(1, 2, v)]


# ---------------------------------------------------------------------------- persist before speak

def test_every_broadcast_follows_the_persist_of_exactly_what_it_signs():
    core, _ = make_core(me=1)
    actions = core.start(1, 0)
    v = [a.value for a in actions if isinstance(a, Broadcast)][0]
    actions += feed_votes(core, [2, 3], PREVOTE, 1, 0, sha256(v))
    actions += feed_votes(core, [2, 3], PRECOMMIT, 1, 0, sha256(v))
    kinds = [type(a).__name__ for a in actions]
    assert "Decide" in kinds
    speaks = [i for i, a in enumerate(actions) if isinstance(a, Broadcast)]
    assert len(speaks) == 3                        # proposal, prevote, precommit
    for i in speaks:
        before = actions[i - 1]
        assert isinstance(before, Persist)
        m = actions[i].message
        if isinstance(m, SignedProposal):
            slot = (m.proposal.height, m.proposal.round, STEP_PROPOSE, m.proposal.block_hash)
        else:
            step = STEP_PREVOTE if m.vote.kind == PREVOTE else STEP_PRECOMMIT
            slot = (m.vote.height, m.vote.round, step, m.vote.block_hash)
        r = before.record
        assert (r.height, r.round, r.step, r.value_hash) == slot
    precommit_record = actions[speaks[2] - 1].record
    assert (precommit_record.locked_round, precommit_record.locked_hash) == (0, sha256(v))


# ---------------------------------------------------------------------------- evidence

def test_conflicting_votes_become_evidence_once_and_each_counts_for_its_hash():
    core, _ = make_core()
    core.start(1, 0)
    a, b = vote(2, PREVOTE, 1, 0, sha256(b"a")), vote(2, PREVOTE, 1, 0, NIL)
    c, d = vote(2, PREVOTE, 1, 0, sha256(b"c")), vote(2, PREVOTE, 1, 0, sha256(b"d"))
    assert core.on_vote(a, 0) == []
    out = core.on_vote(b, 0)
    found = [x.evidence for x in out if isinstance(x, EvidenceFound)]
    assert len(found) == 1 and {found[0].vote_a, found[0].vote_b} == {a, b}
    assert core.on_vote(c, 0) == [] and core.on_vote(b, 0) == [] and core.on_vote(d, 0) == []
    assert core.evidence == found
    # the same pair seen in the other order gives the same record (a canonical order)
    other, _ = make_core(me=3)
    other.start(1, 0)
    other.on_vote(b, 0)
    assert [x.evidence for x in other.on_vote(a, 0) if isinstance(x, EvidenceFound)] == found
    # each of an equivocator's votes counts for its own hash (up to the bound), once overall
    log = core._log
    assert [log.count(PREVOTE, 0, h) for h in (sha256(b"a"), NIL, sha256(b"c"), sha256(b"d"))] == [1, 1, 1, 0]
    assert log.total(PREVOTE, 0) == 1


def test_an_equivocators_vote_completes_a_polka_another_node_locked_on():
    """Validator 3 prevotes v to one node and nil to another; the first locks on v with
    {1, 2, 3}. The second, unlocked, must still see that polka once gossip brings it
    validator 3's v prevote, so it can follow the re-proposal of v in a later round."""
    core, _ = make_core()
    core.start(1, 0)
    v = b"v"
    core.on_vote(vote(3, PREVOTE, 1, 0, NIL), 0)
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 0)
    feed_votes(core, [1, 2], PREVOTE, 1, 0, sha256(v))
    feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 0, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 0)
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 1), 0)
    feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 1, NIL)
    core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 1), 0)
    out = core.on_proposal(proposal(3, 1, 2, v, vr=0), v, 0)
    assert sent_votes(out) == []                     # only {1, 2} prevoted v at round 0 so far
    out = core.on_vote(vote(3, PREVOTE, 1, 0, sha256(v)), 0)      # relayed by gossip
    assert Vote(PREVOTE, 1, 2, sha256(v), KEYS[0].public_key) in sent_votes(out)


# ---------------------------------------------------------------------------- admission

def test_rejects_non_validators_bad_signatures_and_wrong_proposers():
    core, _ = make_core()
    core.start(1, 0)
    outsider = SigningKey(sha256(b"outsider"))
    assert core.is_validator(KEYS[3].public_key) and not core.is_validator(outsider.public_key)
    v = Vote(PREVOTE, 1, 0, NIL, outsider.public_key)
    with pytest.raises(InvalidMessage):
        core.on_vote(SignedVote(v, outsider.sign(CHAIN, KIND_PREVOTE, encode(v))), 0)
    good = vote(1, PREVOTE, 1, 0, NIL)
    with pytest.raises(InvalidMessage):
        core.on_vote(SignedVote(good.vote, bytes(64)), 0)
    with pytest.raises(InvalidMessage):       # a prevote signature does not make a precommit
        core.on_vote(SignedVote(Vote(PRECOMMIT, 1, 0, NIL, KEYS[1].public_key), good.signature), 0)
    # validator 2 is not the proposer of (1, 0): ignored (an honest relay may forward it)
    assert core.on_proposal(proposal(2, 1, 0, b"x"), b"x", 0) == [] and not core._log.proposals
    with pytest.raises(InvalidMessage):       # valid_round must be below the round
        core.on_proposal(proposal(1, 1, 0, b"x", vr=0), b"x", 0)
    wrong_chain = SignedVote(good.vote, KEYS[1].sign(b"other", KIND_PREVOTE, encode(good.vote)))
    with pytest.raises(InvalidMessage):
        core.on_vote(wrong_chain, 0)
    assert core.on_vote(vote(1, PREVOTE, 0, 0, NIL), 0) == []    # an old height: ignored
    assert core.on_vote(vote(1, PREVOTE, 5, 0, NIL), 0) == []    # too far ahead: ignored
    assert core._log.total(PREVOTE, 0) == 0


def test_bounded_buffers_under_a_byzantine_flood():
    core, _ = make_core()
    core.start(1, 0)
    rng = random.Random(1)
    for i in range(3000):
        h = rng.choice([0, 1, 2, 3, 9])
        r = rng.choice([0, 1, 2, rng.randrange(5, 10**6)])
        kind = rng.choice([PREVOTE, PRECOMMIT])
        block_hash = rng.choice([NIL, sha256(b"%d" % i)])
        core.on_vote(vote(3, kind, h, r, block_hash), 0)
        if i % 10 == 0:
            v = b"flood-%d" % i
            core.on_proposal(proposal(3, h, r, v), v, 0)     # mostly not even its turn
    window = CONFIG.max_rounds_ahead + 1 + core.round
    for log in (core._log, core._next):
        votes = sum(len(v) for by in log.votes.values() for v in by.values())
        assert votes <= 3 * 2 * (window + 1)               # per (kind, round): at most 3 for validator 3
        assert len(log.evidence) <= 2 * (window + 1)       # one per (kind, round)
        assert sum(len(x) for by in log.proposals.values() for x in by.values()) <= 2 * (window + 1)
        assert len(log.highest_round) <= 4
    assert core.round == 0                                 # one sender cannot move our round


# ---------------------------------------------------------------------------- heights

def test_next_height_messages_are_buffered_until_start():
    core, _ = make_core()
    core.start(1, 0)
    v1, v2 = b"one", b"two"
    # height 2 proposer is (2+0)%4 = 2; its proposal and prevotes arrive early
    core.on_proposal(proposal(2, 2, 0, v2), v2, 0)
    core.on_proposal(proposal(1, 2, 0, b"junk"), b"junk", 0)      # not the proposer: pruned at start
    feed_votes(core, [1, 2], PREVOTE, 2, 0, sha256(v2))
    lock_on(core, v1)
    out = feed_votes(core, [1, 2], PRECOMMIT, 1, 0, sha256(v1))
    assert any(isinstance(a, Decide) for a in out)
    assert sent_votes(core.on_vote(vote(1, PREVOTE, 2, 0, NIL), 0)) == []    # not started: no action
    out = core.start(2, 100)
    votes = sent_votes(out)
    assert votes[:2] == [Vote(PREVOTE, 2, 0, sha256(v2), KEYS[0].public_key),
                         Vote(PRECOMMIT, 2, 0, sha256(v2), KEYS[0].public_key)]
    with pytest.raises(ConsensusError):
        core.start(1, 200)


def test_observer_follows_and_decides_without_signing():
    core, _ = make_core(me=None)
    actions = core.start(1, 0)
    v = b"seen"
    actions += core.on_proposal(proposal(1, 1, 0, v), v, 0)
    actions += feed_votes(core, [1, 2, 3], PREVOTE, 1, 0, sha256(v))
    actions += feed_votes(core, [1, 2, 3], PRECOMMIT, 1, 0, sha256(v))
    assert not any(isinstance(a, (Persist, Broadcast)) for a in actions)
    assert [a.value for a in actions if isinstance(a, Decide)] == [v]


def test_catch_up_from_a_commit():
    core, _ = make_core()
    core.start(1, 0)
    v = b"synced"
    sigs = tuple(CommitSig(i, vote(i, PRECOMMIT, 1, 4, sha256(v)).signature) for i in (1, 2, 3))
    with pytest.raises(InvalidCommit):
        core.on_commit(v, sha256(v), Commit(1, 4, sha256(v), sigs[:2]), 0)          # not a quorum
    with pytest.raises(InvalidCommit):
        core.on_commit(v, sha256(v), Commit(1, 3, sha256(v), sigs), 0)              # signed for round 4
    with pytest.raises(InvalidCommit):
        core.on_commit(v, sha256(v), Commit(1, 4, sha256(v), sigs[:2] + sigs[1:2]), 0)
    out = core.on_commit(v, sha256(v), Commit(1, 4, sha256(v), sigs), 0)
    assert [(a.height, a.round, a.value) for a in out if isinstance(a, Decide)] == [(1, 4, v)]



def test_a_height_applied_by_sync_ends_its_round():
    """Seen live: block 1 arrived by sync while round 0 of height 1 ran; its precommit
    timeout then started round 1 and asked for a proposer of a state already at 1."""
    core, app = make_core()
    core.start(1, 0)
    core.on_timeout(Timeout(TIMEOUT_PROPOSE, 1, 0), 0)
    core.on_timeout(Timeout(TIMEOUT_PREVOTE, 1, 0), 0)
    assert core.own_messages()
    core.on_applied(1)
    asked = len(app.proposed)
    assert core.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 0) == []
    assert core.on_proposal(proposal(2, 1, 1, b"late"), b"late", 0) == []
    assert core.own_messages() == [] and len(app.proposed) == asked
    out = core.start(2, 0)                      # the next height starts as usual
    assert core.height == 2 and core.started and out

def last_record(actions: list) -> SignState:
    return [a.record for a in actions if isinstance(a, Persist)][-1]


def test_restart_after_prevote_resends_the_same_prevote_and_nothing_conflicting():
    core, _ = make_core()
    core.start(1, 0)
    v, w = b"v", b"w"
    first = core.on_proposal(proposal(1, 1, 0, v), v, 0)
    # crash; come back from the persisted record
    restored, _ = make_core(last=last_record(first))
    out = restored.start(1, 10)
    assert sent(out) == sent(first)                 # the identical signed prevote, re-sent
    assert restored.round == 0 and restored.step == STEP_PREVOTE
    out = restored.on_proposal(proposal(1, 1, 0, w), w, 20)   # the proposer equivocates
    assert sent_votes(out) == []


def test_restart_keeps_the_lock():
    core, _ = make_core()
    core.start(1, 0)
    v, w = b"v", b"w"
    out = lock_on(core, v)
    restored, _ = make_core(last=last_record(out))
    restored.start(1, 0)
    assert (restored.locked_round, restored.locked_hash) == (0, sha256(v))
    feed_votes(restored, [1, 2, 3], PRECOMMIT, 1, 0, NIL)
    restored.on_timeout(Timeout(TIMEOUT_PRECOMMIT, 1, 0), 0)
    out = restored.on_proposal(proposal(2, 1, 1, w), w, 0)
    assert sent_votes(out) == [Vote(PREVOTE, 1, 1, NIL, KEYS[0].public_key)]


def test_proposer_restarted_after_proposing_does_not_propose_again():
    core, _ = make_core(me=1)
    out = core.start(1, 0)
    proposal_record = [a.record for a in out if isinstance(a, Persist)][0]
    restored, _ = make_core(me=1, last=proposal_record)
    out = restored.start(1, 5)
    assert sent(out) == [] and out == [ScheduleTimeout(5 + 1000, TIMEOUT_PROPOSE, 1, 0)]


@pytest.mark.parametrize("seed", range(40))
def test_random_crashes_never_produce_a_conflicting_signature(seed):
    """Adversarial schedules with crashes at random points: across every incarnation of
    validator 0, no two signed messages share (height, round, step) with different hashes."""
    rng = random.Random(seed)
    values = [b"a", b"b", b"c"]
    signed: dict[tuple[int, int, int], bytes] = {}
    persisted: SignState | None = None
    core, _ = make_core(last=None)
    core.start(1, 0)
    height, max_round = 1, 3

    def record(actions: list) -> None:
        nonlocal persisted, height
        for a in actions:
            if isinstance(a, Persist):
                persisted = a.record
            elif isinstance(a, Broadcast):
                m = a.message
                if isinstance(m, SignedProposal):
                    slot = (m.proposal.height, m.proposal.round, STEP_PROPOSE)
                    h = m.proposal.block_hash
                else:
                    slot = (m.vote.height, m.vote.round, STEP_PREVOTE if m.vote.kind == PREVOTE else STEP_PRECOMMIT)
                    h = m.vote.block_hash
                assert signed.setdefault(slot, h) == h, f"conflicting signature at {slot}"
            elif isinstance(a, Decide):
                height = a.height + 1

    for _ in range(150):
        if not core.started:
            record(core.start(core.height, 0))
        roll = rng.random()
        r = rng.randrange(max_round)
        if roll < 0.08:
            core, _ = make_core(last=persisted)          # crash and restart
            record(core.start(height, 0))
        elif roll < 0.3:
            v = rng.choice(values)
            proposer = (height + r) % 4
            if proposer != 0:
                vr = rng.choice([-1] + list(range(r)))
                record(core.on_proposal(proposal(proposer, height, r, v, vr), v, 0))
        elif roll < 0.85:
            i = rng.choice([1, 2, 3])
            kind = rng.choice([PREVOTE, PRECOMMIT])
            record(core.on_vote(vote(i, kind, height, r, rng.choice([NIL] + [sha256(x) for x in values])), 0))
        else:
            kind = rng.choice([TIMEOUT_PROPOSE, TIMEOUT_PREVOTE, TIMEOUT_PRECOMMIT])
            record(core.on_timeout(Timeout(kind, height, core.round), 0))
    assert signed                                    # the schedule did make it sign things
