"""Audit reputation: a decaying score in ppm, and what each verdict does to a peer.

The score follows Storj's audit reputation in its simplest form, an exponentially
weighted average of outcomes, in integer parts per million:

    score' = (alpha * score + (PPM - alpha) * outcome) / PPM,  outcome = PPM (PASS) or 0 (MISS)

rounded toward the outcome (up after a PASS, down after a MISS), so passes reach exactly
PPM and misses exactly 0 instead of stalling a few ppm short.

Verdicts are per holding (DESIGN.md, "Verdicts"):
  * PASS raises the score; a suspended peer whose score is back at the threshold is active.
  * MISS (a deadline missed on the last retry) lowers it; under `suspend_below_ppm` an
    active peer is suspended (its holdings stop counting) from that height.
  * INVALID (a wrong proof the peer signed) excludes the peer at once and drops that holding.
  * A peer suspended for `grace_period_blocks` is excluded, whatever comes after.
  * EXCLUDED and LEFT are final.
A MISS never drops a holding by itself: one lost shard does not condemn the others.

Bounds.  From a full score, m = `compute_misses_to_suspend` consecutive misses suspend a
peer (defaults: alpha 0.95, threshold 0.6 -> m = 10; nine in a row do not). A silent peer
holding n >= 1 shards gets at least min(k, n) fresh challenges every epoch, each a MISS
`answer_blocks` after issue, so it is suspended within
ceil(m / min(k, n)) * epoch_blocks + answer_blocks blocks of falling silent
(`get_silent_suspension_bound_blocks`; defaults: 65 blocks for n >= 2, 115 for n = 1)
and excluded grace_period_blocks later (`get_silent_exclusion_bound_blocks`: 95 / 145).
An honest peer that misses at most one verdict in any three consecutive ones never drops
below 0.64 with the defaults (the worst pattern, one miss in every three, bottoms out at
alpha * (1 - alpha**2) / (1 - alpha**3) = 0.6494): it is never suspended.
"""
from __future__ import annotations

from dataclasses import dataclass

from chain.challenges import get_answer_blocks
from chain.constants import PPM
from chain.errors import BadProofResult
from chain.state import ACTIVE, EXCLUDED, LEFT, SUSPENDED
from chain.types import INVALID, MISS, PASS, Params


@dataclass(frozen=True, slots=True)
class Standing:
    """The part of a peer that verdicts change (chain.state.Peer has the same three fields)."""
    status: int                # ACTIVE, SUSPENDED, EXCLUDED or LEFT
    status_height: int         # when the status last changed: suspended_since while SUSPENDED
    reputation_ppm: int


@dataclass(frozen=True, slots=True)
class VerdictEffect:
    standing: Standing
    drop_holding: bool         # the challenged holding is removed (INVALID only)


# ---------------------------------------------------------------------------- score

def compute_reputation(score_ppm: int, passed: bool, alpha_ppm: int) -> int:
    """The decayed score after one outcome, rounded toward the outcome."""
    weighted = alpha_ppm * score_ppm + (PPM - alpha_ppm) * (PPM if passed else 0)
    return -(-weighted // PPM) if passed else weighted // PPM


def is_suspended(score_ppm: int, params: Params) -> bool:
    """Whether a score is under the suspension threshold."""
    return score_ppm < params.suspend_below_ppm


def is_final_status(status: int) -> bool:
    return status in (EXCLUDED, LEFT)


# ---------------------------------------------------------------------------- status

def is_grace_expired(standing: Standing, height: int, params: Params) -> bool:
    return standing.status == SUSPENDED and height - standing.status_height >= params.grace_period_blocks


def get_standing_at_height(standing: Standing, height: int, params: Params) -> Standing:
    """Suspended past the grace period -> excluded, at exactly the height the grace ran out."""
    if not is_grace_expired(standing, height, params):
        return standing
    return Standing(EXCLUDED, standing.status_height + params.grace_period_blocks, standing.reputation_ppm)


def get_standing_after_pass(standing: Standing, height: int, params: Params) -> Standing:
    score = compute_reputation(standing.reputation_ppm, True, params.reputation_alpha_ppm)
    if standing.status == SUSPENDED and not is_suspended(score, params):
        return Standing(ACTIVE, height, score)
    return Standing(standing.status, standing.status_height, score)


def get_standing_after_miss(standing: Standing, height: int, params: Params) -> Standing:
    score = compute_reputation(standing.reputation_ppm, False, params.reputation_alpha_ppm)
    if standing.status == ACTIVE and is_suspended(score, params):
        return Standing(SUSPENDED, height, score)
    return Standing(standing.status, standing.status_height, score)


def get_standing_after_invalid(standing: Standing, height: int, params: Params) -> Standing:
    score = compute_reputation(standing.reputation_ppm, False, params.reputation_alpha_ppm)
    return Standing(EXCLUDED, height, score)


def get_peer_status_after_verdict(standing: Standing, verdict: int, height: int, params: Params) -> VerdictEffect:
    """What a final verdict on one holding, recorded at `height`, does to its peer."""
    current = get_standing_at_height(standing, height, params)
    if is_final_status(current.status):
        return VerdictEffect(current, drop_holding=verdict == INVALID)
    if verdict == PASS:
        return VerdictEffect(get_standing_after_pass(current, height, params), drop_holding=False)
    if verdict == MISS:
        return VerdictEffect(get_standing_after_miss(current, height, params), drop_holding=False)
    if verdict == INVALID:
        return VerdictEffect(get_standing_after_invalid(current, height, params), drop_holding=True)
    raise BadProofResult(f"unknown verdict {verdict}")


# ---------------------------------------------------------------------------- bounds

def compute_misses_to_suspend(params: Params) -> int | None:
    """Consecutive misses that take a fresh peer under the threshold; None if none ever do."""
    score, misses = params.reputation_start_ppm, 0
    while not is_suspended(score, params):
        lower = compute_reputation(score, False, params.reputation_alpha_ppm)
        if lower == score:
            return None
        score, misses = lower, misses + 1
    return misses


def get_silent_suspension_bound_blocks(params: Params, shards_held: int) -> int | None:
    """Most blocks from falling silent to suspension, for a peer holding `shards_held` >= 1 shards."""
    misses = compute_misses_to_suspend(params)
    per_epoch = min(params.challenges_per_epoch, shards_held)
    if misses is None or per_epoch < 1:
        return None
    return -(-misses // per_epoch) * params.epoch_blocks + get_answer_blocks(params)


def get_silent_exclusion_bound_blocks(params: Params, shards_held: int) -> int | None:
    suspended = get_silent_suspension_bound_blocks(params, shards_held)
    return None if suspended is None else suspended + params.grace_period_blocks
