"""A validator beacon and the proof sidecar of a proposal (docs/protocol.md §8).

A real BeaconNode (in process, not listening) on a real chain (tests.chainutil): the
storage peer ALICE has two open claim challenges. Its proposal for the next height comes
from another validator, in copies that travel the real receive path (decode, gossip
validation, delivery), as a relay on the way may have altered them. What the beacon
signs is read off what it publishes.

The proposal signature covers the block, and each ProofResult names its answer by digest,
but the sidecar itself is covered by nothing: any relay can strip it, add junk to it or
swap its answers. Such a copy must never make an honest validator prevote nil on a valid
block while the answers are available from another copy or its own proof pool; a block
whose verdict the named answer does not earn must be refused.
"""
from __future__ import annotations

import contextlib
import dataclasses

import pytest

from chain.codec import decode, encode
from chain.constants import KIND_PROPOSAL
from chain.keys import NODE_KEY_FILE, VRF_KEY_FILE, ensure_private_dir, write_key
from chain.genesis import save_genesis
from chain.transition import process_block, sign_vote
from chain.types import INVALID, NIL, PRECOMMIT, PREVOTE, Block, CommittedBlock, Proposal, SignedProposal, Vote
from node.beacon import BeaconNode
from node.config import GENESIS_FILE, NodeConfig
from node.gossip import Verdict
from node.messages import GossipEnvelope, ProposalMsg, VoteMsg, encode_message
from node.proofpool import to_answer
from tests.chainutil import make_key
from tests.test_proofpool import Scene, junk_answer, make_scene

RELAY = make_key("sidecar-relay").public_key       # the neighbour every copy comes from


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("beacon-sidecar-coll"))


class Harness:
    """One validator beacon at the scene's head, consensus started for the next height."""

    def __init__(self, node: BeaconNode, scene: Scene) -> None:
        self.node, self.scene = node, scene
        self.sent: list[object] = []
        publish = node.publish                     # (no neighbours: it only marks the message seen)

        def recording_publish(inner) -> None:
            self.sent.append(inner)                # what the beacon floods, in order
            publish(inner)
        node.publish = recording_publish

    @property
    def height(self) -> int:
        return self.scene.chain.height + 1

    def receive(self, inner) -> None:
        """`inner` from the relay, through the beacon's real receive path."""
        self.node._on_received(RELAY, encode_message(GossipEnvelope(inner, 3)))

    def verdict(self, inner) -> Verdict:
        return self.node.validate_gossip(inner)

    def proposals_sent(self) -> list[ProposalMsg]:
        return [m for m in self.sent if isinstance(m, ProposalMsg)]

    def votes(self, kind: int) -> list[bytes]:
        return [m.vote.vote.block_hash for m in self.sent if isinstance(m, VoteMsg) and m.vote.vote.kind == kind]

    def proposal(self, block: Block, round_: int = 0) -> SignedProposal:
        proposer = self.scene.chain.proposer(round_)
        p = Proposal(block.header.height, round_, block.hash(), -1, proposer.key.public_key)
        return SignedProposal(p, proposer.key.sign(self.scene.chain.chain_id, KIND_PROPOSAL, encode(p)))

    def copy(self, block: Block, sidecar=(), *, value: bytes | None = None) -> ProposalMsg:
        return ProposalMsg(self.proposal(block), encode(block) if value is None else value, tuple(sidecar))

    def others(self) -> list:
        """The validators other than this beacon."""
        me = self.node.key.public_key
        return [v for v in self.scene.chain.validators if v.key.public_key != me]

    def vote_from_others(self, kind: int, block_hash: bytes, count: int) -> None:
        for v in self.others()[:count]:
            vote = Vote(kind, self.height, 0, block_hash, v.key.public_key)
            self.receive(VoteMsg(sign_vote(v.key, self.scene.chain.chain_id, vote)))


@contextlib.contextmanager
def open_beacon(scene: Scene, datadir, *, proposer: bool = False, avoid=()):
    """A beacon for the scene's round-0 proposer of the next height (or for another
    validator, none of `avoid`), at the scene's head; consensus not started yet."""
    chain = scene.chain
    if proposer:
        me = chain.proposer(0)
    else:
        me = next(v for v in chain.validators if v is not chain.proposer(0) and v not in avoid)
    ensure_private_dir(datadir)
    write_key(datadir / NODE_KEY_FILE, "ed25519", me.key.seed)
    write_key(datadir / VRF_KEY_FILE, "vrf", me.vrf_key.seed)
    save_genesis(chain.genesis, datadir / GENESIS_FILE)
    node = BeaconNode(datadir, NodeConfig(listen="127.0.0.1:7199"))
    try:
        for committed in chain.blocks:
            node.apply_committed(committed)
        assert node.state.root == chain.state.root
        yield Harness(node, scene)
    finally:
        for t in node._timers:
            t.cancel()
        node.kv.close()


@pytest.fixture
async def beacon(scene, tmp_path):
    """A validator that does not propose at the next height, consensus started there.
    Nothing in the tests awaits, so no timer (the propose timeout above all) can fire:
    every vote seen answers the copies received."""
    with open_beacon(scene, tmp_path / "beacon") as h:
        h.node._start_height(h.height)
        assert h.node.consensus.started and h.node.consensus.height == h.height
        yield h


def good_block(scene: Scene):
    answers = [scene.answer(cid) for cid in scene.challenges]
    return scene.chain.build([scene.result(m) for m in answers]), answers


# ---------------------------------------------------------------------------- a valid block

async def test_a_stripped_copy_first_then_the_full_copy_gets_a_prevote(beacon: Harness, scene):
    block, answers = good_block(scene)
    beacon.receive(beacon.copy(block, ()))
    assert beacon.votes(PREVOTE) == [], "a copy without its answers cannot be judged yet: no vote"
    beacon.receive(beacon.copy(block, answers[:1]))
    assert beacon.votes(PREVOTE) == []
    beacon.receive(beacon.copy(block, answers))
    assert beacon.votes(PREVOTE) == [block.hash()]
    # The complete copy was the proposer's own (canonical) message, forwarded as received:
    # nothing to flood again.
    assert beacon.proposals_sent() == []


async def test_answers_from_several_copies_are_merged(beacon: Harness, scene):
    block, (a, b) = good_block(scene)
    beacon.receive(beacon.copy(block, [a]))
    beacon.receive(beacon.copy(block, [junk_answer(), b]))
    assert beacon.votes(PREVOTE) == [block.hash()]
    # No neighbour got a complete copy from us: the canonical one is flooded, before the vote.
    assert beacon.proposals_sent() == [beacon.copy(block, [a, b])]
    assert beacon.sent.index(beacon.copy(block, [a, b])) < next(
        i for i, m in enumerate(beacon.sent) if isinstance(m, VoteMsg))


async def test_a_stripped_copy_is_enough_when_the_pool_has_the_answers(beacon: Harness, scene):
    block, answers = good_block(scene)
    for m in answers:
        beacon.receive(m)                        # the peer's flooded answers
    assert len(beacon.node.proofs) == 2
    beacon.receive(beacon.copy(block, ()))
    assert beacon.votes(PREVOTE) == [block.hash()]
    assert beacon.proposals_sent() == [beacon.copy(block, answers)]
    # The proposer's complete copy arriving now is known (we flooded it): dropped as seen.
    from node.messages import flooded_id
    assert flooded_id(beacon.copy(block, answers)) in beacon.node.gossip.seen
    beacon.receive(beacon.copy(block, answers))
    assert beacon.proposals_sent() == [beacon.copy(block, answers)]


async def test_answers_flooded_after_a_stripped_copy_complete_it(beacon: Harness, scene):
    block, (a, b) = good_block(scene)
    beacon.receive(beacon.copy(block, [a]))
    assert beacon.votes(PREVOTE) == []
    beacon.receive(b)
    assert beacon.votes(PREVOTE) == [block.hash()]


async def test_junk_copies_neither_replace_answers_nor_reach_consensus(beacon: Harness, scene):
    block, (a, b) = good_block(scene)
    a_cid = scene.challenges[0]
    decoy = scene.answer(a_cid, leaf=scene.wrong_leaf(a_cid))        # the peer's own, other bytes
    # Junk in place of the answers (one sidecar names a challenge once): taken for the
    # block, then copies that add nothing are neither delivered nor forwarded.
    beacon.receive(beacon.copy(block, [junk_answer(a_cid), junk_answer()]))
    assert beacon.verdict(beacon.copy(block, [decoy])) is Verdict.IGNORE
    assert beacon.verdict(beacon.copy(block, ())) is Verdict.IGNORE
    # The block with its header signature or its body swapped (same block hash), or no
    # block at all: refused (the relay is to blame), never handed to consensus, whether
    # such a copy comes first or after the real bytes.
    bad_sig = dataclasses.replace(block, signature=bytes(64))
    other_body = dataclasses.replace(block, body=block.body[:1])
    for value in (encode(bad_sig), encode(other_body), b"\x90"):
        assert beacon.verdict(beacon.copy(block, [a, b], value=value)) is Verdict.REJECT
    assert beacon.votes(PREVOTE) == []
    beacon.receive(beacon.copy(block, [b, a]))
    assert beacon.votes(PREVOTE) == [block.hash()]
    # Once complete, more copies add nothing: not delivered, not forwarded.
    for sidecar in ([junk_answer(a_cid)], [decoy, b], ()):
        assert beacon.verdict(beacon.copy(block, sidecar)) is Verdict.IGNORE
    assert beacon.verdict(beacon.copy(block, [a, b], value=encode(bad_sig))) is Verdict.REJECT
    # The block is decided with the answers it names, and those are what the store keeps.
    beacon.vote_from_others(PREVOTE, block.hash(), 2)
    assert beacon.votes(PRECOMMIT) == [block.hash()]
    beacon.vote_from_others(PRECOMMIT, block.hash(), 2)
    assert beacon.node.height == beacon.height
    for m in (a, b):
        assert beacon.node.store.get_proof(m.challenge_id) == encode(to_answer(m))


# ---------------------------------------------------------------------------- an invalid block

async def test_a_verdict_its_answer_does_not_earn_is_refused(beacon: Harness, scene):
    a_cid, b_cid = scene.challenges
    good_a, good_b = scene.answer(a_cid), scene.answer(b_cid)
    # INVALID for an honest proof: the answer named by digest earns PASS. (The peer's
    # other answer is not needed: INVALID excludes the peer, closing its other challenge.)
    block = scene.chain.build([scene.result(good_a, INVALID)])
    beacon.receive(beacon.copy(block, [good_a, good_b]))
    assert beacon.votes(PREVOTE) == [NIL]


async def test_a_pass_for_a_wrong_leaf_is_refused(beacon: Harness, scene):
    a_cid = scene.challenges[0]
    wrong = scene.answer(a_cid, leaf=scene.wrong_leaf(a_cid))
    block = scene.chain.build([scene.result(wrong)])
    beacon.receive(beacon.copy(block, ()))
    assert beacon.votes(PREVOTE) == []              # not judged before the answer is here
    beacon.receive(beacon.copy(block, [wrong]))
    assert beacon.votes(PREVOTE) == [NIL]


async def test_a_block_whose_answers_never_come_is_left_to_the_propose_timeout(beacon: Harness, scene):
    block, _ = good_block(scene)
    beacon.receive(beacon.copy(block, ()))
    assert beacon.votes(PREVOTE) == []
    from chain.consensus import TIMEOUT_PROPOSE, Timeout
    beacon.node._fire_timeout(Timeout(TIMEOUT_PROPOSE, beacon.height, 0))
    assert beacon.votes(PREVOTE) == [NIL]


# ---------------------------------------------------------------------------- the proposer, the next height, bounds

async def test_the_proposer_sends_exactly_the_named_answers_in_block_order(scene, tmp_path):
    answers = [scene.answer(cid) for cid in scene.challenges]
    with open_beacon(scene, tmp_path / "proposer", proposer=True) as h:
        for m in answers[::-1] + [junk_answer()]:
            h.receive(m)
        h.node._start_height(h.height)
        proposal, = [m for m in h.sent if isinstance(m, ProposalMsg)]
        block = decode(proposal.block, Block)
        results = [s.record for s in block.body]
        assert [r.challenge_id for r in results] == [m.challenge_id for m in proposal.sidecar]
        assert set(proposal.sidecar) == set(answers)
        assert h.votes(PREVOTE) == [block.hash()]          # it checks its own block the same way
        # The periodic resend is this very message (one gossip id: receivers drop it as seen).
        resent = []
        h.node.broadcast_direct = resent.append
        h.node._resend_own()
        assert [env.inner for env in resent if isinstance(env.inner, ProposalMsg)] == [proposal]


@pytest.mark.parametrize("running", [True, False], ids=["consensus-running", "consensus-idle"])
async def test_a_next_height_proposal_is_gathered_early_and_judged_when_its_height_starts(scene, tmp_path, running):
    """Answers and copies for height h+2 arrive while the beacon is still at h: they are
    kept across the new head (here applied as sync does), and the proposal is judged when
    h+2 starts, whether consensus buffered it (it was running at h+1) or not (idle, as
    after a restart or while it lags behind a sync)."""
    chain = scene.chain
    empty = chain.build()
    state = process_block(chain.state, empty, chain.commit(empty))
    answers = [scene.answer(cid) for cid in scene.challenges]
    nxt = chain.build([scene.result(m) for m in answers], state=state)
    proposer = chain.proposer(0, state)
    p = Proposal(nxt.header.height, 0, nxt.hash(), -1, proposer.key.public_key)
    signed = SignedProposal(p, proposer.key.sign(chain.chain_id, KIND_PROPOSAL, encode(p)))
    with open_beacon(scene, tmp_path / "next", avoid=(proposer,)) as h:
        if running:
            h.node._start_height(h.height)
        h.receive(ProposalMsg(signed, encode(nxt), ()))
        assert not h.node.sidecars.get(nxt.hash()).complete
        h.receive(answers[0])
        h.receive(ProposalMsg(signed, encode(nxt), (answers[1], junk_answer())))
        assert h.node.sidecars.get(nxt.hash()).complete
        h.node.apply_committed(CommittedBlock(empty, chain.commit(empty)))     # as sync would
        assert h.node.height == nxt.header.height - 1
        assert h.node.sidecars.get(nxt.hash()).complete and h.node.sidecars.get(empty.hash()) is None
        assert h.votes(PREVOTE) == []
        h.node._start_height(nxt.header.height)
        assert h.votes(PREVOTE) == [nxt.hash()]


async def test_an_equivocating_proposer_gets_no_more_room_than_consensus_gives(beacon: Harness, scene):
    blocks = [scene.chain.build(timestamp_ms=scene.chain.next_timestamp() + i) for i in range(4)]
    verdicts = [beacon.verdict(beacon.copy(b)) for b in blocks]
    assert verdicts == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.IGNORE, Verdict.IGNORE]
    assert len(beacon.node.sidecars) == 2


async def test_copies_from_anyone_but_the_rounds_proposer_are_not_taken(beacon: Harness, scene):
    block, answers = good_block(scene)
    other = beacon.others()[-1]
    if other.key.public_key == scene.chain.proposer(0).key.public_key:
        other = beacon.others()[0]
    p = Proposal(block.header.height, 0, block.hash(), -1, other.key.public_key)
    signed = SignedProposal(p, other.key.sign(scene.chain.chain_id, KIND_PROPOSAL, encode(p)))
    assert beacon.verdict(ProposalMsg(signed, encode(block), tuple(answers))) is Verdict.IGNORE
    forged = SignedProposal(beacon.proposal(block).proposal, bytes(64))
    assert beacon.verdict(ProposalMsg(forged, encode(block), tuple(answers))) is Verdict.REJECT
    assert len(beacon.node.sidecars) == 0 and beacon.votes(PREVOTE) == []
