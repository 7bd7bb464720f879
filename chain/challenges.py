"""Storage challenges: which peer proves which leaf of which shard, and by when.

Every challenge is a pure function of chain randomness and chain state.

Seed.  Challenges issued at height h use `compute_challenge_seed` over the randomness of
the `randomness_mix_blocks` finalized blocks h-m .. h-1 (`get_seed_heights`, clamped at
genesis). Genesis requires m >= f+1, so one of those blocks is an honest proposer's, whose
VRF output no coalition of f validators knew beforehand: nobody can foresee the seed.

Epoch challenges (`get_epoch_challenges`, at every epoch boundary).  A held shard is
challenged in an epoch when
  * one of its holders drew it: each peer draws min(k, n) distinct shards out of its n
    holdings (verified and claimed, canonical (collection, shard) order) by a partial
    Fisher-Yates shuffle keyed by the seed, so it cannot steer the draw; or
  * it is the shard's turn in the sweep: its fixed slot H(collection, shard) mod P comes up
    once every P = `get_sweep_epochs` epochs, whatever the draws.
A challenged shard is challenged for every holder at once, each on a different leaf
(`get_holder_leaves`) whenever the shard has at least as many leaves as holders: a holder
that dropped its copy cannot reuse another holder's answer, it has to fetch its own leaf
from someone before the deadline.

Claims.  A new claim is challenged at once (`get_claim_challenge`); issue it in the block
after the claim, with a seed window ending at the claim's block, so the claimant did not
know the seed when it signed the claim.  Retries: a missed deadline is retried on the same
leaf (`get_retry_challenge`) while `has_retries_left`; then it is a MISS.

Budget.  answer_blocks = (proof_retries + 1) * proof_deadline_blocks is the longest a
challenge stays open.  P = (min(day_blocks, audit_window_blocks) - answer_blocks) //
epoch_blocks, at least 1.  A shard held throughout is challenged every P epochs and each
challenge resolves within answer_blocks, so two results on it are at most
P * epoch_blocks + answer_blocks <= min(day, audit window) blocks apart
(`get_max_proof_gap_blocks`): every held shard is proven at least once a day (at the
nominal block interval) and stays inside the audit window. Defaults: day = 86_400 blocks,
audit window 1000, answer 15 blocks -> P = 98 epochs, gap <= 995 blocks (about 17 min).
Load per peer holding n shards of redundancy r: min(k, n) own draws, about k * (r - 1)
more from co-holders' draws, and n / P sweep challenges per epoch (never more than n).
A peer with at least one shard is challenged every epoch, so a lost replica is caught at
the first epoch boundary, and its MISS lands answer_blocks later.

Peers that cannot steer: the draw depends only on the seed and the canonical holding list;
the sweep schedule is public by design (it is the floor), the random draws on top of it
are what make dropping a shard between two sweeps a gamble.
"""
from __future__ import annotations

from dataclasses import dataclass

from chain.codec import Hash32, PubKey
from chain.constants import (
    DAY_MS,
    DOMAIN_CHALLENGE_CLAIM,
    DOMAIN_CHALLENGE_DRAW,
    DOMAIN_CHALLENGE_ID,
    DOMAIN_CHALLENGE_LEAF,
    DOMAIN_CHALLENGE_SEED,
    DOMAIN_CHALLENGE_SWEEP,
    HASH_BYTES,
)
from chain.crypto import sha256
from chain.errors import ChallengeError
from chain.types import Params


@dataclass(frozen=True, slots=True)
class Challenge:
    """Peer `peer` must prove leaf `leaf` of shard `shard` of `collection` by `deadline_height`."""
    challenge_id: Hash32
    peer: PubKey
    collection: Hash32         # info_hash_v2
    shard: int
    leaf: int                  # index within the shard
    issued_height: int
    deadline_height: int       # an answer in a block at this height or below is in time
    attempt: int               # 0 for a fresh challenge, 1..proof_retries for its retries


@dataclass(frozen=True, slots=True)
class HeldShard:
    """A shard as a peer holds it (claimed or verified), with the shard's leaf count."""
    collection: Hash32
    shard: int
    leaf_count: int


@dataclass(frozen=True, slots=True)
class PeerShards:
    """Everything one challengeable peer (active or suspended) holds."""
    peer: PubKey
    shards: tuple[HeldShard, ...]


@dataclass(frozen=True, slots=True)
class ShardWithHolders:
    """One held shard and every peer holding it, sorted by key."""
    collection: Hash32
    shard: int
    leaf_count: int
    holders: tuple[PubKey, ...]


# ---------------------------------------------------------------------------- helpers

def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def compute_hash_int(*parts: bytes) -> int:
    """SHA-256 of fixed-width parts as a 256-bit integer: reduced mod n, bias is below 2**-200."""
    return int.from_bytes(sha256(b"".join(parts)), "big")


def get_shard_ref(held: HeldShard) -> tuple[bytes, int]:
    return held.collection, held.shard


# ---------------------------------------------------------------------------- epochs, seed

def is_epoch_boundary(height: int, epoch_blocks: int) -> bool:
    return height > 0 and height % epoch_blocks == 0


def get_epoch(height: int, epoch_blocks: int) -> int:
    return height // epoch_blocks


def get_seed_heights(height: int, randomness_mix_blocks: int) -> range:
    """Heights whose randomness seeds challenges issued at `height`: the m finalized blocks before it."""
    return range(max(0, height - randomness_mix_blocks), height)


def compute_challenge_seed(randomness_window: tuple[bytes, ...]) -> bytes:
    """Mix the randomness of consecutive finalized blocks, oldest first, into one seed."""
    if not randomness_window:
        raise ChallengeError("a challenge seed needs at least one block's randomness")
    if any(len(randomness) != HASH_BYTES for randomness in randomness_window):
        raise ChallengeError("block randomness is 32 bytes")
    return sha256(DOMAIN_CHALLENGE_SEED + u64(len(randomness_window)) + b"".join(randomness_window))


def compute_challenge_id(
    source: bytes, peer: bytes, collection: bytes, shard: int, leaf: int, issued_height: int, attempt: int
) -> bytes:
    """Id of a challenge; `source` is the seed it was drawn from, or for a retry the id it retries."""
    return sha256(
        DOMAIN_CHALLENGE_ID + source + peer + collection + u64(shard) + u64(leaf) + u64(issued_height) + u64(attempt)
    )


# ---------------------------------------------------------------------------- budget

def get_day_blocks(params: Params) -> int:
    return DAY_MS // params.block_interval_ms


def get_answer_blocks(params: Params) -> int:
    """The longest a challenge stays open: its deadline and every retry's."""
    return (params.proof_retries + 1) * params.proof_deadline_blocks


def get_sweep_epochs(params: Params) -> int:
    """P: every held shard is challenged at least once every P epochs."""
    span = min(get_day_blocks(params), params.audit_window_blocks) - get_answer_blocks(params)
    return max(1, span // params.epoch_blocks)


def get_max_proof_gap_blocks(params: Params) -> int:
    """Most blocks between two results on a shard held throughout."""
    return get_sweep_epochs(params) * params.epoch_blocks + get_answer_blocks(params)


# ---------------------------------------------------------------------------- draws

def compute_draw_indices(seed: bytes, peer: bytes, n: int, count: int) -> tuple[int, ...]:
    """`count` distinct indices of range(n): the first steps of a Fisher-Yates shuffle keyed by (seed, peer)."""
    order = list(range(n))
    for step in range(count):
        j = step + compute_hash_int(DOMAIN_CHALLENGE_DRAW, seed, peer, u64(step)) % (n - step)
        order[step], order[j] = order[j], order[step]
    return tuple(order[:count])


def get_drawn_shards(seed: bytes, held: PeerShards, k: int) -> tuple[tuple[bytes, int], ...]:
    """The min(k, n) shards a peer drew this epoch, in canonical order."""
    shards = held.shards
    indices = compute_draw_indices(seed, held.peer, len(shards), min(k, len(shards)))
    return tuple(sorted(get_shard_ref(shards[i]) for i in indices))


def get_sweep_slot(collection: bytes, shard: int, sweep_epochs: int) -> int:
    return compute_hash_int(DOMAIN_CHALLENGE_SWEEP, collection, u64(shard)) % sweep_epochs


def is_sweep_turn(collection: bytes, shard: int, epoch: int, sweep_epochs: int) -> bool:
    return get_sweep_slot(collection, shard, sweep_epochs) == epoch % sweep_epochs


def get_holder_leaves(seed: bytes, collection: bytes, shard: int, leaf_count: int, holders: int) -> tuple[int, ...]:
    """The leaf of each holder (in key order): evenly spaced from a random start, distinct if holders <= leaf_count."""
    if leaf_count < 1:
        raise ChallengeError(f"shard {shard} has no leaves to challenge")
    start = compute_hash_int(DOMAIN_CHALLENGE_LEAF, seed, collection, u64(shard)) % leaf_count
    step = max(1, leaf_count // max(1, holders))
    return tuple((start + i * step) % leaf_count for i in range(holders))


# ---------------------------------------------------------------------------- holdings

def get_canonical_holdings(holdings: tuple[PeerShards, ...]) -> tuple[PeerShards, ...]:
    """Peers sorted by key, each one's shards by (collection, shard); a repeated entry is refused."""
    peers = tuple(
        PeerShards(p.peer, tuple(sorted(p.shards, key=get_shard_ref)))
        for p in sorted(holdings, key=lambda p: p.peer)
    )
    for a, b in zip(peers, peers[1:]):
        if a.peer == b.peer:
            raise ChallengeError(f"peer {a.peer.hex()[:16]} listed twice")
    for p in peers:
        for a, b in zip(p.shards, p.shards[1:]):
            if get_shard_ref(a) == get_shard_ref(b):
                raise ChallengeError(f"peer {p.peer.hex()[:16]} lists shard {a.shard} twice")
    return peers


def get_shard_holders(holdings: tuple[PeerShards, ...]) -> tuple[ShardWithHolders, ...]:
    """Every held shard with its holders, sorted by (collection, shard); peers in key order."""
    by_shard: dict[tuple[bytes, int], list[bytes]] = {}
    leaf_counts: dict[tuple[bytes, int], int] = {}
    for p in get_canonical_holdings(holdings):
        for held in p.shards:
            by_shard.setdefault(get_shard_ref(held), []).append(p.peer)
            leaf_counts[get_shard_ref(held)] = held.leaf_count
    return tuple(
        ShardWithHolders(collection, shard, leaf_counts[(collection, shard)], tuple(by_shard[(collection, shard)]))
        for collection, shard in sorted(by_shard)
    )


# ---------------------------------------------------------------------------- challenges

def get_shard_challenges(seed: bytes, height: int, shard: ShardWithHolders, deadline_blocks: int) -> tuple[Challenge, ...]:
    """One challenge per holder of a challenged shard, each on its own leaf."""
    leaves = get_holder_leaves(seed, shard.collection, shard.shard, shard.leaf_count, len(shard.holders))
    return tuple(
        Challenge(
            challenge_id=compute_challenge_id(seed, peer, shard.collection, shard.shard, leaf, height, 0),
            peer=peer, collection=shard.collection, shard=shard.shard, leaf=leaf,
            issued_height=height, deadline_height=height + deadline_blocks, attempt=0,
        )
        for peer, leaf in zip(shard.holders, leaves)
    )


def get_epoch_challenges(
    seed: bytes, height: int, holdings: tuple[PeerShards, ...], params: Params
) -> tuple[Challenge, ...]:
    """The challenges of the epoch starting at `height`, ordered by (collection, shard, peer).

    `holdings` lists every peer that is challenged (active or suspended: a suspended peer
    comes back only by answering) with its verified and claimed shards.
    """
    canonical = get_canonical_holdings(holdings)
    drawn = {key for p in canonical for key in get_drawn_shards(seed, p, params.challenges_per_epoch)}
    epoch, sweep_epochs = get_epoch(height, params.epoch_blocks), get_sweep_epochs(params)
    return tuple(
        challenge
        for shard in get_shard_holders(canonical)
        if (shard.collection, shard.shard) in drawn or is_sweep_turn(shard.collection, shard.shard, epoch, sweep_epochs)
        for challenge in get_shard_challenges(seed, height, shard, params.proof_deadline_blocks)
    )


def get_claim_challenge(
    seed: bytes, height: int, peer: bytes, collection: bytes, shard: int, leaf_count: int, deadline_blocks: int
) -> Challenge:
    """The challenge a new claim gets at once: a random leaf of the claimed shard."""
    if leaf_count < 1:
        raise ChallengeError(f"shard {shard} has no leaves to challenge")
    leaf = compute_hash_int(DOMAIN_CHALLENGE_CLAIM, seed, peer, collection, u64(shard)) % leaf_count
    return Challenge(
        challenge_id=compute_challenge_id(seed, peer, collection, shard, leaf, height, 0),
        peer=peer, collection=collection, shard=shard, leaf=leaf,
        issued_height=height, deadline_height=height + deadline_blocks, attempt=0,
    )


def is_past_deadline(challenge: Challenge, height: int) -> bool:
    return height > challenge.deadline_height


def has_retries_left(challenge: Challenge, proof_retries: int) -> bool:
    return challenge.attempt < proof_retries


def get_retry_challenge(challenge: Challenge, height: int, deadline_blocks: int) -> Challenge:
    """The same leaf asked again under a new id, issued at the end of the missed deadline's block.

    Issued at `challenge.deadline_height`, the last retry's deadline falls answer_blocks
    after the first issue, which is what the budget counts on.
    """
    attempt = challenge.attempt + 1
    return Challenge(
        challenge_id=compute_challenge_id(
            challenge.challenge_id, challenge.peer, challenge.collection, challenge.shard, challenge.leaf, height, attempt
        ),
        peer=challenge.peer, collection=challenge.collection, shard=challenge.shard, leaf=challenge.leaf,
        issued_height=height, deadline_height=height + deadline_blocks, attempt=attempt,
    )
