"""Challenge derivation: unpredictable seed, unsteerable draws, every holder of a challenged
shard on its own leaf, every held shard swept within the budget, retries on the same leaf."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.challenges import (
    Challenge,
    HeldShard,
    PeerShards,
    compute_challenge_id,
    compute_challenge_seed,
    get_answer_blocks,
    get_claim_challenge,
    get_day_blocks,
    get_drawn_shards,
    get_epoch_challenges,
    get_holder_leaves,
    get_max_proof_gap_blocks,
    get_retry_challenge,
    get_seed_heights,
    get_sweep_epochs,
    has_retries_left,
    is_epoch_boundary,
    is_past_deadline,
)
from chain.constants import DAY_MS
from chain.crypto import sha256
from chain.errors import ChallengeError
from chain.types import Params

PARAMS = Params()


def key(i: int) -> bytes:
    return sha256(b"peer" + bytes([i]))


def coll(i: int) -> bytes:
    return sha256(b"collection" + bytes([i]))


def rnd(i: int) -> bytes:
    return sha256(b"randomness" + i.to_bytes(8, "big"))


def seed_of(i: int) -> bytes:
    return compute_challenge_seed((rnd(2 * i), rnd(2 * i + 1)))


def held(c: int, s: int, leaves: int = 64) -> HeldShard:
    return HeldShard(coll(c), s, leaves)


def replicated(peers: int, shards: int, r: int, leaves: int = 64) -> tuple[PeerShards, ...]:
    """`shards` shards, each on r consecutive peers of `peers` (round robin)."""
    by_peer: dict[int, list[HeldShard]] = {p: [] for p in range(peers)}
    for s in range(shards):
        for j in range(r):
            by_peer[(s + j) % peers].append(held(s % 3, s, leaves))
    return tuple(PeerShards(key(p), tuple(by_peer[p])) for p in range(peers))


# ---------------------------------------------------------------------------- seed and epochs

def test_seed_mixes_every_block_of_the_window_in_order() -> None:
    window = (rnd(1), rnd(2), rnd(3))
    seed = compute_challenge_seed(window)
    assert seed == compute_challenge_seed(window) and len(seed) == 32
    assert compute_challenge_seed((rnd(1), rnd(2), rnd(4))) != seed
    assert compute_challenge_seed((rnd(9), rnd(2), rnd(3))) != seed
    assert compute_challenge_seed((rnd(3), rnd(2), rnd(1))) != seed
    assert compute_challenge_seed(window[1:]) != seed
    assert seed != sha256(b"".join(window))  # domain-separated


def test_seed_refuses_an_empty_or_malformed_window() -> None:
    with pytest.raises(ChallengeError):
        compute_challenge_seed(())
    with pytest.raises(ChallengeError):
        compute_challenge_seed((rnd(1), b"\x00" * 31))


def test_seed_heights_are_the_last_finalized_blocks_before_the_height() -> None:
    assert list(get_seed_heights(100, 3)) == [97, 98, 99]
    assert list(get_seed_heights(2, 3)) == [0, 1]      # clamped at genesis
    assert list(get_seed_heights(1, 1)) == [0]


def test_epoch_boundaries() -> None:
    assert [h for h in range(0, 35) if is_epoch_boundary(h, 10)] == [10, 20, 30]


# ---------------------------------------------------------------------------- budget

def test_default_budget_proves_every_shard_within_a_day_and_the_audit_window() -> None:
    assert get_answer_blocks(PARAMS) == 15
    assert get_sweep_epochs(PARAMS) == 98
    gap = get_max_proof_gap_blocks(PARAMS)
    assert gap == 995
    assert gap <= PARAMS.audit_window_blocks
    assert gap * PARAMS.block_interval_ms <= DAY_MS
    for interval_ms in (1000, 2000, 3000):        # the design's 1-3 s blocks
        assert get_max_proof_gap_blocks(replace(PARAMS, block_interval_ms=interval_ms)) * interval_ms <= DAY_MS


def test_budget_is_capped_by_a_day_when_the_audit_window_is_longer() -> None:
    params = replace(PARAMS, audit_window_blocks=10**9, block_interval_ms=2000)
    assert get_day_blocks(params) == 43_200
    assert get_sweep_epochs(params) == (43_200 - 15) // 10
    assert get_max_proof_gap_blocks(params) <= 43_200


def _challenged_pairs(seed: bytes, height: int, holdings: tuple[PeerShards, ...], params: Params) -> set[tuple[bytes, bytes, int]]:
    return {(c.peer, c.collection, c.shard) for c in get_epoch_challenges(seed, height, holdings, params)}


def test_every_held_shard_is_challenged_for_every_holder_within_a_day_with_defaults() -> None:
    # k = 1 and 300 shards per peer: the draws alone would leave many shards unproven.
    params = replace(PARAMS, challenges_per_epoch=1)
    holdings = replicated(peers=4, shards=400, r=3)
    wanted = {(p.peer, h.collection, h.shard) for p in holdings for h in p.shards}
    seen: set[tuple[bytes, bytes, int]] = set()
    sweep = get_sweep_epochs(params)
    start = 7 * params.epoch_blocks             # any run of P consecutive epochs
    for e in range(sweep):
        height = start + e * params.epoch_blocks
        seen |= _challenged_pairs(seed_of(e), height, holdings, params)
    assert seen == wanted
    assert sweep * params.epoch_blocks * params.block_interval_ms < DAY_MS


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 40), st.integers(1, 3), st.integers(0, 3),
    st.integers(0, 10**6), st.integers(30, 200),
)
def test_any_sweep_period_covers_every_holding(peers: int, shards: int, r: int, k: int, start: int, window: int) -> None:
    params = replace(PARAMS, challenges_per_epoch=k, audit_window_blocks=window)
    holdings = replicated(peers, shards, min(r, peers))
    wanted = {(p.peer, h.collection, h.shard) for p in holdings for h in p.shards}
    seen: set[tuple[bytes, bytes, int]] = set()
    for e in range(get_sweep_epochs(params)):
        seen |= _challenged_pairs(seed_of(start + e), (start + e + 1) * params.epoch_blocks, holdings, params)
    assert seen == wanted


# ---------------------------------------------------------------------------- epoch draws

def test_every_peer_with_a_shard_is_challenged_every_epoch() -> None:
    """A peer that lost its whole replica misses a challenge of the very next epoch."""
    holdings = replicated(peers=7, shards=50, r=3) + (PeerShards(key(99), (held(0, 500),)),)
    for e in range(30):
        challenged = Counter(c.peer for c in get_epoch_challenges(seed_of(e), 10 * (e + 1), holdings, PARAMS))
        for p in holdings:
            assert challenged[p.peer] >= min(PARAMS.challenges_per_epoch, len(p.shards))


def test_a_peer_draws_k_distinct_shards_of_its_own() -> None:
    holdings = replicated(peers=5, shards=40, r=2)
    for e in range(20):
        for p in holdings:
            drawn = get_drawn_shards(seed_of(e), p, 3)
            assert len(set(drawn)) == 3
            assert set(drawn) <= {(h.collection, h.shard) for h in p.shards}
        assert get_drawn_shards(seed_of(e), PeerShards(key(1), (held(0, 1),)), 3) == ((coll(0), 1),)


def test_the_draw_is_uniform_over_the_canonical_holdings() -> None:
    peer = PeerShards(key(1), tuple(held(0, s) for s in range(10)))
    counts = Counter(key for e in range(3000) for key in get_drawn_shards(seed_of(e), peer, 2))
    assert len(counts) == 10
    # 3000 epochs x 2 draws / 10 shards = 600 expected each; 5 sigma is about 110.
    assert all(480 < n < 720 for n in counts.values()), counts


def test_a_peer_cannot_steer_its_draw_by_listing_order() -> None:
    rng = random.Random(5)
    holdings = replicated(peers=6, shards=60, r=3)
    expected = get_epoch_challenges(seed_of(1), 40, holdings, PARAMS)
    for _ in range(5):
        shuffled = [PeerShards(p.peer, tuple(rng.sample(p.shards, len(p.shards)))) for p in holdings]
        rng.shuffle(shuffled)
        assert get_epoch_challenges(seed_of(1), 40, tuple(shuffled), PARAMS) == expected


def test_a_peers_own_draw_ignores_other_peers() -> None:
    mine = PeerShards(key(50), tuple(held(1, s) for s in range(20)))
    alone = get_drawn_shards(seed_of(3), mine, 2)
    assert alone == get_drawn_shards(seed_of(3), mine, 2)
    assert {(c.collection, c.shard) for c in get_epoch_challenges(seed_of(3), 30, (mine,), PARAMS)} >= set(alone)
    with_others = get_epoch_challenges(seed_of(3), 30, (mine,) + replicated(4, 30, 2), PARAMS)
    assert {(c.collection, c.shard) for c in with_others if c.peer == key(50)} >= set(alone)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8), st.integers(1, 30), st.integers(1, 8), st.integers(1, 5),
    st.integers(1, 300), st.integers(0, 10**6),
)
def test_all_holders_of_a_challenged_shard_are_challenged_on_distinct_leaves(
    peers: int, shards: int, r: int, k: int, leaves: int, e: int
) -> None:
    holdings = replicated(peers, shards, min(r, peers), leaves)
    params = replace(PARAMS, challenges_per_epoch=k)
    height = (e + 1) * params.epoch_blocks
    challenges = get_epoch_challenges(seed_of(e), height, holdings, params)
    holders: dict[tuple[bytes, int], set[bytes]] = {}
    for p in holdings:
        for h in p.shards:
            holders.setdefault((h.collection, h.shard), set()).add(p.peer)
    by_shard: dict[tuple[bytes, int], list[Challenge]] = {}
    for c in challenges:
        by_shard.setdefault((c.collection, c.shard), []).append(c)
        assert 0 <= c.leaf < leaves
        assert (c.issued_height, c.deadline_height, c.attempt) == (height, height + params.proof_deadline_blocks, 0)
    assert len({c.challenge_id for c in challenges}) == len(challenges)
    for shard, group in by_shard.items():
        assert {c.peer for c in group} == holders[shard]
        assert len(group) == len(holders[shard])
        distinct = len({c.leaf for c in group})
        assert distinct == min(len(group), leaves)


def test_holder_leaves_spread_over_the_shard() -> None:
    leaves = get_holder_leaves(seed_of(0), coll(0), 3, 1000, 4)
    assert len(set(leaves)) == 4
    assert sorted((b - a) % 1000 for a, b in zip(leaves, leaves[1:])) == [250, 250, 250]
    assert set(get_holder_leaves(seed_of(0), coll(0), 3, 2, 5)) == {0, 1}


def test_epoch_challenges_refuse_duplicates() -> None:
    with pytest.raises(ChallengeError):
        get_epoch_challenges(seed_of(0), 10, (PeerShards(key(1), (held(0, 1),)), PeerShards(key(1), ())), PARAMS)
    with pytest.raises(ChallengeError):
        get_epoch_challenges(seed_of(0), 10, (PeerShards(key(1), (held(0, 1), held(0, 1))),), PARAMS)


def test_no_holdings_no_challenges() -> None:
    assert get_epoch_challenges(seed_of(0), 10, (), PARAMS) == ()
    assert get_epoch_challenges(seed_of(0), 10, (PeerShards(key(1), ()),), PARAMS) == ()


# ---------------------------------------------------------------------------- claims and retries

def test_claim_challenge_is_immediate_and_on_a_random_leaf() -> None:
    c = get_claim_challenge(seed_of(0), 55, key(1), coll(0), 4, 100, 5)
    assert (c.peer, c.collection, c.shard, c.issued_height, c.deadline_height, c.attempt) == (key(1), coll(0), 4, 55, 60, 0)
    assert c.challenge_id == compute_challenge_id(seed_of(0), key(1), coll(0), 4, c.leaf, 55, 0)
    leaves = Counter(get_claim_challenge(seed_of(e), 55, key(1), coll(0), 4, 100, 5).leaf for e in range(500))
    assert len(leaves) > 90 and all(0 <= leaf < 100 for leaf in leaves)
    with pytest.raises(ChallengeError):
        get_claim_challenge(seed_of(0), 55, key(1), coll(0), 4, 0, 5)


def test_a_missed_deadline_is_retried_on_the_same_leaf_up_to_the_limit() -> None:
    first = get_claim_challenge(seed_of(0), 20, key(1), coll(0), 0, 64, PARAMS.proof_deadline_blocks)
    assert not is_past_deadline(first, 25) and is_past_deadline(first, 26)
    chain = [first]
    while has_retries_left(chain[-1], PARAMS.proof_retries):
        previous = chain[-1]
        # Expired at the end of its deadline block, retried from that same height.
        chain.append(get_retry_challenge(previous, previous.deadline_height, PARAMS.proof_deadline_blocks))
    assert [c.attempt for c in chain] == [0, 1, 2]
    assert {(c.peer, c.collection, c.shard, c.leaf) for c in chain} == {(first.peer, first.collection, first.shard, first.leaf)}
    assert len({c.challenge_id for c in chain}) == 3
    assert [c.deadline_height for c in chain] == [25, 30, 35]
    assert chain[-1].deadline_height - first.issued_height == get_answer_blocks(PARAMS)
    assert chain[1].challenge_id == compute_challenge_id(
        first.challenge_id, first.peer, first.collection, first.shard, first.leaf, 25, 1
    )
