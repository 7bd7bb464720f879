"""The state transition: one acceptance path, one rejection per rule, and the state root."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import errors
from chain.state import (
    ACTIVE,
    LEFT,
    get_collection,
    get_height,
    get_last_seq,
    get_open_challenges_for_peer,
    get_peer,
    get_peer_holdings,
    get_randomness,
    get_shard_holders,
    iter_prefix,
)
from chain.state_root import EMPTY_TREE, compute_root, update_tree
from chain.transition import (
    get_proposer,
    get_quorum,
    process_block,
    process_proposal,
    select_records,
    sign_vote,
)
from chain.types import CLAIM, DROP, MISS, PASS, PREVOTE, Evidence, Params, PeerLeave, ProofResult, SignedRecord, Vote
from tests.chainutil import TestChain, holding, make_key, make_torrent, peer_join, publish

ALICE, BOB = make_key("alice"), make_key("bob")


@pytest.fixture(scope="module")
def torrent(tmp_path_factory):
    """(torrent, info hash) of a two-file collection: two shards."""
    return make_torrent(tmp_path_factory.mktemp("coll"), {"a.bin": b"a" * 40_000, "b.bin": b"b" * 20_000})


@pytest.fixture
def chain():
    return TestChain(4)


def joined_chain(torrent=None) -> TestChain:
    """Alice and Bob registered; with `torrent`, Alice has published it."""
    c = TestChain(4)
    c.advance([c.sign(ALICE, peer_join(ALICE)), c.sign(BOB, peer_join(BOB, port=6882))])
    if torrent is not None:
        c.advance([c.sign(ALICE, publish(ALICE, torrent[0], seq=2))])
    return c


def double_vote(c: TestChain, validator: int = 1, height: int = 1) -> Evidence:
    key = c.validators[validator].key
    votes = sorted((sign_vote(key, c.chain_id, Vote(PREVOTE, height, 0, h, key.public_key)) for h in (b"\x01" * 32, b"\x02" * 32)),
                   key=lambda sv: sv.vote.block_hash)
    return Evidence(votes[0], votes[1])


# ---------------------------------------------------------------------------- acceptance

def test_a_chain_of_blocks_is_accepted_and_records_take_effect(chain, torrent):
    torrent_bytes, info_hash = torrent
    chain.advance([chain.sign(ALICE, peer_join(ALICE)), chain.sign(BOB, peer_join(BOB, port=6882))])
    parent_randomness = chain.blocks[-1].block.header.randomness
    chain.advance([chain.sign(ALICE, publish(ALICE, torrent_bytes, seq=2, target=2))])
    chain.advance([chain.sign(ALICE, holding(ALICE, info_hash, 0, seq=3)),
                   chain.sign(BOB, holding(BOB, info_hash, 0, seq=2)),
                   chain.sign(BOB, holding(BOB, info_hash, 1, seq=3))])
    # Bob drops shard 0 before its claim is challenged: only two claim challenges are issued.
    chain.advance([chain.sign(BOB, holding(BOB, info_hash, 0, seq=4, action=DROP)),
                   SignedRecord(double_vote(chain), b"")])
    assert len(get_open_challenges_for_peer(chain.state, ALICE.public_key)) == 1
    assert [e.shard for _, e in get_open_challenges_for_peer(chain.state, BOB.public_key)] == [1]
    (alice_challenge, _), = get_open_challenges_for_peer(chain.state, ALICE.public_key)
    chain.advance([SignedRecord(ProofResult(ALICE.public_key, alice_challenge, PASS, b"\x08" * 32), b"")])
    assert get_peer(chain.state, ALICE.public_key).proofs_passed == 1
    chain.advance([chain.sign(ALICE, PeerLeave(ALICE.public_key, seq=4))])

    state = chain.state
    assert get_height(state) == 6 and state.head_hash == chain.blocks[-1].block.hash()
    assert state.root == chain.blocks[-1].block.header.state_root
    alice = get_peer(state, ALICE.public_key)
    assert alice.status == LEFT and alice.registered_height == 1
    bob = get_peer(state, BOB.public_key)
    assert bob.status == ACTIVE and bob.bt_address == "127.0.0.1:6882"
    assert bob.registration_randomness == get_randomness(state, 0) != parent_randomness
    collection = get_collection(state, info_hash)
    assert collection.target == 2 and len(collection.shards) == 2 and collection.published_height == 2
    # Alice's leave dropped her verified copy; Bob dropped shard 0 and keeps shard 1.
    assert get_shard_holders(state, info_hash, 0).holders == ()
    assert [h.peer for h in get_shard_holders(state, info_hash, 1).holders] == [BOB.public_key]
    assert [r.shard for r in get_peer_holdings(state, BOB.public_key).shards] == [1]
    assert get_last_seq(state, ALICE.public_key) == 4 and get_last_seq(state, BOB.public_key) == 4
    assert len(list(iter_prefix(state, b"evidence/"))) == 1
    assert get_randomness(state, 6) == chain.blocks[-1].block.header.randomness


def test_proposer_rotates_through_every_validator_within_a_height():
    c = TestChain(7)
    proposers = [get_proposer(c.state, 1, r).public_key for r in range(7)]
    assert sorted(proposers) == sorted(v.key.public_key for v in c.validators)
    assert get_proposer(c.state, 1, 7) == get_proposer(c.state, 1, 0)


def test_proposer_depends_on_parent_randomness():
    c = TestChain(7)
    firsts = set()
    for _ in range(12):
        firsts.add(get_proposer(c.state, c.height + 1, 0).public_key)
        c.advance()
    assert len(firsts) > 1


@pytest.mark.parametrize(("n", "q"), [(1, 1), (3, 3), (4, 3), (6, 5), (7, 5), (10, 7)])
def test_quorum(n, q):
    assert get_quorum(n) == q


def test_block_decided_in_a_later_round_is_accepted(chain):
    block = chain.build(round_=2)
    state = process_block(chain.state, block, chain.commit(block, round_=3))
    assert get_height(state) == 1


def test_process_proposal_gives_the_same_state_as_process_block(chain):
    block = chain.build([chain.sign(ALICE, peer_join(ALICE))])
    assert process_proposal(chain.state, block).root == process_block(chain.state, block, chain.commit(block)).root


def test_select_records_skips_invalid_and_conflicting_records(chain):
    join = chain.sign(ALICE, peer_join(ALICE))
    candidates = [join, chain.sign(BOB, holding(BOB, b"\x00" * 32, 0, seq=1)), join, chain.sign(ALICE, peer_join(ALICE, seq=2))]
    chosen = select_records(chain.state, candidates)
    assert chosen == (candidates[0], candidates[3])
    chain.advance(chosen)


# ---------------------------------------------------------------------------- an invalid block changes nothing

def test_invalid_block_leaves_state_untouched(chain):
    before = chain.state
    root, diff, head = before.root, before.diff, before.head_hash
    # The first record is valid and writes; the second (a replay) fails the block.
    join = chain.sign(ALICE, peer_join(ALICE))
    block = chain.build_unchecked([join, join])
    with pytest.raises(errors.StaleSeq):
        process_block(before, block, chain.commit(block))
    assert (before.root, before.diff, before.head_hash) == (root, diff, head)
    assert get_peer(before, ALICE.public_key) is None and get_last_seq(before, ALICE.public_key) == 0
    assert get_height(before) == 0
    chain.advance([join])
    assert get_peer(chain.state, ALICE.public_key) is not None


# ---------------------------------------------------------------------------- header rules

@pytest.mark.parametrize("change", [
    {"chain_id": "other-chain"},
    {"height": 2},
    {"parent_hash": b"\x01" * 32},
    {"timestamp_ms": 1_700_000_000_000},                # not after the parent (genesis)
    {"timestamp_ms": 1_700_000_000_000 + 60_001},       # too far ahead of the parent
])
def test_header_rules(chain, change):
    block = chain.resign(chain.build(), **change)
    with pytest.raises(errors.InvalidHeader):
        process_block(chain.state, block, chain.commit(block))


def test_wrong_proposer(chain):
    other = next(v for v in chain.validators if v is not chain.proposer(0))
    from chain.transition import build_block
    block = build_block(chain.state, other.key, other.vrf_key, 0, chain.next_timestamp(), ())
    with pytest.raises(errors.WrongProposer):
        process_block(chain.state, block, chain.commit(block))


def test_header_signature(chain):
    block = chain.build()
    forged = dataclasses.replace(block, signature=chain.validators[0].key.sign(b"other-chain", b"block", b"x"))
    with pytest.raises(errors.BadHeaderSignature):
        process_block(chain.state, forged, chain.commit(forged))


def test_randomness_not_derived_from_vrf_output(chain):
    block = chain.resign(chain.build(), randomness=b"\x05" * 32)
    with pytest.raises(errors.BadRandomness):
        process_block(chain.state, block, chain.commit(block))


def test_vrf_proof_from_the_wrong_key(chain):
    proposer = chain.proposer(0)
    from chain.transition import build_block
    block = build_block(chain.state, proposer.key, proposer.key, 0, chain.next_timestamp(), ())
    with pytest.raises(errors.BadRandomness):
        process_block(chain.state, block, chain.commit(block))


# ---------------------------------------------------------------------------- commit rules

def test_commit_below_quorum(chain):
    block = chain.build()
    with pytest.raises(errors.BadCommit):
        process_block(chain.state, block, chain.commit(block, signers=[0, 1]))


def test_commit_for_another_block(chain):
    block, other = chain.build(), chain.build(timestamp_ms=chain.next_timestamp() + 1)
    with pytest.raises(errors.BadCommit):
        process_block(chain.state, block, chain.commit(other))


def test_commit_counting_one_validator_twice(chain):
    block = chain.build()
    commit = chain.commit(block, signers=[0, 1, 2])
    doubled = dataclasses.replace(commit, signatures=(commit.signatures[0], commit.signatures[0], commit.signatures[1]))
    with pytest.raises(errors.BadCommit):
        process_block(chain.state, block, doubled)


def test_commit_with_a_signature_from_another_round(chain):
    block = chain.build()
    commit = dataclasses.replace(chain.commit(block, round_=1), round=0)
    with pytest.raises(errors.BadCommit):
        process_block(chain.state, block, commit)


# ---------------------------------------------------------------------------- body rules

def test_body_root(chain):
    block = chain.build([chain.sign(ALICE, peer_join(ALICE))])
    stripped = dataclasses.replace(block, body=())
    with pytest.raises(errors.BadBodyRoot):
        process_block(chain.state, stripped, chain.commit(stripped))


def test_too_many_records():
    c = TestChain(4, params=Params(max_records_per_block=1))
    block = c.build_unchecked([c.sign(ALICE, peer_join(ALICE)), c.sign(BOB, peer_join(BOB))])
    with pytest.raises(errors.TooManyRecords):
        process_block(c.state, block, c.commit(block))


def test_state_root(chain):
    block = chain.resign(chain.build(), state_root=b"\x09" * 32)
    with pytest.raises(errors.BadStateRoot):
        process_block(chain.state, block, chain.commit(block))


# ---------------------------------------------------------------------------- record rules

def reject(c: TestChain, records, error):
    block = c.build_unchecked(records)
    with pytest.raises(error):
        process_block(c.state, block, c.commit(block))


def test_the_first_failing_record_names_the_rule(chain):
    # process_records checks every signature before the other rules, but the first failure
    # in body order is still the one raised.
    forged = SignedRecord(peer_join(BOB, port=6882), chain.sign(ALICE, peer_join(BOB, port=6882)).signature)
    bad_join = chain.sign(ALICE, dataclasses.replace(peer_join(ALICE), bt_address="no-port"))
    reject(chain, [bad_join, forged], errors.BadPeerRecord)
    reject(chain, [forged, bad_join], errors.BadRecordSignature)
    reject(chain, [chain.sign(ALICE, peer_join(ALICE)), chain.sign(ALICE, peer_join(ALICE)), forged], errors.StaleSeq)
    reject(chain, [chain.sign(ALICE, peer_join(ALICE)), forged, chain.sign(ALICE, peer_join(ALICE))], errors.BadRecordSignature)


def test_record_signed_by_someone_else(chain):
    reject(chain, [SignedRecord(peer_join(ALICE), chain.sign(BOB, peer_join(ALICE)).signature)], errors.BadRecordSignature)


def test_record_signed_for_another_chain(chain):
    from chain.transition import sign_record
    reject(chain, [sign_record(ALICE, b"other-chain", peer_join(ALICE))], errors.BadRecordSignature)


def test_unsigned_kind_carrying_a_signature():
    c = joined_chain()
    result = ProofResult(ALICE.public_key, b"\x07" * 32, MISS, b"")
    reject(c, [SignedRecord(result, b"\x01" * 64)], errors.BadRecordSignature)


def test_stale_seq():
    c = joined_chain()
    reject(c, [c.sign(ALICE, peer_join(ALICE, seq=1))], errors.StaleSeq)


def test_a_peer_keeps_its_seq_in_its_peer_entry(torrent):
    c = joined_chain(torrent)
    assert get_peer(c.state, ALICE.public_key).seq == 2 and get_peer(c.state, BOB.public_key).seq == 1
    assert list(iter_prefix(c.state, b"seq/")) == []
    # A join and a later record of the same peer in one block: the join sets the seq, the next builds on it.
    carol = make_key("carol")
    c.advance([c.sign(carol, peer_join(carol, seq=5, port=6883)), c.sign(carol, holding(carol, torrent[1], 0, seq=6))])
    assert get_peer(c.state, carol.public_key).seq == 6 and get_last_seq(c.state, carol.public_key) == 6
    reject(c, [c.sign(carol, PeerLeave(carol.public_key, 6))], errors.StaleSeq)
    c.advance([c.sign(carol, PeerLeave(carol.public_key, 7))])
    reject(c, [c.sign(carol, peer_join(carol, seq=7, port=6883))], errors.StaleSeq)
    c.advance([c.sign(carol, peer_join(carol, seq=8, port=6883))])
    assert get_peer(c.state, carol.public_key).seq == 8 and get_peer(c.state, carol.public_key).status == ACTIVE
    assert list(iter_prefix(c.state, b"seq/")) == [] and c.replay().root == c.state.root


def test_a_publisher_that_joins_moves_its_seq_into_its_peer_entry(torrent):
    carol = make_key("carol")
    c = TestChain(4)
    c.advance([c.sign(carol, publish(carol, torrent[0], seq=3))])
    assert list(iter_prefix(c.state, b"seq/")) == [(b"seq/" + carol.public_key, 3)]
    assert get_last_seq(c.state, carol.public_key) == 3
    reject(c, [c.sign(carol, peer_join(carol, seq=3))], errors.StaleSeq)
    c.advance([c.sign(carol, peer_join(carol, seq=4))])
    assert list(iter_prefix(c.state, b"seq/")) == [] and get_peer(c.state, carol.public_key).seq == 4
    reject(c, [c.sign(carol, holding(carol, torrent[1], 0, seq=4))], errors.StaleSeq)
    assert c.replay().root == c.state.root


def test_bad_peer_join(chain):
    reject(chain, [chain.sign(ALICE, dataclasses.replace(peer_join(ALICE), bt_address="no-port"))], errors.BadPeerRecord)


def test_leave_of_unknown_peer(chain):
    reject(chain, [chain.sign(ALICE, PeerLeave(ALICE.public_key, 1))], errors.UnknownPeer)


def test_claim_by_a_peer_that_left(torrent):
    c = joined_chain(torrent)
    c.advance([c.sign(BOB, PeerLeave(BOB.public_key, 2))])
    reject(c, [c.sign(BOB, holding(BOB, torrent[1], 0, seq=3))], errors.PeerNotActive)


def test_publisher_not_allowed(torrent):
    c = TestChain(4, publishers=[ALICE.public_key])
    reject(c, [c.sign(BOB, publish(BOB, torrent[0]))], errors.PublisherNotAllowed)


@pytest.mark.parametrize("target", [0, 17])
def test_publish_target_out_of_range(chain, torrent, target):
    reject(chain, [chain.sign(ALICE, publish(ALICE, torrent[0], target=target))], errors.BadCollection)


def test_publish_of_a_broken_torrent(chain):
    reject(chain, [chain.sign(ALICE, publish(ALICE, b"d4:infod4:name1:xee"))], errors.BadCollection)


def test_publish_twice(torrent):
    c = joined_chain(torrent)
    reject(c, [c.sign(BOB, publish(BOB, torrent[0], seq=2, name="again"))], errors.DuplicateCollection)


@pytest.mark.parametrize("shard", [2, -1])
def test_claim_of_a_shard_that_does_not_exist(torrent, shard):
    c = joined_chain(torrent)
    reject(c, [c.sign(BOB, holding(BOB, torrent[1], shard, seq=2))], errors.UnknownShard)


def test_claim_in_an_unknown_collection():
    c = joined_chain()
    reject(c, [c.sign(BOB, holding(BOB, b"\x03" * 32, 0, seq=2))], errors.UnknownShard)


def test_claim_by_an_unregistered_peer(torrent):
    c = joined_chain(torrent)
    carol = make_key("carol")
    reject(c, [c.sign(carol, holding(carol, torrent[1], 0, seq=1))], errors.UnknownPeer)


def test_double_claim(torrent):
    c = joined_chain(torrent)
    c.advance([c.sign(BOB, holding(BOB, torrent[1], 0, seq=2))])
    reject(c, [c.sign(BOB, holding(BOB, torrent[1], 0, seq=3, action=CLAIM))], errors.BadHolding)


def test_drop_of_a_shard_not_held(torrent):
    c = joined_chain(torrent)
    reject(c, [c.sign(BOB, holding(BOB, torrent[1], 0, seq=2, action=DROP))], errors.BadHolding)


@pytest.mark.parametrize(("verdict", "digest"), [(9, b"\x01" * 32), (MISS, b"\x01" * 32), (PASS, b"")])
def test_malformed_proof_result(verdict, digest):
    c = joined_chain()
    reject(c, [SignedRecord(ProofResult(ALICE.public_key, b"\x07" * 32, verdict, digest), b"")], errors.BadProofResult)


def test_evidence_recorded_only_once():
    c = joined_chain()
    evidence = SignedRecord(double_vote(c), b"")
    c.advance([evidence])
    reject(c, [evidence], errors.BadEvidence)


def test_evidence_of_votes_that_do_not_conflict(chain):
    e = double_vote(chain)
    reject(chain, [SignedRecord(Evidence(e.vote_a, e.vote_a), b"")], errors.BadEvidence)


def test_evidence_with_a_forged_vote(chain):
    e = double_vote(chain)
    forged = dataclasses.replace(e.vote_b, signature=e.vote_a.signature)
    reject(chain, [SignedRecord(Evidence(e.vote_a, forged), b"")], errors.BadEvidence)


def test_evidence_against_a_non_validator(chain):
    votes = sorted((sign_vote(ALICE, chain.chain_id, Vote(PREVOTE, 1, 0, h, ALICE.public_key)) for h in (b"\x01" * 32, b"\x02" * 32)),
                   key=lambda sv: sv.vote.block_hash)
    reject(chain, [SignedRecord(Evidence(*votes), b"")], errors.BadEvidence)


# ---------------------------------------------------------------------------- state root

keys = st.binary(min_size=1, max_size=40)
leaves = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, st.one_of(st.none(), leaves)), max_size=60), st.randoms(use_true_random=False))
def test_incremental_root_equals_root_from_scratch_in_any_order(ops, rnd):
    # Apply the ops in random batches, in order; the final tree must equal one built at once.
    tree, final, i = EMPTY_TREE, {}, 0
    while i < len(ops):
        n = rnd.randint(1, 8)
        batch = dict(ops[i:i + n])
        tree = update_tree(tree, batch)
        for k, v in batch.items():
            if v is None:
                final.pop(k, None)
            else:
                final[k] = v
        i += n
    assert tree.root == compute_root(final)
    shuffled = list(final.items())
    rnd.shuffle(shuffled)
    one_by_one = EMPTY_TREE
    for k, v in shuffled:
        one_by_one = update_tree(one_by_one, {k: v})
    assert one_by_one.root == tree.root == update_tree(EMPTY_TREE, dict(shuffled)).root


def test_update_leaves_the_old_tree_intact():
    old = update_tree(EMPTY_TREE, {b"a": b"\x01" * 32})
    root = old.root
    new = update_tree(old, {b"a": None, b"b": b"\x02" * 32})
    assert old.root == root == compute_root({b"a": b"\x01" * 32}) and new.root == compute_root({b"b": b"\x02" * 32})
    assert update_tree(new, {b"b": None}).root == EMPTY_TREE.root


@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 8, 9, 33, 100, 129])
def test_body_root_is_the_zero_padded_tree(count):
    # compute_body_root hashes only nodes over records; the definition pads with zero leaves.
    from chain.constants import DOMAIN_BODY_LEAF, DOMAIN_BODY_NODE
    from chain.crypto import sha256
    from chain.transition import compute_body_root
    payloads, signatures = [b"p%d" % i for i in range(count)], [b"s%d" % i for i in range(count)]
    level = [sha256(DOMAIN_BODY_LEAF + p + s) for p, s in zip(payloads, signatures)]
    width = 1
    while width < count:
        width *= 2
    level += [bytes(32)] * (width - count)
    while len(level) > 1:
        level = [sha256(DOMAIN_BODY_NODE + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    assert compute_body_root(payloads, signatures) == sha256(DOMAIN_BODY_NODE + count.to_bytes(4, "big") + level[0])


def test_update_of_crowded_buckets_and_unchanged_leaves():
    # Thousands of keys: buckets of several keys, batches that touch one bucket many times.
    keys = [b"k%d" % i for i in range(6000)]
    final = {k: bytes([i % 251]) * 32 for i, k in enumerate(keys)}
    tree = update_tree(EMPTY_TREE, final)
    assert tree.root == compute_root(final)
    changes = {k: (None if i % 3 == 0 else b"\x07" * 32) for i, k in enumerate(keys[:2000])}
    tree = update_tree(tree, changes)
    for k, v in changes.items():
        if v is None:
            del final[k]
        else:
            final[k] = v
    assert tree.root == compute_root(final)
    # Rewriting a leaf with itself, or removing a key that is absent, changes nothing.
    assert update_tree(tree, {keys[1]: final[keys[1]], b"absent": None}) is tree


def test_state_root_changes_with_any_value():
    c1, c2 = TestChain(4), TestChain(4)
    c1.advance([c1.sign(ALICE, peer_join(ALICE, capacity=1))])
    c2.advance([c2.sign(ALICE, peer_join(ALICE, capacity=2))])
    assert c1.state.root != c2.state.root


def test_older_states_stay_intact_while_the_chain_grows(chain):
    from chain.state import iter_encoded, make_state
    chain.advance([chain.sign(ALICE, peer_join(ALICE, capacity=1))])
    old = chain.state
    snapshot = list(iter_encoded(old))
    for i in range(2, 40):  # rewrite Alice's entry again and again across layer merges
        chain.advance([chain.sign(ALICE, peer_join(ALICE, seq=i, capacity=i))])
    assert get_peer(old, ALICE.public_key).capacity == 1 and get_peer(chain.state, ALICE.public_key).capacity == 39
    assert list(iter_encoded(old)) == snapshot
    assert make_state(old.genesis, old.head_hash, dict(snapshot)).root == old.root
    assert make_state(chain.genesis, chain.state.head_hash, dict(iter_encoded(chain.state))).root == chain.state.root
