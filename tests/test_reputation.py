"""Audit reputation: integer decay, suspension, grace, exclusion, recovery, and the bounds."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.challenges import (
    Challenge,
    HeldShard,
    PeerShards,
    compute_challenge_seed,
    get_epoch_challenges,
    get_retry_challenge,
    has_retries_left,
    is_epoch_boundary,
)
from chain.constants import PPM
from chain.crypto import sha256
from chain.errors import BadProofResult
from chain.reputation import (
    Standing,
    compute_misses_to_suspend,
    compute_reputation,
    get_peer_status_after_verdict,
    get_silent_exclusion_bound_blocks,
    get_silent_suspension_bound_blocks,
    get_standing_at_height,
    is_suspended,
)
from chain.state import ACTIVE, EXCLUDED, LEFT, SUSPENDED
from chain.types import INVALID, MISS, PASS, Params

PARAMS = Params()
FRESH = Standing(ACTIVE, 0, PARAMS.reputation_start_ppm)


def run(standing: Standing, verdicts: list[int], start: int = 1) -> list[Standing]:
    out = []
    for i, verdict in enumerate(verdicts):
        standing = get_peer_status_after_verdict(standing, verdict, start + i, PARAMS).standing
        out.append(standing)
    return out


# ---------------------------------------------------------------------------- score

def test_score_decays_by_alpha() -> None:
    assert compute_reputation(PPM, True, 950_000) == PPM
    assert compute_reputation(PPM, False, 950_000) == 950_000
    assert compute_reputation(500_000, True, 950_000) == 525_000
    assert compute_reputation(0, True, 950_000) == 50_000


def test_rounding_is_toward_the_outcome_so_the_score_reaches_both_ends() -> None:
    up, down = 0, PPM
    for _ in range(1000):
        up = compute_reputation(up, True, 950_000)
        down = compute_reputation(down, False, 950_000)
    assert (up, down) == (PPM, 0)
    assert compute_reputation(999_999, True, 950_000) == PPM        # floor would stall below
    assert compute_reputation(1, False, 950_000) == 0


@given(st.integers(0, PPM), st.integers(0, PPM))
def test_score_stays_in_range_and_moves_toward_the_outcome(score: int, alpha: int) -> None:
    up = compute_reputation(score, True, alpha)
    down = compute_reputation(score, False, alpha)
    assert 0 <= down <= score <= up <= PPM
    assert type(up) is int and type(down) is int


def test_misses_to_suspend_with_the_defaults() -> None:
    assert compute_misses_to_suspend(PARAMS) == 10
    nine = run(FRESH, [MISS] * 9)
    assert nine[-1].status == ACTIVE and not is_suspended(nine[-1].reputation_ppm, PARAMS)
    assert run(FRESH, [MISS] * 10)[-1].status == SUSPENDED
    assert compute_misses_to_suspend(replace(PARAMS, reputation_alpha_ppm=PPM)) is None
    assert compute_misses_to_suspend(replace(PARAMS, suspend_below_ppm=0)) is None
    assert get_silent_suspension_bound_blocks(replace(PARAMS, suspend_below_ppm=0), 3) is None


def test_documented_bounds() -> None:
    assert get_silent_suspension_bound_blocks(PARAMS, 1) == 10 * 10 + 15
    assert get_silent_suspension_bound_blocks(PARAMS, 2) == 5 * 10 + 15
    assert get_silent_suspension_bound_blocks(PARAMS, 50) == 65
    assert get_silent_exclusion_bound_blocks(PARAMS, 2) == 65 + 30
    assert get_silent_suspension_bound_blocks(PARAMS, 0) is None


# ---------------------------------------------------------------------------- honest peers

def _spaced_misses(pattern: list[bool]) -> list[int]:
    """Verdicts with at most one MISS in any three consecutive ones."""
    verdicts: list[int] = []
    for miss in pattern:
        verdicts.append(MISS if miss and MISS not in verdicts[-2:] else PASS)
    return verdicts


@settings(max_examples=200)
@given(st.lists(st.booleans(), min_size=1, max_size=400))
def test_an_honest_peer_with_rare_misses_is_never_suspended(pattern: list[bool]) -> None:
    history = run(FRESH, _spaced_misses(pattern))
    assert all(s.status == ACTIVE for s in history)
    assert min(s.reputation_ppm for s in history) >= 640_000


def test_worst_rare_pattern_settles_above_the_threshold() -> None:
    history = run(FRESH, [MISS, PASS, PASS] * 300)
    assert all(s.status == ACTIVE for s in history)
    assert 640_000 <= min(s.reputation_ppm for s in history[-30:]) < 660_000
    assert any(s.status == SUSPENDED for s in run(FRESH, [MISS, PASS] * 300))   # one in two is not rare


# ---------------------------------------------------------------------------- verdict rules

def test_invalid_excludes_at_once_and_drops_only_that_holding() -> None:
    effect = get_peer_status_after_verdict(FRESH, INVALID, 42, PARAMS)
    assert effect.drop_holding and effect.standing.status == EXCLUDED and effect.standing.status_height == 42
    for verdict in (PASS, MISS):
        assert not get_peer_status_after_verdict(FRESH, verdict, 42, PARAMS).drop_holding


def test_miss_lowers_but_never_drops_a_holding_even_when_suspending() -> None:
    standing = run(FRESH, [MISS] * 9)[-1]
    effect = get_peer_status_after_verdict(standing, MISS, 77, PARAMS)
    assert effect.standing == Standing(SUSPENDED, 77, compute_reputation(standing.reputation_ppm, False, 950_000))
    assert not effect.drop_holding
    later = get_peer_status_after_verdict(effect.standing, MISS, 80, PARAMS).standing
    assert later.status == SUSPENDED and later.status_height == 77     # suspended_since is kept


def test_a_suspended_peer_that_answers_again_is_active_once_above_the_threshold() -> None:
    suspended = run(FRESH, [MISS] * 14)[-1]
    assert suspended.status == SUSPENDED
    history = run(suspended, [PASS] * 5, start=20)
    back = next(i for i, s in enumerate(history) if s.status == ACTIVE)
    assert all(s.status == SUSPENDED and is_suspended(s.reputation_ppm, PARAMS) for s in history[:back])
    assert not is_suspended(history[back].reputation_ppm, PARAMS)
    assert history[back].status_height == 20 + back
    assert 0 < back < 5


def test_suspended_past_the_grace_period_is_excluded_whatever_comes_next() -> None:
    suspended = Standing(SUSPENDED, 100, 590_000)
    assert get_standing_at_height(suspended, 129, PARAMS) == suspended
    assert get_standing_at_height(suspended, 130, PARAMS) == Standing(EXCLUDED, 130, 590_000)
    late_pass = get_peer_status_after_verdict(suspended, PASS, 131, PARAMS)
    assert late_pass.standing == Standing(EXCLUDED, 130, 590_000)
    in_time = get_peer_status_after_verdict(suspended, PASS, 129, PARAMS)
    assert in_time.standing.status == ACTIVE


def test_excluded_and_left_are_final() -> None:
    for status in (EXCLUDED, LEFT):
        standing = Standing(status, 5, 100_000)
        for verdict in (PASS, MISS):
            assert get_peer_status_after_verdict(standing, verdict, 500, PARAMS).standing == standing
        assert get_peer_status_after_verdict(standing, INVALID, 500, PARAMS).drop_holding


def test_unknown_verdict_is_refused() -> None:
    with pytest.raises(BadProofResult):
        get_peer_status_after_verdict(FRESH, 9, 1, PARAMS)


# ---------------------------------------------------------------------------- a silent peer, end to end

def _simulate_silent_peer(shards: int, silent_from: int, until: int) -> dict[int, int]:
    """Drive real challenges and retries; returns {status: first height} for the silent peer."""
    silent = sha256(b"silent")
    honest = sha256(b"honest")
    holdings = (
        PeerShards(silent, tuple(HeldShard(sha256(b"c"), s, 32) for s in range(shards))),
        PeerShards(honest, tuple(HeldShard(sha256(b"c"), s, 32) for s in range(40))),
    )
    standing = FRESH
    first: dict[int, int] = {ACTIVE: 0}
    open_: list[Challenge] = []
    for height in range(1, until):
        if is_epoch_boundary(height, PARAMS.epoch_blocks):
            seed = compute_challenge_seed((sha256(height.to_bytes(8, "big")),))
            open_ += [c for c in get_epoch_challenges(seed, height, holdings, PARAMS) if c.peer == silent]
        answered = [c for c in open_ if c.issued_height < silent_from]
        for c in answered:
            standing = get_peer_status_after_verdict(standing, PASS, height, PARAMS).standing
        expired = [c for c in open_ if c not in answered and c.deadline_height == height]
        open_ = [c for c in open_ if c not in answered and c not in expired]
        for c in expired:
            if has_retries_left(c, PARAMS.proof_retries):
                open_.append(get_retry_challenge(c, height, PARAMS.proof_deadline_blocks))
            else:
                standing = get_peer_status_after_verdict(standing, MISS, height, PARAMS).standing
        standing = get_standing_at_height(standing, height, PARAMS)
        first.setdefault(standing.status, height)
    return first


@pytest.mark.parametrize("shards", [1, 2, 7])
def test_a_silent_peer_is_suspended_and_then_excluded_within_the_bounds(shards: int) -> None:
    silent_from = 203
    first = _simulate_silent_peer(shards, silent_from, until=600)
    assert first[SUSPENDED] - silent_from <= get_silent_suspension_bound_blocks(PARAMS, shards)
    assert first[EXCLUDED] == first[SUSPENDED] + PARAMS.grace_period_blocks
    assert first[EXCLUDED] - silent_from <= get_silent_exclusion_bound_blocks(PARAMS, shards)
