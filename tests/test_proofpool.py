"""node/proofpool.py: verdicts, the proof sidecar check, what the proof store keeps, the
proof pool, and ProposalSidecars (the answers a proposed block names, gathered from every
copy of its proposal and from the pool, bounded in memory).

The chain is real (tests.chainutil): a storage peer joins, publishes a two-shard
collection, claims both shards, and the next block issues one claim challenge per shard;
answers are real proofs built from the files and signed by the peer.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from chain.proofs import compute_proof_digest, make_proof_answer
from chain.state import get_challenge, get_open_challenges_for_peer
from chain.types import INVALID, MISS, PASS, ProofResult, SignedRecord
from node.messages import MAX_SIDECAR_PROOFS, ProofMsg
from node.proofpool import (
    INCOMPLETE, INVALID_SIDECAR, MAX_TRACKED_BLOCKS, VALID, ProofPool, ProposalSidecars, answer_digest, check_sidecar,
    compute_verdict, get_needed_answers, is_valid_sidecar, order_sidecar, sidecar_proofs, to_answer,
)
from storage.collection import CollectionMeta, parse_torrent, shard_leaf_to_file_leaf
from storage.merkle import BLOCK_SIZE
from storage.proof import build_proof, read_piece
from tests.chainutil import TestChain, holding, make_key, make_torrent, peer_join, publish

ALICE = make_key("sidecar-alice")       # the storage peer that answers
MALLORY = make_key("sidecar-mallory")   # anyone else


# ---------------------------------------------------------------------------- the scene (shared with test_beacon_sidecar)

@dataclass
class Scene:
    """A chain whose head has two open claim challenges of ALICE, one per shard."""
    chain: TestChain
    directory: Path
    torrent: bytes
    meta: CollectionMeta
    challenges: list[bytes]

    def collection_meta(self, info_hash: bytes):
        """The node interface compute_verdict needs."""
        return self.meta if info_hash == self.meta.info_hash_v2 else None

    def answer(self, challenge_id: bytes, *, leaf: int | None = None, key=ALICE,
               as_challenge: bytes | None = None) -> ProofMsg:
        """`key`'s signed answer to a challenge: a proof of `leaf` (default: the challenged
        one), signed as the answer to `as_challenge` (default: the challenge itself)."""
        challenge = get_challenge(self.chain.state, challenge_id)
        shard = self.meta.shards[challenge.shard]
        leaf = challenge.leaf if leaf is None else leaf
        file_index, file_leaf = shard_leaf_to_file_leaf(self.meta, shard, leaf)
        piece = read_piece(self.directory / self.meta.files[file_index].path,
                           file_leaf * BLOCK_SIZE // self.meta.piece_length, self.meta.piece_length)
        target = challenge if as_challenge is None else dataclasses.replace(challenge, challenge_id=as_challenge)
        answer = make_proof_answer(key, self.chain.chain_id, target, build_proof(self.meta, shard, leaf, piece))
        return ProofMsg(answer.peer, answer.challenge_id, answer.proof, answer.signature)

    def wrong_leaf(self, challenge_id: bytes) -> int:
        challenge = get_challenge(self.chain.state, challenge_id)
        return 1 if challenge.leaf == 0 else 0

    def result(self, msg: ProofMsg, verdict: int = PASS, *, challenge_id: bytes | None = None) -> SignedRecord:
        """The ProofResult a proposer writes for `msg` (by default naming msg's challenge)."""
        return SignedRecord(ProofResult(msg.peer, challenge_id or msg.challenge_id, verdict,
                                        compute_proof_digest(to_answer(msg))), b"")


def make_scene(directory: Path) -> Scene:
    rnd = random.Random(7)     # distinct leaves: a proof of one leaf never passes for another
    torrent, info_hash = make_torrent(directory, {"a.bin": rnd.randbytes(40_000), "b.bin": rnd.randbytes(50_000)})
    chain = TestChain(4)
    chain.advance([chain.sign(ALICE, peer_join(ALICE))])
    chain.advance([chain.sign(ALICE, publish(ALICE, torrent, seq=2))])
    chain.advance([chain.sign(ALICE, holding(ALICE, info_hash, 0, seq=3)),
                   chain.sign(ALICE, holding(ALICE, info_hash, 1, seq=4))])
    chain.advance()            # the claims of the block before are challenged here
    by_shard = sorted(get_open_challenges_for_peer(chain.state, ALICE.public_key), key=lambda c: c[1].shard)
    assert [c.shard for _, c in by_shard] == [0, 1]
    meta = parse_torrent(torrent, max_shard_bytes=chain.genesis.params.max_shard_bytes)
    return Scene(chain, directory, torrent, meta, [cid for cid, _ in by_shard])


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("sidecar-coll"))


def junk_answer(challenge_id: bytes = b"\x07" * 32, fill: int = 1) -> ProofMsg:
    return ProofMsg(MALLORY.public_key, challenge_id, bytes([fill]) * 100, bytes(64))


# ---------------------------------------------------------------------------- compute_verdict

def test_verdict_of_an_honest_answer_is_pass(scene):
    for cid in scene.challenges:
        assert compute_verdict(scene, scene.chain.state, scene.answer(cid), scene.chain.height + 1) == PASS


def test_verdict_of_a_wrong_leaf_is_invalid(scene):
    cid = scene.challenges[0]
    msg = scene.answer(cid, leaf=scene.wrong_leaf(cid))
    assert compute_verdict(scene, scene.chain.state, msg, scene.chain.height + 1) == INVALID


def test_verdict_after_the_deadline_is_miss(scene):
    cid = scene.challenges[0]
    deadline = get_challenge(scene.chain.state, cid).deadline_height
    assert compute_verdict(scene, scene.chain.state, scene.answer(cid), deadline + 1) == MISS


def test_answers_that_prove_nothing_have_no_verdict(scene):
    state, h = scene.chain.state, scene.chain.height + 1
    a, b = scene.challenges
    assert compute_verdict(scene, state, junk_answer(a), h) is None                       # not the peer's
    assert compute_verdict(scene, state, scene.answer(a, key=MALLORY), h) is None         # signed by another
    assert compute_verdict(scene, state, junk_answer(b"\x09" * 32), h) is None            # no such challenge
    good = scene.answer(a)
    assert compute_verdict(scene, state, dataclasses.replace(good, signature=bytes(64)), h) is None
    assert compute_verdict(scene, state, dataclasses.replace(good, challenge_id=b), h) is None   # re-labelled


# ---------------------------------------------------------------------------- check_sidecar / is_valid_sidecar

def _block(scene: Scene, records):
    return scene.chain.build(records)


def test_a_block_without_proof_results_needs_no_sidecar(scene):
    block = _block(scene, [])
    assert check_sidecar(scene, scene.chain.state, block, ()) == VALID
    assert is_valid_sidecar(scene, scene.chain.state, block, (junk_answer(),))


def test_valid_sidecar(scene):
    answers = [scene.answer(cid) for cid in scene.challenges]
    block = _block(scene, [scene.result(m) for m in answers])
    assert check_sidecar(scene, scene.chain.state, block, answers) == VALID
    assert check_sidecar(scene, scene.chain.state, block, answers[::-1]) == VALID      # order does not matter
    assert is_valid_sidecar(scene, scene.chain.state, block, tuple(answers))


def test_a_missing_answer_is_incomplete_not_invalid(scene):
    answers = [scene.answer(cid) for cid in scene.challenges]
    block = _block(scene, [scene.result(m) for m in answers])
    assert check_sidecar(scene, scene.chain.state, block, answers[:1]) == INCOMPLETE
    assert check_sidecar(scene, scene.chain.state, block, ()) == INCOMPLETE
    assert not is_valid_sidecar(scene, scene.chain.state, block, ())


def test_extra_and_junk_answers_are_ignored(scene):
    a, b = scene.challenges
    good = scene.answer(a)
    block = _block(scene, [scene.result(good)])
    extras = [junk_answer(), junk_answer(a, 2), scene.answer(b), scene.answer(a, leaf=scene.wrong_leaf(a)),
              scene.answer(a, key=MALLORY)]
    # Another answer to the same challenge neither backs nor contradicts the record: the
    # record names its answer by digest.
    assert check_sidecar(scene, scene.chain.state, block, extras) == INCOMPLETE
    assert check_sidecar(scene, scene.chain.state, block, extras + [good]) == VALID
    assert check_sidecar(scene, scene.chain.state, block, [good] + extras) == VALID


def test_a_pass_for_a_wrong_leaf_is_invalid(scene):
    a = scene.challenges[0]
    wrong = scene.answer(a, leaf=scene.wrong_leaf(a))
    block = _block(scene, [scene.result(wrong, PASS)])
    assert check_sidecar(scene, scene.chain.state, block, [wrong]) == INVALID_SIDECAR
    # ... but INVALID is the verdict it earns: the same answer backs an INVALID record.
    block = _block(scene, [scene.result(wrong, INVALID)])
    assert check_sidecar(scene, scene.chain.state, block, [wrong]) == VALID


def test_an_invalid_verdict_for_a_good_proof_is_invalid(scene):
    good = scene.answer(scene.challenges[0])
    block = _block(scene, [scene.result(good, INVALID)])
    assert check_sidecar(scene, scene.chain.state, block, [good]) == INVALID_SIDECAR


def test_wrong_challenge_answers_are_invalid(scene):
    a, b = scene.challenges
    # A record for challenge b naming (by digest) the answer to challenge a.
    answer_a = scene.answer(a)
    block = scene.chain.build_unchecked([scene.result(answer_a, challenge_id=b)])
    assert check_sidecar(scene, scene.chain.state, block, [answer_a]) == INVALID_SIDECAR
    # The proof of challenge a signed as the answer to challenge b proves the wrong leaf.
    relabelled = scene.answer(a, as_challenge=b)
    block = _block(scene, [scene.result(relabelled, PASS)])
    assert check_sidecar(scene, scene.chain.state, block, [relabelled]) == INVALID_SIDECAR
    # An answer that is not the challenged peer's proves nothing: no verdict backs a record.
    forged = scene.answer(a, key=MALLORY)
    block = scene.chain.build_unchecked([scene.result(forged, PASS)])
    assert check_sidecar(scene, scene.chain.state, block, [forged]) == INVALID_SIDECAR


def test_a_contradiction_wins_over_a_missing_answer(scene):
    a, b = scene.challenges
    good_a, good_b = scene.answer(a), scene.answer(b)
    block = _block(scene, [scene.result(good_b), scene.result(good_a, INVALID)])
    assert check_sidecar(scene, scene.chain.state, block, [good_a]) == INVALID_SIDECAR
    assert check_sidecar(scene, scene.chain.state, block, [good_b]) == INCOMPLETE


def test_more_proof_results_than_a_sidecar_carries_is_invalid(scene):
    good = scene.answer(scene.challenges[0])
    records = [scene.result(good)] * (MAX_SIDECAR_PROOFS + 1)
    block = scene.chain.build_unchecked(records)
    assert check_sidecar(scene, scene.chain.state, block, [good]) == INVALID_SIDECAR


# ---------------------------------------------------------------------------- sidecar_proofs, order_sidecar

def test_sidecar_proofs_keeps_exactly_the_named_answers(scene):
    a, b = scene.challenges
    good_a, good_b = scene.answer(a), scene.answer(b)
    block = _block(scene, [scene.result(good_a)])
    decoy = scene.answer(a, leaf=scene.wrong_leaf(a))          # same challenge, other bytes
    stored = sidecar_proofs(block, (decoy, junk_answer(a), good_b, good_a))
    assert stored == {a: encode_answer(good_a)}
    assert sidecar_proofs(block, (decoy,)) == {}
    assert sidecar_proofs(_block(scene, []), (good_a,)) == {}


def encode_answer(msg: ProofMsg) -> bytes:
    from chain.codec import encode
    return encode(to_answer(msg))


def test_order_sidecar_is_the_block_order_without_extras(scene):
    a, b = scene.challenges
    good_a, good_b = scene.answer(a), scene.answer(b)
    block = _block(scene, [scene.result(good_b), scene.result(good_a)])
    assert order_sidecar(block, [junk_answer(), good_a, good_b, good_a]) == (good_b, good_a)
    assert order_sidecar(block, [good_a]) == (good_a,)
    assert [d for d, _ in get_needed_answers(block)] == [answer_digest(good_b), answer_digest(good_a)]


# ---------------------------------------------------------------------------- ProofPool

def test_pool_select_caps_and_pairs_records_with_answers(scene):
    pool = ProofPool()
    answers = {cid: scene.answer(cid) for cid in scene.challenges}
    for m in answers.values():
        assert pool.add(m)
    assert not pool.add(answers[scene.challenges[0]])          # one answer per challenge
    assert pool.get(scene.challenges[0]) == answers[scene.challenges[0]]
    pool.add(junk_answer())                                    # proves nothing here: dropped by select
    records, sidecar = pool.select(scene, scene.chain.state)
    assert len(records) == 2 and len(pool) == 2
    assert {r.record.challenge_id: r.record.proof_digest for r in records} == {
        cid: answer_digest(m) for cid, m in answers.items()}
    assert set(sidecar) == set(answers.values())
    records, sidecar = pool.select(scene, scene.chain.state, limit=1)
    assert len(records) == len(sidecar) == 1


# ---------------------------------------------------------------------------- ProposalSidecars

def test_sidecars_gather_answers_from_any_source_by_digest(scene):
    a, b = scene.challenges
    good_a, good_b = scene.answer(a), scene.answer(b)
    block = _block(scene, [scene.result(good_a), scene.result(good_b)])
    book = ProposalSidecars()
    entry = book.track(block, b"value")
    assert not entry.complete and book.missing(block.hash()) == 2
    # Junk, another answer to the same challenge, an answer no block names: not kept.
    for m in (junk_answer(), junk_answer(a), scene.answer(a, leaf=scene.wrong_leaf(a)), scene.answer(a, key=MALLORY)):
        assert not book.offer(m)
    assert book.missing(block.hash()) == 2 and book.answer_count == 0
    assert book.offer(good_b) and not book.offer(good_b)
    assert not entry.complete
    assert book.offer(good_a) and entry.complete
    assert book.sidecar(block.hash()) == (good_a, good_b)
    # Once complete, nothing can replace an answer: a digest names one answer.
    assert not book.offer(junk_answer(a))
    assert book.sidecar(block.hash()) == (good_a, good_b)


def test_sidecars_share_answers_between_blocks_and_forget_them_with_the_last(scene):
    a = scene.challenges[0]
    good = scene.answer(a)
    b1 = _block(scene, [scene.result(good)])
    b2 = scene.chain.build([scene.result(good)], round_=1)
    book = ProposalSidecars()
    book.track(b1, b"1")
    book.track(b2, b"2")
    assert book.offer(good)
    assert book.get(b1.hash()).complete and book.get(b2.hash()).complete and book.answer_count == 1
    book.prune(b1.header.height)
    assert book.get(b1.hash()) is None and book.answer_count == 0 and len(book) == 0


def test_sidecars_are_bounded_and_keep_pinned_blocks(scene):
    good = scene.answer(scene.challenges[0])
    book = ProposalSidecars(max_blocks=3)
    blocks = [scene.chain.build([scene.result(good)], timestamp_ms=scene.chain.next_timestamp() + i) for i in range(6)]
    book.track(blocks[0], b"0")
    for blk in blocks[1:]:
        book.track(blk, b"x", pinned=(blocks[0].hash(),))
    assert len(book) == 3
    assert book.get(blocks[0].hash()) is not None                     # pinned: the locked / valid value
    assert [book.get(b.hash()) is not None for b in blocks[1:]] == [False, False, False, True, True]
    assert book.offer(good) and book.answer_count == 1
    assert MAX_TRACKED_BLOCKS >= 16


def test_sidecars_hold_each_signed_proposal_once_and_release_it_when_complete(scene):
    from chain.constants import KIND_PROPOSAL
    from chain.codec import encode
    from chain.types import Proposal, SignedProposal

    good = scene.answer(scene.challenges[0])
    block = _block(scene, [scene.result(good)])
    proposer = scene.chain.proposer(0)
    p = Proposal(block.header.height, 0, block.hash(), -1, proposer.key.public_key)
    signed = SignedProposal(p, proposer.key.sign(scene.chain.chain_id, KIND_PROPOSAL, encode(p)))
    book = ProposalSidecars()
    book.track(block, b"value")
    assert book.hold(block.hash(), signed) and not book.hold(block.hash(), signed)
    assert book.take_ready() == []                                   # still waiting for the answer
    book.offer(good)
    assert book.take_ready() == [(signed, b"value")]
    assert book.take_ready() == []                                   # released once
    assert not book.hold(block.hash(), signed)                       # known: not held again
    assert book.ready_for(block.header.height) == [(signed, b"value")]
    assert book.ready_for(block.header.height + 1) == []


def test_a_block_re_proposed_round_after_round_is_never_refused(scene):
    """A locked block is re-proposed in every later round: each signed proposal of it must
    reach consensus, however many rounds it takes; what is remembered stays bounded."""
    from chain.types import Proposal, SignedProposal
    from node.proofpool import MAX_HELD_PER_BLOCK, MAX_RELEASED_PER_BLOCK

    good = scene.answer(scene.challenges[0])
    block = _block(scene, [scene.result(good)])
    pk = scene.chain.proposer(0).key.public_key

    def signed(round_: int) -> SignedProposal:        # (ProposalSidecars trusts its caller's checks)
        return SignedProposal(Proposal(block.header.height, round_, block.hash(), round_ - 1, pk), bytes(64))

    book = ProposalSidecars()
    book.track(block, b"value")
    # Incomplete: a bounded number wait.
    assert all(book.hold(block.hash(), signed(r)) for r in range(1, MAX_HELD_PER_BLOCK + 1))
    assert not book.hold(block.hash(), signed(MAX_HELD_PER_BLOCK + 1))
    book.offer(good)
    assert len(book.take_ready()) == MAX_HELD_PER_BLOCK
    # Complete: every new round's proposal is taken and released, the oldest forgotten.
    for r in range(MAX_HELD_PER_BLOCK + 1, 200):
        assert book.hold(block.hash(), signed(r))
        assert book.take_ready() == [(signed(r), b"value")]
    released = book.ready_for(block.header.height)
    assert len(released) == MAX_RELEASED_PER_BLOCK
    assert sorted(s.proposal.round for s, _ in released) == list(range(200 - MAX_RELEASED_PER_BLOCK, 200))


def test_a_block_that_is_invalid_as_it_is_gathers_nothing(scene):
    """Two results for one challenge (each naming another answer of the peer's), or more
    results than a sidecar carries: no answer is worth keeping, the block is judged at once."""
    a = scene.challenges[0]
    good, other = scene.answer(a), scene.answer(a, leaf=scene.wrong_leaf(a))
    book = ProposalSidecars()
    twice = scene.chain.build_unchecked([scene.result(good), scene.result(other, INVALID)])
    too_many = scene.chain.build_unchecked([scene.result(good)] * (MAX_SIDECAR_PROOFS + 1))
    for block in (twice, too_many):
        assert book.track(block, b"v").complete
    assert not book.offer(good) and not book.offer(other) and book.answer_count == 0
