"""Storage-proof rules in the state transition, on real collections: claims are challenged in
the next block, results verify holdings and move reputation, silence is retried then
missed, suspended peers are excluded after their grace period, signed lies exclude at once,
and every node derives the same challenges and state from the blocks alone."""
from __future__ import annotations

import dataclasses
import random

import pytest

from chain import errors
from chain.challenges import (
    HeldShard,
    PeerShards,
    compute_challenge_seed,
    get_claim_challenge,
    get_epoch_challenges,
    get_seed_heights,
)
from chain.reputation import compute_reputation
from chain.state import (
    ACTIVE,
    EXCLUDED,
    LEFT,
    SUSPENDED,
    OpenChallenge,
    Overlay,
    get_challenge,
    get_challenge_key,
    get_collection,
    get_open_challenges_for_peer,
    get_peer,
    get_peer_holdings,
    get_randomness,
    get_shard_holders,
    get_verified_holders,
    is_counting_holder,
    iter_encoded,
    iter_prefix,
    make_state,
)
from chain.transition import process_block, process_proof_result, process_proposal, select_records
from chain.types import DROP, INVALID, MISS, PASS, Params, PeerLeave, ProofResult
from storage.collection import leaf_count
from tests.chainutil import (
    TestChain,
    answer_challenge,
    holding,
    make_key,
    make_torrent,
    peer_join,
    proof_result,
    publish,
)

ALICE, BOB, CAROL = make_key("alice"), make_key("bob"), make_key("carol")
PUBLISHER = make_key("publisher")
PEERS = (ALICE, BOB, CAROL)
ALPHA = 950_000

# Epochs far apart unless a test wants them: claim challenges and retries alone.
QUIET = Params(epoch_blocks=1000, proof_deadline_blocks=3, proof_retries=2)
# One miss suspends (alpha 0.5, threshold 0.6), no retries, a short grace period.
HARSH = Params(epoch_blocks=5, proof_deadline_blocks=2, proof_retries=0, reputation_alpha_ppm=500_000,
               suspend_below_ppm=600_000, grace_period_blocks=6)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(directory, torrent, info hash): shard 0 has 7 leaves, shard 1 has 4."""
    directory = tmp_path_factory.mktemp("rules") / "c"
    rnd = random.Random(7)
    torrent, info_hash = make_torrent(directory, {"a.bin": rnd.randbytes(100_000), "b.bin": rnd.randbytes(50_000)})
    return directory, torrent, info_hash


def published(collection, params: Params, chain_id: str = "cairn-test") -> TestChain:
    """Alice, Bob and Carol joined (block 1), the collection published (block 2)."""
    c = TestChain(4, params=params, chain_id=chain_id)
    c.advance([c.sign(k, peer_join(k, port=6881 + i)) for i, k in enumerate(PEERS)])
    c.advance([c.sign(PUBLISHER, publish(PUBLISHER, collection[1]))])
    return c


def open_ids(c: TestChain, key) -> list[bytes]:
    return [cid for cid, _ in get_open_challenges_for_peer(c.state, key.public_key)]


def only_challenge(c: TestChain, key) -> tuple[bytes, OpenChallenge]:
    (found,) = get_open_challenges_for_peer(c.state, key.public_key)
    return found


def holder_of(c: TestChain, info_hash: bytes, shard: int, key):
    return next(h for h in get_shard_holders(c.state, info_hash, shard).holders if h.peer == key.public_key)


def answer(c: TestChain, collection, key, cid: bytes, **kw):
    return answer_challenge(c, key, cid, collection[0], collection[1], **kw)


def reject(c: TestChain, records, error):
    block = c.build_unchecked(records)
    with pytest.raises(error):
        process_block(c.state, block, c.commit(block))


def verified(collection, params: Params, keys=(ALICE,), shard: int = 0) -> TestChain:
    """`keys` claim `shard` at block 3 and prove it at block 5 (their claim challenges came at 4)."""
    c = published(collection, params)
    c.advance([c.sign(k, holding(k, collection[2], shard, seq=2)) for k in keys])
    c.advance()
    c.advance([answer(c, collection, k, only_challenge(c, k)[0]) for k in keys])
    return c


# ---------------------------------------------------------------------------- claims

def test_a_claim_is_challenged_in_the_next_block_from_a_seed_ending_at_the_claim(collection):
    _, torrent, info_hash = collection
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2))])
    assert open_ids(c, ALICE) == [] and len(list(iter_prefix(c.state, b"claims/"))) == 1
    c.advance()
    cid, entry = only_challenge(c, ALICE)
    window = tuple(get_randomness(c.state, h) for h in get_seed_heights(4, QUIET.randomness_mix_blocks))
    assert get_randomness(c.state, 3) in window     # the claim's own block mixes into the seed
    shard = get_collection(c.state, info_hash).shards[0]
    expected = get_claim_challenge(compute_challenge_seed(window), 4, ALICE.public_key, info_hash, 0,
                                   leaf_count(shard), QUIET.proof_deadline_blocks)
    assert get_challenge(c.state, cid) == expected
    assert (entry.issued_height, entry.deadline_height, entry.attempt) == (4, 7, 0)
    assert holder_of(c, info_hash, 0, ALICE).verified_height == 0
    assert not get_verified_holders(c.state, info_hash, 0, c.height)    # a claim alone does not count
    assert list(iter_prefix(c.state, b"claims/")) == []


def test_a_claim_dropped_before_its_challenge_is_never_challenged(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2))])
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=3, action=DROP))])
    assert open_ids(c, ALICE) == [] and list(iter_prefix(c.state, b"claims/")) == []
    assert list(iter_prefix(c.state, b"holder-peers/")) == []


def test_only_an_active_peer_claims_and_only_an_existing_unheld_shard(collection):
    info_hash = collection[2]
    c = suspended_alice(collection)
    reject(c, [c.sign(ALICE, holding(ALICE, info_hash, 1, seq=3))], errors.PeerNotActive)
    reject(c, [c.sign(BOB, holding(BOB, info_hash, 2, seq=3))], errors.UnknownShard)
    reject(c, [c.sign(ALICE, holding(ALICE, info_hash, 0, seq=3))], errors.PeerNotActive)
    c.advance([c.sign(BOB, holding(BOB, info_hash, 1, seq=3))])
    reject(c, [c.sign(BOB, holding(BOB, info_hash, 1, seq=4))], errors.BadHolding)


# ---------------------------------------------------------------------------- PASS

def test_pass_verifies_the_holding_and_closes_the_challenge(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2))])
    c.advance()
    cid, _ = only_challenge(c, ALICE)
    result = answer(c, collection, ALICE, cid)
    assert result.record.verdict == PASS       # a real proof of the challenged leaf
    c.advance([result])
    holder = holder_of(c, info_hash, 0, ALICE)
    assert holder.verified_height == 5 and holder.claimed_height == 3
    assert get_challenge(c.state, cid) is None and open_ids(c, ALICE) == []
    assert get_verified_holders(c.state, info_hash, 0, c.height) == (holder,)
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.proofs_passed, alice.proofs_missed, alice.proofs_failed) == (1, 0, 0)
    # Nothing is left due: the deadline passes without a retry or a miss.
    c.advance_to(8)
    assert open_ids(c, ALICE) == [] and get_peer(c.state, ALICE.public_key).proofs_missed == 0
    assert list(iter_prefix(c.state, b"deadline/")) == []


def test_a_holding_counts_only_within_the_audit_window(collection):
    info_hash = collection[2]
    c = verified(collection, dataclasses.replace(QUIET, audit_window_blocks=20))
    holder = holder_of(c, info_hash, 0, ALICE)
    assert is_counting_holder(c.state, holder, 25)
    assert not is_counting_holder(c.state, holder, 26)
    assert get_verified_holders(c.state, info_hash, 0, 26) == ()


def test_a_re_proof_refreshes_the_verified_height(collection):
    info_hash = collection[2]
    c = verified(collection, dataclasses.replace(QUIET, epoch_blocks=10))
    c.advance_to(10)
    cid, entry = only_challenge(c, ALICE)
    assert entry.issued_height == 10
    c.advance([answer(c, collection, ALICE, cid)])
    assert holder_of(c, info_hash, 0, ALICE).verified_height == 11
    assert get_peer(c.state, ALICE.public_key).proofs_passed == 2


# ---------------------------------------------------------------------------- deadlines

def test_silence_is_retried_on_the_same_leaf_then_missed_and_a_pass_raises_reputation_again(collection):
    info_hash = collection[2]
    c = published(collection, dataclasses.replace(QUIET, epoch_blocks=20))
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2))])
    c.advance()
    first_id, first = only_challenge(c, ALICE)
    c.advance_to(6)
    assert open_ids(c, ALICE) == [first_id]
    seen = [(first_id, first)]
    for deadline in (7, 10):                    # two retries, each at the missed deadline
        c.advance_to(deadline)
        retry_id, retry = only_challenge(c, ALICE)
        assert retry_id != seen[-1][0] and get_challenge(c.state, seen[-1][0]) is None
        assert (retry.leaf, retry.shard, retry.issued_height, retry.deadline_height) == (first.leaf, 0, deadline, deadline + 3)
        assert retry.attempt == seen[-1][1].attempt + 1
        seen.append((retry_id, retry))
    assert get_peer(c.state, ALICE.public_key).reputation_ppm == 1_000_000
    c.advance_to(13)                            # the last retry's deadline: a MISS
    alice = get_peer(c.state, ALICE.public_key)
    missed = compute_reputation(1_000_000, False, ALPHA)
    assert alice.reputation_ppm == missed and alice.proofs_missed == 1 and alice.status == ACTIVE
    assert open_ids(c, ALICE) == []
    assert [r.shard for r in get_peer_holdings(c.state, ALICE.public_key).shards] == [0]   # a MISS drops nothing
    c.advance_to(20)                            # the epoch asks again; this time Alice answers
    cid, _ = only_challenge(c, ALICE)
    c.advance([answer(c, collection, ALICE, cid)])
    assert get_peer(c.state, ALICE.public_key).reputation_ppm == compute_reputation(missed, True, ALPHA) > missed


def suspended_alice(collection) -> TestChain:
    """HARSH params: Alice proves shard 0 at 5, is challenged by the epoch at 5 and stays
    silent: a MISS at 7 takes her below the threshold (suspended at 7, grace ends at 13)."""
    c = verified(collection, HARSH, keys=(ALICE, BOB))
    assert only_challenge(c, ALICE)[1].issued_height == 5
    c.advance([answer(c, collection, BOB, only_challenge(c, BOB)[0])])
    c.advance_to(7)
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.status, alice.status_height, alice.reputation_ppm) == (SUSPENDED, 7, 500_000)
    return c


def test_a_silent_peer_is_suspended_then_excluded_and_its_holdings_stop_counting(collection):
    info_hash = collection[2]
    c = suspended_alice(collection)
    # Suspended: still a holder and still challenged, but its copy no longer counts.
    assert [h.peer for h in get_verified_holders(c.state, info_hash, 0, c.height)] == [BOB.public_key]
    assert len(get_shard_holders(c.state, info_hash, 0).holders) == 2
    c.advance_to(10)
    assert only_challenge(c, ALICE)[1].issued_height == 10       # suspended peers are challenged
    c.advance([answer(c, collection, BOB, only_challenge(c, BOB)[0])])
    c.advance_to(12)
    assert get_peer(c.state, ALICE.public_key).status == SUSPENDED
    c.advance()                                                  # 13: the grace period is over
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.status, alice.status_height, alice.proofs_missed) == (EXCLUDED, 13, 2)
    assert [h.peer for h in get_shard_holders(c.state, info_hash, 0).holders] == [BOB.public_key]
    assert get_peer_holdings(c.state, ALICE.public_key).shards == () and open_ids(c, ALICE) == []
    assert ALICE.public_key not in [p for _, v in iter_prefix(c.state, b"holder-peers/") for p in v.peers]
    assert list(iter_prefix(c.state, b"grace/")) == []
    reject(c, [c.sign(ALICE, peer_join(ALICE, seq=3))], errors.PeerNotActive)


def test_a_suspended_peer_that_answers_is_active_again_and_not_excluded_later(collection):
    info_hash = collection[2]
    c = suspended_alice(collection)
    c.advance_to(10)
    cid, _ = only_challenge(c, ALICE)
    c.advance([answer(c, collection, ALICE, cid)])
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.status, alice.status_height, alice.reputation_ppm) == (ACTIVE, 11, 750_000)
    assert ALICE.public_key in [h.peer for h in get_verified_holders(c.state, info_hash, 0, c.height)]
    c.advance_to(14)
    assert get_peer(c.state, ALICE.public_key).status == ACTIVE


# Two chains (other randomness, so other challenge ids) whose due challenges are expired
# in either order: the retry before the excluding MISS, and after it.
@pytest.mark.parametrize(("chain_id", "retry_first"), [("cairn-test-1", True), ("cairn-test-0", False)])
def test_a_miss_at_the_end_of_the_grace_period_excludes_and_cancels_retries_due_with_it(collection, chain_id, retry_first):
    # Claims five blocks apart keep the two holdings out of step: at height 18, when Alice's
    # grace (suspended at 13) runs out, a fresh challenge on one shard (to be retried) and the
    # last retry on the other (a MISS, which now excludes her) are due in the same block.
    info_hash = collection[2]
    params = Params(epoch_blocks=5, proof_deadline_blocks=3, proof_retries=2, reputation_alpha_ppm=500_000,
                    suspend_below_ppm=600_000, grace_period_blocks=5)
    c = published(collection, params, chain_id)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2))])
    c.advance_to(7)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 1, seq=3))])
    c.advance_to(17)
    assert get_peer(c.state, ALICE.public_key).status_height == 13
    due = [(e.attempt, e.deadline_height) for _, e in get_open_challenges_for_peer(c.state, ALICE.public_key)]
    assert due == ([(0, 18), (2, 18)] if retry_first else [(2, 18), (0, 18)])     # in id order, as expired
    c.advance()
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.status, alice.status_height) == (EXCLUDED, 18)
    assert open_ids(c, ALICE) == [] and list(iter_prefix(c.state, b"challenge/")) == []
    assert get_peer_holdings(c.state, ALICE.public_key).shards == ()


# ---------------------------------------------------------------------------- INVALID and MISS records

def test_an_invalid_proof_excludes_at_once_and_drops_the_holding(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2)), c.sign(ALICE, holding(ALICE, info_hash, 1, seq=3)),
               c.sign(BOB, holding(BOB, info_hash, 0, seq=2))])
    c.advance()
    on_shard_0 = next(cid for cid, e in get_open_challenges_for_peer(c.state, ALICE.public_key) if e.shard == 0)
    lie = answer(c, collection, ALICE, on_shard_0, leaf=(get_challenge(c.state, on_shard_0).leaf + 1) % 7)
    assert lie.record.verdict == INVALID        # a signed proof of the wrong leaf
    bob_before = open_ids(c, BOB)
    c.advance([lie])
    alice = get_peer(c.state, ALICE.public_key)
    assert (alice.status, alice.status_height, alice.proofs_failed) == (EXCLUDED, 5, 1)
    assert [h.peer for h in get_shard_holders(c.state, info_hash, 0).holders] == [BOB.public_key]
    assert get_shard_holders(c.state, info_hash, 1).holders == ()
    assert open_ids(c, ALICE) == [] and open_ids(c, BOB) == bob_before
    reject(c, [c.sign(ALICE, holding(ALICE, info_hash, 0, seq=4))], errors.PeerNotActive)


def test_miss_records_are_rejected(collection):
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, collection[2], 0, seq=2))])
    c.advance()
    cid, _ = only_challenge(c, ALICE)
    reject(c, [proof_result(ALICE, cid, MISS, b"")], errors.MissRecordNotAllowed)
    assert select_records(c.state, [proof_result(ALICE, cid, MISS, b"")]) == ()


def test_results_for_unknown_closed_other_peer_and_expired_challenges_are_rejected(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2)), c.sign(BOB, holding(BOB, info_hash, 0, seq=2))])
    c.advance()
    alice_id, bob_id = only_challenge(c, ALICE)[0], only_challenge(c, BOB)[0]
    reject(c, [proof_result(ALICE, b"\x07" * 32)], errors.UnknownChallenge)
    reject(c, [proof_result(ALICE, bob_id)], errors.WrongChallengePeer)
    reject(c, [answer(c, collection, ALICE, alice_id)] * 2, errors.UnknownChallenge)   # closed by the first
    c.advance([answer(c, collection, ALICE, alice_id)])
    reject(c, [proof_result(ALICE, alice_id)], errors.UnknownChallenge)
    c.advance_to(7)                          # Bob's deadline passed unanswered: closed, retried
    reject(c, [proof_result(BOB, bob_id)], errors.UnknownChallenge)
    assert only_challenge(c, BOB)[1].attempt == 1


def test_a_result_in_the_deadline_block_is_in_time_and_after_it_is_not(collection):
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, collection[2], 0, seq=2))])
    c.advance_to(6)
    cid, entry = only_challenge(c, ALICE)
    assert entry.deadline_height == c.height + 1
    c.advance([answer(c, collection, ALICE, cid)])
    assert get_peer(c.state, ALICE.public_key).proofs_passed == 1 and open_ids(c, ALICE) == []
    # The rule itself, on an entry that is still open past its deadline.
    overlay = Overlay(c.state)
    overlay.put(get_challenge_key(b"\x05" * 32), dataclasses.replace(entry, deadline_height=c.height))
    with pytest.raises(errors.ChallengeExpired):
        process_proof_result(overlay, c.height + 1, ProofResult(ALICE.public_key, b"\x05" * 32, PASS, b"\x01" * 32))


# ---------------------------------------------------------------------------- DROP and leave

def test_drop_and_leave_close_the_open_challenges(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2)), c.sign(ALICE, holding(ALICE, info_hash, 1, seq=3)),
               c.sign(BOB, holding(BOB, info_hash, 0, seq=2))])
    c.advance()
    assert sorted(e.shard for _, e in get_open_challenges_for_peer(c.state, ALICE.public_key)) == [0, 1]
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=4, action=DROP)), c.sign(BOB, PeerLeave(BOB.public_key, 3))])
    assert [e.shard for _, e in get_open_challenges_for_peer(c.state, ALICE.public_key)] == [1]
    assert open_ids(c, BOB) == [] and get_peer(c.state, BOB.public_key).status == LEFT
    assert get_shard_holders(c.state, info_hash, 0).holders == ()
    c.advance_to(7)                          # nothing closed is retried or missed
    assert [e.attempt for _, e in get_open_challenges_for_peer(c.state, ALICE.public_key)] == [1]
    assert get_peer(c.state, BOB.public_key).proofs_missed == 0


# ---------------------------------------------------------------------------- epochs

def test_epoch_challenges_cover_every_holder_of_a_challenged_shard_on_distinct_leaves(collection):
    info_hash = collection[2]
    params = dataclasses.replace(QUIET, epoch_blocks=10)
    c = verified(collection, params, keys=PEERS)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 1, seq=3))])      # 6: claimed, challenged at 7
    c.advance_to(9)
    c.advance([c.sign(BOB, holding(BOB, info_hash, 1, seq=3))])          # 10: claimed in the boundary block
    found = {k.public_key: get_open_challenges_for_peer(c.state, k.public_key) for k in PEERS}
    on_shard_0 = [e for k in PEERS for _, e in found[k.public_key] if e.shard == 0]
    assert len(on_shard_0) == 3 and all(e.issued_height == 10 for e in on_shard_0)
    assert len({e.leaf for e in on_shard_0}) == 3
    # Alice's shard 1 had its claim challenge open, so the epoch did not ask it again; that
    # challenge was due at 10 and is retried: one open challenge per holding, never two.
    alice_1 = [e for _, e in found[ALICE.public_key] if e.shard == 1]
    assert len(alice_1) == 1 and alice_1[0].issued_height == 10 and alice_1[0].attempt == 1
    # Bob's claim of this very block is not drawn: it gets its claim challenge next block.
    assert [e.shard for _, e in found[BOB.public_key]] == [0]
    c.advance()
    assert sorted((e.shard, e.issued_height) for _, e in get_open_challenges_for_peer(c.state, BOB.public_key)) == [(0, 10), (1, 11)]


def test_epoch_challenges_are_the_pure_draw_over_the_state_holdings(collection):
    info_hash = collection[2]
    c = verified(collection, dataclasses.replace(QUIET, epoch_blocks=10), keys=PEERS)
    c.advance([c.sign(CAROL, holding(CAROL, info_hash, 1, seq=3))])
    c.advance()
    c.advance([answer(c, collection, CAROL, only_challenge(c, CAROL)[0])])
    c.advance_to(9)
    before = c.state
    c.advance()
    shards = get_collection(before, info_hash).shards
    holdings = tuple(PeerShards(k.public_key, tuple(HeldShard(info_hash, r.shard, leaf_count(shards[r.shard]))
                                                    for r in get_peer_holdings(before, k.public_key).shards))
                     for k in PEERS)
    seed = compute_challenge_seed(tuple(get_randomness(c.state, h) for h in get_seed_heights(10, c.genesis.params.randomness_mix_blocks)))
    expected = get_epoch_challenges(seed, 10, holdings, c.genesis.params)
    issued = [get_challenge(c.state, cid) for k in PEERS for cid in open_ids(c, k)]
    assert sorted(expected, key=lambda x: x.challenge_id) == sorted(issued, key=lambda x: x.challenge_id)
    assert len(issued) == 4


# ---------------------------------------------------------------------------- determinism

def busy_chain(collection) -> TestChain:
    """Claims, passes, a lie, retries, misses, suspension and exclusion, over 16 blocks."""
    info_hash = collection[2]
    c = verified(collection, HARSH, keys=(ALICE, BOB))
    c.advance([c.sign(CAROL, holding(CAROL, info_hash, 0, seq=2)), c.sign(CAROL, holding(CAROL, info_hash, 1, seq=3)),
               answer(c, collection, BOB, only_challenge(c, BOB)[0])])
    c.advance()
    carol_0 = next(cid for cid, e in get_open_challenges_for_peer(c.state, CAROL.public_key) if e.shard == 0)
    c.advance([answer(c, collection, CAROL, carol_0, leaf=(get_challenge(c.state, carol_0).leaf + 1) % 7)])
    c.advance_to(16)
    assert get_peer(c.state, ALICE.public_key).status == EXCLUDED and get_peer(c.state, CAROL.public_key).status == EXCLUDED
    return c


def test_replaying_the_same_blocks_gives_the_same_state_root_at_every_height(collection):
    c = busy_chain(collection)
    other = TestChain(4, params=HARSH)
    for committed in c.blocks:
        other.state = process_block(other.state, committed.block, committed.commit)
        assert other.state.root == committed.block.header.state_root
    assert c.replay().root == c.state.root
    assert list(iter_encoded(c.replay())) == list(iter_encoded(c.state))
    # The root commits to every challenge, index and counter: rebuilt from the pairs alone, it is the same.
    assert make_state(c.genesis, c.state.head_hash, dict(iter_encoded(c.state))).root == c.state.root


def test_build_block_and_process_block_agree_on_blocks_with_claims_and_results(collection):
    info_hash = collection[2]
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, info_hash, 0, seq=2)), c.sign(BOB, holding(BOB, info_hash, 0, seq=2))])
    c.advance()
    records = [answer(c, collection, ALICE, only_challenge(c, ALICE)[0]), c.sign(CAROL, holding(CAROL, info_hash, 1, seq=2)),
               answer(c, collection, BOB, only_challenge(c, BOB)[0], leaf=(only_challenge(c, BOB)[1].leaf + 1) % 7)]
    assert select_records(c.state, records) == tuple(records)
    block = c.build(records)
    after = process_block(c.state, block, c.commit(block))
    assert after.root == block.header.state_root == process_proposal(c.state, block).root
    assert get_peer(after, BOB.public_key).status == EXCLUDED
    assert holder_of_state(after, info_hash, ALICE).verified_height == 5


def holder_of_state(state, info_hash, key):
    return next(h for h in get_shard_holders(state, info_hash, 0).holders if h.peer == key.public_key)


def test_a_result_changes_the_state_root(collection):
    c = published(collection, QUIET)
    c.advance([c.sign(ALICE, holding(ALICE, collection[2], 0, seq=2))])
    c.advance()
    with_result = c.build([answer(c, collection, ALICE, only_challenge(c, ALICE)[0])])
    assert with_result.header.state_root != c.build().header.state_root


def test_expiry_and_grace_indexes_are_cleaned_up(collection):
    c = busy_chain(collection)
    height = c.height
    for prefix in (b"deadline/", b"grace/", b"claims/"):
        heights = [int.from_bytes(k[len(prefix):], "big") for k, _ in iter_prefix(c.state, prefix)]
        assert all(h > height for h in heights) if prefix != b"claims/" else heights == []
    live = {cid for _, v in iter_prefix(c.state, b"peer-challenges/") for cid in v.ids}
    assert live == {k[len(b"challenge/"):] for k, _ in iter_prefix(c.state, b"challenge/")}
