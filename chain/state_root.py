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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chain.constants import (
    DOMAIN_STATE_BUCKET,
    DOMAIN_STATE_LEAF,
    DOMAIN_STATE_NODE,
    STATE_BUCKET_BITS,
    STATE_FANOUT_BITS,
)
from chain.crypto import new_sha256

BUCKETS = 1 << STATE_BUCKET_BITS
FANOUT = 1 << STATE_FANOUT_BITS
DEPTH = STATE_BUCKET_BITS // STATE_FANOUT_BITS
if DEPTH * STATE_FANOUT_BITS != STATE_BUCKET_BITS or STATE_BUCKET_BITS > 16:
    raise ImportError("STATE_BUCKET_BITS must be a multiple of STATE_FANOUT_BITS, and at most 16")


def compute_leaf_hash(key: bytes, value: bytes) -> bytes:
    # The key length keeps (key, value) splits unambiguous.
    return new_sha256(DOMAIN_STATE_LEAF + len(key).to_bytes(2, "big") + key + value).digest()


def get_bucket_index(key: bytes) -> int:
    digest = new_sha256(key).digest()
    return (digest[0] << 8 | digest[1]) >> (16 - STATE_BUCKET_BITS)  # the first STATE_BUCKET_BITS bits


def compute_bucket_hash(leaf_hashes: bytes) -> bytes:
    """`leaf_hashes`: the leaves of the bucket's keys in key order, concatenated."""
    return new_sha256(DOMAIN_STATE_BUCKET + leaf_hashes).digest()


def compute_node_hash(children: bytes) -> bytes:
    """`children`: the hashes of the node's FANOUT children in index order, concatenated."""
    return new_sha256(DOMAIN_STATE_NODE + children).digest()


def compute_empty_hashes() -> tuple[bytes, ...]:
    """Hash of an empty subtree at each level, from an empty bucket (0) up to the root (DEPTH)."""
    hashes = [compute_bucket_hash(b"")]
    for _ in range(DEPTH):
        hashes.append(compute_node_hash(hashes[-1] * FANOUT))
    return tuple(hashes)


EMPTY_HASHES = compute_empty_hashes()


def compute_root(leaves: Mapping[bytes, bytes]) -> bytes:
    """The root of a whole set of (key, leaf hash) pairs, from scratch: the definition."""
    buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    for key in sorted(leaves):
        buckets[get_bucket_index(key)].append(leaves[key])
    level = [compute_bucket_hash(b"".join(b)) for b in buckets]
    while len(level) > 1:
        level = [compute_node_hash(b"".join(level[i:i + FANOUT])) for i in range(0, len(level), FANOUT)]
    return level[0]


# ---------------------------------------------------------------------------- incremental

HASH_BYTES = 32

# A bucket: its keys, sorted, and their leaf hashes concatenated in that order (what the
# bucket hash covers), so hashing a bucket joins nothing and updating it copies bytes.
Bucket = tuple[tuple[bytes, ...], bytes]
EMPTY_BUCKET: Bucket = ((), b"")


@dataclass(frozen=True, slots=True)
class StateTree:
    """Every bucket and every node hash; updates copy what they change, so older trees
    stay valid and share the rest.

    Each level is one bytes string, the hashes of its nodes concatenated in index order:
    the FANOUT children of node i are bytes i*FANOUT*32 ... of the level below, so a node
    is rehashed from one slice and a new level is one copy of bytes. The buckets are kept
    in chunks of FANOUT (the children of one level-1 node): an update copies the chunk
    index and the chunks it touches, not all 4096 buckets."""
    buckets: tuple[tuple[Bucket, ...], ...]   # bucket b is buckets[b // FANOUT][b % FANOUT]
    levels: tuple[bytes, ...]                 # levels[0]: the bucket hashes ... levels[DEPTH]: the root

    @property
    def root(self) -> bytes:
        return self.levels[DEPTH]


EMPTY_TREE = StateTree(
    buckets=((EMPTY_BUCKET,) * FANOUT,) * (BUCKETS // FANOUT),
    levels=tuple(EMPTY_HASHES[d] * (BUCKETS >> (STATE_FANOUT_BITS * d)) for d in range(DEPTH + 1)),
)


def set_bucket_leaf(bucket: Bucket, key: bytes, leaf: bytes | None) -> Bucket:
    """The bucket with one key set to a leaf hash, or removed (None); `bucket` itself if
    that changes nothing (the caller then need not rehash it)."""
    keys, leaves = bucket
    i = bisect.bisect_left(keys, key)
    at = i * HASH_BYTES
    if i < len(keys) and keys[i] == key:
        if leaf is None:
            return keys[:i] + keys[i + 1:], leaves[:at] + leaves[at + HASH_BYTES:]
        if leaves[at:at + HASH_BYTES] == leaf:
            return bucket
        return keys, leaves[:at] + leaf + leaves[at + HASH_BYTES:]
    if leaf is None:
        return bucket
    return keys[:i] + (key,) + keys[i:], leaves[:at] + leaf + leaves[at:]


def update_bucket(bucket: Bucket, changes: Mapping[bytes, bytes | None]) -> Bucket:
    """Set (leaf hash) or remove (None) keys of one bucket."""
    if len(changes) == 1:
        # The usual case (a block changes few keys among 4096 buckets): no list copies.
        (key, leaf), = changes.items()
        return set_bucket_leaf(bucket, key, leaf)
    keys = list(bucket[0])
    leaves = [bucket[1][i:i + HASH_BYTES] for i in range(0, len(bucket[1]), HASH_BYTES)]
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
    return tuple(keys), b"".join(leaves)


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
    """A new tree with keys set to new leaf hashes (32 bytes; None: removed); `tree` is not
    modified.

    Batched: every touched bucket is updated and hashed once, then every node above a
    touched bucket once per level. Hashes do not depend on the order dirty entries are
    visited in, so none is sorted."""
    chunks = list(tree.buckets)
    copied: dict[int, list[Bucket]] = {}
    hashes = bytearray(tree.levels[0])
    groups = group_by_bucket(changes)
    dirty = []
    for b, group in groups.items():
        c, i = b >> STATE_FANOUT_BITS, b & (FANOUT - 1)
        bucket = update_bucket(chunks[c][i], group)
        if bucket is chunks[c][i]:
            continue  # rewritten with the same leaves: nothing above it changes
        chunk = copied.get(c)
        if chunk is None:
            chunk = copied[c] = list(chunks[c])
        chunk[i] = bucket
        hashes[b * HASH_BYTES:(b + 1) * HASH_BYTES] = compute_bucket_hash(bucket[1])
        dirty.append(b)
    if not dirty:
        return tree
    for c, chunk in copied.items():
        chunks[c] = tuple(chunk)
    levels = [bytes(hashes)]
    for depth in range(1, DEPTH + 1):
        dirty = {i >> STATE_FANOUT_BITS for i in dirty}
        levels.append(update_level(tree.levels[depth], levels[-1], dirty))
    return StateTree(tuple(chunks), tuple(levels))


def update_level(level: bytes, below: bytes, dirty: Iterable[int]) -> bytes:
    """`level` with the nodes at the `dirty` indices rehashed from their children in `below`."""
    nodes = bytearray(level)
    width = FANOUT * HASH_BYTES
    for i in dirty:
        nodes[i * HASH_BYTES:(i + 1) * HASH_BYTES] = compute_node_hash(below[i * width:(i + 1) * width])
    return bytes(nodes)
