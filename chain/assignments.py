"""Targets from chain state: map each block's state changes onto the incremental index.

chain/targets.py decides placement over plain views; this module says what those views
are in terms of chain state, and feeds the index exactly the peers and shards a block
changed (read off the block's state diff), so every node that applies the same finalized
blocks in order holds the same targets. The sticky part of the targets (peers told to
fetch and not yet claimed, migrations in flight) is derived data, not chain state: a node
persists it beside the block (`get_priors`) and rebuilds the index from it after a restart
(`TargetTracker.rebuild`), which gives the same index as never having stopped.

Known simplification, stated in docs: a verified copy counts until its holder misses its
challenges (reputation suspends it) or drops it; the audit window is enforced by the
challenge sweep, which proves every holding within the window.
"""
from __future__ import annotations

from dataclasses import dataclass

from chain.codec import Hash32
from chain.crypto import sha256
from chain.state import (
    ACTIVE, State, get_collection, get_peer, get_shard_holders, iter_prefix,
)
from chain.targets import NO_PEER, Assignment, PeerView, ShardView, Targets

DOMAIN_SHARD_ID = b"cairn/shard-id"


@dataclass(frozen=True, slots=True)
class ShardPrior:
    """The sticky part of one shard's targets, persisted by the node."""
    shard_id: Hash32
    pending: tuple[Hash32, ...]
    moving_out: bytes


def compute_shard_id(info_hash: bytes, index: int) -> bytes:
    return sha256(DOMAIN_SHARD_ID + info_hash + index.to_bytes(4, "big"))


def get_peer_view(state: State, peer_id: bytes) -> PeerView:
    peer = get_peer(state, peer_id)
    if peer is None:
        return PeerView(peer_id, 0, b"\0" * 32, False)
    return PeerView(peer_id, peer.capacity, peer.registration_randomness, peer.status == ACTIVE)


def get_shard_view(state: State, info_hash: bytes, index: int, prior: ShardPrior | None = None) -> ShardView | None:
    coll = get_collection(state, info_hash)
    if coll is None or index >= len(coll.shards):
        return None
    holders = get_shard_holders(state, info_hash, index).holders
    verified = tuple(h.peer for h in holders if h.verified_height > 0)
    claimed = tuple(h.peer for h in holders if h.verified_height == 0)
    pending, moving = (prior.pending, prior.moving_out) if prior else ((), NO_PEER)
    return ShardView(compute_shard_id(info_hash, index), coll.shards[index].length, coll.target,
                     verified, claimed, pending, moving)


def get_changed_peers(diff) -> tuple[bytes, ...]:
    return tuple(sorted({key[5:37] for key, _ in diff if key.startswith(b"peer/")}))


def get_changed_shards(state: State, diff) -> tuple[tuple[bytes, int], ...]:
    """(info_hash, index) of every shard whose holders changed or that a new collection added."""
    refs: set[tuple[bytes, int]] = set()
    for key, _ in diff:
        if key.startswith(b"shard/"):
            refs.add((key[6:38], int.from_bytes(key[38:42], "big")))
        elif key.startswith(b"collection/"):
            info_hash = key[11:43]
            coll = get_collection(state, info_hash)
            refs.update((info_hash, s.index) for s in coll.shards) if coll else None
    return tuple(sorted(refs))


class TargetTracker:
    """The targets index of one node, advanced one finalized block at a time."""

    def __init__(self) -> None:
        self.targets = Targets()
        self.refs: dict[bytes, tuple[bytes, int]] = {}       # shard id -> (info hash, index)

    def apply_block(self, state: State) -> tuple[Assignment, ...]:
        """Feed the changes of the block that produced `state`."""
        changed_peers = get_changed_peers(state.diff)
        changed_shards = get_changed_shards(state, state.diff)
        if not changed_peers and not changed_shards and not self.refs:
            # Nothing changed and the index holds no shard: nothing to fill or rebalance,
            # so applying no changes would be a no-op (most blocks of a young chain).
            return ()
        peers = [get_peer_view(state, p) for p in changed_peers]
        shards = []
        for info_hash, index in changed_shards:
            view = get_shard_view(state, info_hash, index)
            if view is not None:
                self.refs[view.shard_id] = (info_hash, index)
                shards.append(view)
        return self.targets.apply_changes(peers, shards)

    def rebuild(self, state: State, priors: dict[bytes, ShardPrior]) -> None:
        """From scratch at `state`, with the sticky priors persisted beside it."""
        self.targets = Targets()
        self.refs = {}
        peers = [get_peer_view(state, key[5:37]) for key, _ in iter_prefix(state, b"peer/")]
        shards = []
        for key, coll in iter_prefix(state, b"collection/"):
            info_hash = key[11:43]
            for s in coll.shards:
                shard_id = compute_shard_id(info_hash, s.index)
                view = get_shard_view(state, info_hash, s.index, priors.get(shard_id))
                self.refs[shard_id] = (info_hash, s.index)
                shards.append(view)
        self.targets.apply_changes(peers, shards)

    def get_priors(self, shard_ids) -> list[ShardPrior]:
        by_id = {v.shard_id: v for v in self.targets.get_snapshot_views()} if shard_ids else {}
        return [ShardPrior(s, by_id[s].pending, by_id[s].moving_out) for s in shard_ids if s in by_id]

    def get_tasks(self, peer_id: bytes) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
        """(shards this peer must fetch, shards it may drop), as (info hash, index)."""
        fetch, drop = self.targets.get_peer_tasks(peer_id)
        return [self.refs[s] for s in fetch if s in self.refs], [self.refs[s] for s in drop if s in self.refs]

    def get_assigned(self, info_hash: bytes, index: int) -> tuple[bytes, ...]:
        shard_id = compute_shard_id(info_hash, index)
        if shard_id not in self.refs:
            return ()
        return self.targets.get_assignment(shard_id).assigned

    def get_replication_deficit(self) -> int:
        return self.targets.get_replication_deficit()
