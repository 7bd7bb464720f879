"""The state root: a bucketed merkle tree over the state's key/value pairs.

    leaf(key, value)  = H(DOMAIN_STATE_LEAF || len(key) as 2 bytes big endian || key || value)
    bucket(key)       = the first STATE_BUCKET_BITS bits of H(key)
    bucket hash       = H(DOMAIN_STATE_BUCKET || leaves of the bucket's keys, in key order)
    node hash         = H(DOMAIN_STATE_NODE || its FANOUT children, in index order)
    root              = the single node of a fixed-depth tree of fan-out FANOUT over
                        all 2**STATE_BUCKET_BITS bucket hashes (empty buckets included)

The shape never changes, so the root is a function of the set of pairs alone: insertion
order and history do not matter. Changing k keys rehashes at most k buckets and k paths
of DEPTH nodes, which is what keeps a block's cost proportional to what it changed.
"""
from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chain.constants import (
    DOMAIN_STATE_BUCKET,
    DOMAIN_STATE_LEAF,
    DOMAIN_STATE_NODE,
    STATE_BUCKET_BITS,
    STATE_FANOUT_BITS,
)
from chain.crypto import sha256

BUCKETS = 1 << STATE_BUCKET_BITS
FANOUT = 1 << STATE_FANOUT_BITS
DEPTH = STATE_BUCKET_BITS // STATE_FANOUT_BITS
if DEPTH * STATE_FANOUT_BITS != STATE_BUCKET_BITS:
    raise ImportError("STATE_BUCKET_BITS must be a multiple of STATE_FANOUT_BITS")


def compute_leaf_hash(key: bytes, value: bytes) -> bytes:
    # The key length keeps (key, value) splits unambiguous.
    return sha256(DOMAIN_STATE_LEAF + len(key).to_bytes(2, "big") + key + value)


def get_bucket_index(key: bytes) -> int:
    return int.from_bytes(sha256(key)[:4], "big") >> (32 - STATE_BUCKET_BITS)


def compute_bucket_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    return sha256(DOMAIN_STATE_BUCKET + b"".join(leaf_hashes))


def compute_node_hash(children: Sequence[bytes]) -> bytes:
    return sha256(DOMAIN_STATE_NODE + b"".join(children))


def compute_empty_hashes() -> tuple[bytes, ...]:
    """Hash of an empty subtree at each level, from an empty bucket (0) up to the root (DEPTH)."""
    hashes = [compute_bucket_hash(())]
    for _ in range(DEPTH):
        hashes.append(compute_node_hash([hashes[-1]] * FANOUT))
    return tuple(hashes)


EMPTY_HASHES = compute_empty_hashes()


def compute_root(leaves: Mapping[bytes, bytes]) -> bytes:
    """The root of a whole set of (key, leaf hash) pairs, from scratch: the definition."""
    buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    for key in sorted(leaves):
        buckets[get_bucket_index(key)].append(leaves[key])
    level = [compute_bucket_hash(b) for b in buckets]
    while len(level) > 1:
        level = [compute_node_hash(level[i:i + FANOUT]) for i in range(0, len(level), FANOUT)]
    return level[0]


# ---------------------------------------------------------------------------- incremental

@dataclass(frozen=True, slots=True)
class Bucket:
    keys: tuple[bytes, ...]        # sorted
    leaves: tuple[bytes, ...]      # leaf hash of keys[i]


EMPTY_BUCKET = Bucket((), ())


@dataclass(frozen=True, slots=True)
class StateTree:
    """Every bucket and every node hash; updates copy, so older trees stay valid."""
    buckets: tuple[Bucket, ...]
    levels: tuple[tuple[bytes, ...], ...]   # levels[0]: bucket hashes ... levels[DEPTH]: (root,)

    @property
    def root(self) -> bytes:
        return self.levels[DEPTH][0]


EMPTY_TREE = StateTree(
    buckets=(EMPTY_BUCKET,) * BUCKETS,
    levels=tuple((EMPTY_HASHES[d],) * (BUCKETS >> (STATE_FANOUT_BITS * d)) for d in range(DEPTH + 1)),
)


def update_bucket(bucket: Bucket, changes: Mapping[bytes, bytes | None]) -> Bucket:
    """Set (leaf hash) or remove (None) keys of one bucket."""
    if len(changes) == 1:
        # The usual case (a block changes few keys among 4096 buckets): no list copies.
        (key, leaf), = changes.items()
        return set_bucket_leaf(bucket, key, leaf)
    keys, leaves = list(bucket.keys), list(bucket.leaves)
    for key in sorted(changes):
        leaf = changes[key]
        i = bisect.bisect_left(keys, key)
        present = i < len(keys) and keys[i] == key
        if leaf is None:
            if present:
                del keys[i], leaves[i]
        elif present:
            leaves[i] = leaf
        else:
            keys.insert(i, key)
            leaves.insert(i, leaf)
    return Bucket(tuple(keys), tuple(leaves))


def set_bucket_leaf(bucket: Bucket, key: bytes, leaf: bytes | None) -> Bucket:
    """update_bucket for a single key."""
    keys, leaves = bucket.keys, bucket.leaves
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        if leaf is None:
            return Bucket(keys[:i] + keys[i + 1:], leaves[:i] + leaves[i + 1:])
        return Bucket(keys, leaves[:i] + (leaf,) + leaves[i + 1:])
    if leaf is None:
        return bucket
    return Bucket(keys[:i] + (key,) + keys[i:], leaves[:i] + (leaf,) + leaves[i:])


def group_by_bucket(changes: Mapping[bytes, bytes | None]) -> dict[int, dict[bytes, bytes | None]]:
    groups: dict[int, dict[bytes, bytes | None]] = {}
    for key, leaf in changes.items():
        index = get_bucket_index(key)
        group = groups.get(index)
        if group is None:
            groups[index] = {key: leaf}
        else:
            group[key] = leaf
    return groups


def update_tree(tree: StateTree, changes: Mapping[bytes, bytes | None]) -> StateTree:
    """A new tree with keys set to new leaf hashes (None: removed); `tree` is not modified.
    Hashes do not depend on the order dirty entries are visited in, so none is sorted."""
    buckets = list(tree.buckets)
    bucket_hashes = list(tree.levels[0])
    groups = group_by_bucket(changes)
    for b, group in groups.items():
        bucket = buckets[b] = update_bucket(buckets[b], group)
        bucket_hashes[b] = compute_bucket_hash(bucket.leaves)
    levels = [tuple(bucket_hashes)]
    dirty = groups.keys()
    for depth in range(1, DEPTH + 1):
        dirty = {i >> STATE_FANOUT_BITS for i in dirty}
        levels.append(update_level(tree.levels[depth], levels[-1], dirty))
    return StateTree(tuple(buckets), tuple(levels))


def update_level(level: tuple[bytes, ...], below: tuple[bytes, ...], dirty: set[int]) -> tuple[bytes, ...]:
    """`level` with the nodes at the `dirty` indices rehashed from their children in `below`."""
    nodes = list(level)
    for i in dirty:
        nodes[i] = compute_node_hash(below[i * FANOUT:(i + 1) * FANOUT])
    return tuple(nodes)
