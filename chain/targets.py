"""Targets: which peer should hold which shard, and which holder may drop it.

A pure, deterministic function of chain state, integer math only, computed
incrementally from what each block changed.  Rules (DESIGN.md, "Targets"):

* Only verified copies on eligible peers count toward redundancy.
* A verified holder is never moved, except by the bounded rebalance.
* Missing copies are filled most-endangered shard first; each shard walks its
  preference order of peers and takes the first ones inside the capacity band
  (load + size <= (1+EPS) * fair share), at most one copy per peer, never past
  a peer's declared capacity.  If every peer with room is outside the band,
  the relatively least-loaded one is taken: durability beats balance.
* Claimed (in flight) and earlier-assigned (pending) holders keep their slot.
* Copies are released only above target + SLACK, lowest rank first, never the
  last verified copy; a copy moved by rebalance is released once its
  replacement is verified.
* Rebalance runs only when no shard is below target, a few moves per call.

Preference order.  Exact rendezvous needs one hash per (shard, peer): 10^10 at
10^6 shards x 10^4 peers, far too slow for every block.  We use its
consistent-hashing equivalent: each peer puts capacity-weighted virtual points
on a ring, keyed by (peer_id, rank_seed) so nobody can grind a key to land next
to a chosen shard; a shard walks the ring clockwise from its own point.  Like
rendezvous, a join or leave only inserts or removes that peer in each shard's
order; the relative order of the others never changes.  A lookup is one hash
and a bisect.  Within a shard, releases use a rendezvous rank
H(shard_id, peer_id, rank_seed).

What "incremental" guarantees.  The targets are sticky chain state: a peer told
to fetch a shard keeps that task until it claims it or becomes ineligible, or
peers would abandon half-done downloads whenever loads shift.  So the output is
a pure function of (peers, shards, prior pending assignments and migrations),
and `Targets.full(peers, views)` computes it from scratch, where each view
carries the prior in `pending`/`moving_out`.  The guarantee, tested by
hypothesis: for any sequence of changes,
    index.apply_changes(changes) == Targets.full(all inputs after the change,
                                                 with the prior before it)
and on an empty index, apply_changes(everything) == full(everything).
Two nodes that apply the same blocks therefore compute the same targets,
whatever order they inserted things in.  Each call computes:
    A. per shard: kept holders and releases (local to the shard);
    B. over-capacity peers drop their pending fetches;
    C. fills, in priority order, against the loads left by A and B;
    D. rebalance, if nothing is below target.
Every shard is left at a fixed point of A, so an untouched shard needs no work:
a call visits the changed shards, the shards of changed peers, and the shards
that are still short of target.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

# Capacity band: a peer is passed over for a new copy if that copy would put
# it above (1 + EPS) times its fair share of bytes.  Rebalance fills peers
# below (1 - EPS) times their fair share.
EPS_NUM = 5
EPS_DEN = 100
# Hysteresis: releases start above target + SLACK, so a race that leaves one
# extra copy does not cause churn.
SLACK = 1
# Fills pick the least loaded of the first need + EXTRA_CHOICES candidates
# inside the band ("power of two choices"): the band caps the top, the extra
# choice lifts the bottom, which ring-order-first alone leaves uneven.
EXTRA_CHOICES = 1
# Rebalance rate: moves started per call, migrations in flight at once, and
# how many over-full peers one move may look at.
REBALANCE_MOVES_PER_CALL = 4
REBALANCE_MAX_IN_FLIGHT = 16
REBALANCE_MAX_SOURCES = 8
# Ring weighting: one virtual point per VNODE_BYTES of declared capacity,
# clamped so tiny peers still spread and huge ones do not bloat the ring.
VNODE_BYTES = 1 << 30
MIN_VNODES = 16
MAX_VNODES = 256
# Fixed-point scale for load/capacity ratios (exact integer comparison keys).
RATIO_SHIFT = 64
POINT_BYTES = 8

DOMAIN_VNODE = b"cairn/targets/vnode/"
DOMAIN_SHARD = b"cairn/targets/shard/"
DOMAIN_RANK = b"cairn/targets/rank/"

NO_PEER = b""


class DuplicateChange(ValueError):
    """One call named the same peer or shard twice: which one wins would
    depend on input order, so the call is refused."""


@dataclass(frozen=True, slots=True)
class PeerView:
    """What targets need to know about a peer."""

    peer_id: bytes  # 32 bytes
    capacity: int  # declared capacity, bytes
    rank_seed: bytes  # chain randomness at the peer's registration
    eligible: bool  # active, not suspended or excluded


@dataclass(frozen=True, slots=True)
class ShardView:
    """What targets need to know about a shard.

    `pending` and `moving_out` are the sticky part of the targets (peers
    told to fetch and not yet claimed; a verified holder being migrated away
    by rebalance).  They are read only when the index has no record of the
    shard (from-scratch `full`, or loading a snapshot); afterwards the
    index's own record is authoritative.
    """

    shard_id: bytes  # 32 bytes
    size: int  # bytes
    target: int  # redundancy
    verified: tuple[bytes, ...] = ()  # proven within the audit window
    claimed: tuple[bytes, ...] = ()  # claimed, not yet verified
    pending: tuple[bytes, ...] = ()
    moving_out: bytes = NO_PEER


@dataclass(frozen=True, slots=True)
class Assignment:
    """Targets for one shard; all peer tuples sorted."""

    shard_id: bytes
    assigned: tuple[bytes, ...]  # should hold it
    fetching: tuple[bytes, ...]  # assigned, neither verified nor claimed: must fetch
    releasable: tuple[bytes, ...]  # verified holders that may drop it


@dataclass(frozen=True, slots=True)
class Kept:
    """Step A for one shard: who keeps a slot before any fill."""

    holders: tuple[bytes, ...]  # sorted
    releasable: tuple[bytes, ...]  # sorted
    moving_out: bytes  # live migration source, or NO_PEER
    counted: int  # verified copies on eligible peers


# ---------------------------------------------------------------- hashing


def get_point(data: bytes) -> int:
    """A ring position: the first POINT_BYTES of SHA-256, big-endian."""
    return int.from_bytes(hashlib.sha256(data).digest()[:POINT_BYTES], "big")


def get_shard_point(shard_id: bytes) -> int:
    return get_point(DOMAIN_SHARD + shard_id)


def get_vnode_count(capacity: int) -> int:
    """Virtual points for a peer: proportional to capacity, clamped."""
    return max(MIN_VNODES, min(MAX_VNODES, capacity // VNODE_BYTES))


def compute_vnode_points(peer: PeerView) -> tuple[int, ...]:
    # Keyed by rank_seed (chain randomness at registration): a peer cannot
    # choose its positions by grinding keys.
    prefix = DOMAIN_VNODE + peer.peer_id + peer.rank_seed
    return tuple(
        get_point(prefix + i.to_bytes(4, "big"))
        for i in range(get_vnode_count(peer.capacity))
    )


def compute_rank(shard_id: bytes, peer: PeerView) -> int:
    """Rendezvous rank of a peer for a shard; higher ranks keep copies longer."""
    data = DOMAIN_RANK + shard_id + peer.peer_id + peer.rank_seed
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


# ------------------------------------------------------------ predicates


def is_eligible(peer: PeerView | None) -> bool:
    return peer is not None and peer.eligible and peer.capacity > 0


def get_ratio_key(load: int, capacity: int) -> int:
    """load / capacity as an exact-enough integer (fixed point, floor)."""
    return (load << RATIO_SHIFT) // capacity


def is_within_band(load: int, capacity: int, demand: int, total_capacity: int) -> bool:
    """load <= (1 + EPS) * fair share, fair share = demand * capacity / total."""
    return load * total_capacity * EPS_DEN <= (EPS_DEN + EPS_NUM) * demand * capacity


def is_under_full(load: int, capacity: int, demand: int, total_capacity: int) -> bool:
    """load < (1 - EPS) * fair share: a rebalance destination."""
    return load * total_capacity * EPS_DEN < (EPS_DEN - EPS_NUM) * demand * capacity


def is_at_most_fair(load: int, capacity: int, demand: int, total_capacity: int) -> bool:
    return load * total_capacity <= demand * capacity


# ------------------------------------------------------- step A: one shard


def get_counted(peer_ids: Iterable[bytes], peers: Mapping[bytes, PeerView]) -> tuple[bytes, ...]:
    """Distinct peers that are eligible, sorted."""
    return tuple(sorted({p for p in peer_ids if is_eligible(peers.get(p))}))


def get_lowest_ranked(
    shard_id: bytes, candidates: tuple[bytes, ...], count: int, peers: Mapping[bytes, PeerView]
) -> tuple[bytes, ...]:
    ranked = sorted(candidates, key=lambda p: (compute_rank(shard_id, peers[p]), p))
    return tuple(ranked[:count])


def get_migration_state(
    view: ShardView, verified: tuple[bytes, ...], in_flight: bool, moving: bytes
) -> tuple[bool, bool]:
    """(done, active) for a rebalance migration away from `moving`."""
    if moving == NO_PEER or moving not in verified:
        return False, False
    if len(verified) - 1 >= max(view.target, 1):
        return True, False  # replacement proven: the source may go
    return False, in_flight


def compute_kept(
    view: ShardView, pending: Iterable[bytes], moving: bytes, peers: Mapping[bytes, PeerView]
) -> Kept:
    """Who keeps a slot on this shard, and who may drop it (no fills)."""
    verified = get_counted(view.verified, peers)
    claimed = tuple(p for p in get_counted(view.claimed, peers) if p not in verified)
    flying = tuple(
        p for p in get_counted(pending, peers) if p not in verified and p not in claimed
    )
    done, active = get_migration_state(view, verified, bool(claimed or flying), moving)
    released = (moving,) if done else ()
    staying = tuple(p for p in verified if p not in released)
    if len(staying) > view.target + SLACK:
        # Down to target, never below one copy.
        excess = get_lowest_ranked(view.shard_id, staying, len(staying) - max(view.target, 1), peers)
        released += excess
        staying = tuple(p for p in staying if p not in excess)
    room = max(0, view.target + int(active) - len(staying) - len(claimed))
    if len(flying) > room:
        dropped = get_lowest_ranked(view.shard_id, flying, len(flying) - room, peers)
        flying = tuple(p for p in flying if p not in dropped)
    holders = tuple(sorted(staying + claimed + flying))
    return Kept(
        # Share the view's tuple when equal (the steady state): memory.
        holders=view.verified if holders == view.verified else holders,
        releasable=tuple(sorted(released)),
        # A finished migration keeps its marker until the source drops the
        # copy, so the release is stable from one call to the next.
        moving_out=moving if done or active else NO_PEER,
        counted=len(verified),
    )


def get_priority(view: ShardView, counted: int) -> tuple[int, int, int, bytes]:
    """Fill order: fewest verified copies, then largest deficit, then larger
    shards (bin packing balances better largest-first), then shard id."""
    return (counted, counted - view.target, -view.size, view.shard_id)


def get_names(view: ShardView, assigned: Iterable[bytes]) -> set[bytes]:
    """Every peer a shard mentions: its row in the per-peer index."""
    return set(view.verified) | set(view.claimed) | set(assigned)


def get_fetching(view: ShardView, assigned: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(p for p in assigned if p not in view.verified and p not in view.claimed)


def get_replication_deficit(shards: Iterable[ShardView]) -> int:
    """Missing verified copies summed over shards (eligibility not applied)."""
    return sum(max(0, s.target - len(set(s.verified))) for s in shards)


def get_peer_tasks(
    assignments: Iterable[Assignment], peer_id: bytes
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(shards to fetch, shards it may drop), each sorted by shard id."""
    to_fetch, may_drop = [], []
    for a in assignments:
        if peer_id in a.fetching:
            to_fetch.append(a.shard_id)
        if peer_id in a.releasable:
            may_drop.append(a.shard_id)
    return tuple(sorted(to_fetch)), tuple(sorted(may_drop))


def require_distinct(ids: Iterable[bytes]) -> None:
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise DuplicateChange("the same id appears twice in one call")


# ------------------------------------------------------------------ ring


class Ring:
    """Sorted virtual points of the eligible peers (parallel lists)."""

    __slots__ = ("points", "owners", "peer_count")

    def __init__(self) -> None:
        self.points: list[int] = []
        self.owners: list[bytes] = []
        self.peer_count = 0

    def rebuild(self, peers: Iterable[PeerView]) -> None:
        pairs = sorted((pt, p.peer_id) for p in peers for pt in compute_vnode_points(p))
        self.points = [pt for pt, _ in pairs]
        self.owners = [owner for _, owner in pairs]
        self.peer_count = len({owner for _, owner in pairs})

    def get_slot(self, point: int, owner: bytes) -> int:
        # Ties on a 64-bit point are broken by peer id, as in rebuild().
        i = bisect_left(self.points, point)
        while i < len(self.points) and self.points[i] == point and self.owners[i] < owner:
            i += 1
        return i

    def add(self, peer: PeerView) -> None:
        for pt in compute_vnode_points(peer):
            i = self.get_slot(pt, peer.peer_id)
            self.points.insert(i, pt)
            self.owners.insert(i, peer.peer_id)
        self.peer_count += 1

    def remove(self, peer: PeerView) -> None:
        for pt in compute_vnode_points(peer):
            i = self.get_slot(pt, peer.peer_id)
            del self.points[i]
            del self.owners[i]
        self.peer_count -= 1

    def walk(self, point: int) -> Iterator[bytes]:
        """Distinct peers clockwise from `point`: the shard's preference order."""
        n = len(self.points)
        start = bisect_right(self.points, point)
        seen: set[bytes] = set()
        for k in range(n):
            owner = self.owners[(start + k) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.peer_count:
                    return


# ----------------------------------------------------------------- index

# Above this many peer changes in one call the ring is rebuilt, not patched.
RING_REBUILD_THRESHOLD = 64


class Targets:
    """Incremental targets index.  Mutable, but every call is deterministic:
    the result depends only on the set of inputs, never on their order."""

    __slots__ = (
        "_peers", "_views", "_assigned", "_released", "_moving", "_under",
        "_short", "_by_peer", "_load", "_stored", "_total_capacity",
        "_demand", "_ring",
    )

    def __init__(self) -> None:
        self._peers: dict[bytes, PeerView] = {}
        self._views: dict[bytes, ShardView] = {}
        self._assigned: dict[bytes, tuple[bytes, ...]] = {}
        self._released: dict[bytes, tuple[bytes, ...]] = {}  # sparse
        self._moving: dict[bytes, bytes] = {}  # sparse: live migrations
        self._under: set[bytes] = set()  # counted verified < target
        self._short: set[bytes] = set()  # assigned < target after fills
        self._by_peer: dict[bytes, set[bytes]] = {}  # peer -> shards naming it
        self._load: dict[bytes, int] = {}  # assigned bytes
        self._stored: dict[bytes, int] = {}  # verified bytes
        self._total_capacity = 0  # over eligible peers
        self._demand = 0  # sum of size * target
        self._ring = Ring()

    # ------------------------------------------------------------ public

    @classmethod
    def full(cls, peers: Iterable[PeerView], shards: Iterable[ShardView]) -> "Targets":
        """From scratch; the prior is read from each view's pending/moving_out."""
        index = cls()
        index.apply_changes(peers, shards)
        return index

    def apply_changes(
        self,
        changed_peers: Iterable[PeerView] = (),
        changed_shards: Iterable[ShardView] = (),
        removed_shards: Iterable[bytes] = (),
    ) -> tuple[Assignment, ...]:
        """Apply one block's changes; return the assignments that changed,
        sorted by shard id (removed shards are not reported)."""
        changed_peers, changed_shards = list(changed_peers), list(changed_shards)
        require_distinct(p.peer_id for p in changed_peers)
        require_distinct(v.shard_id for v in changed_shards)
        before: dict[bytes, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        prior: dict[bytes, tuple[tuple[bytes, ...], bytes]] = {}
        dirty, touched = self._update_peers(changed_peers)
        for shard_id in sorted(set(removed_shards)):
            if shard_id in self._views:
                self._detach(shard_id, before)
                del self._views[shard_id]
                dirty.discard(shard_id)
        for view in sorted(changed_shards, key=lambda v: v.shard_id):
            if view.shard_id in self._views:
                prior[view.shard_id] = self._detach(view.shard_id, before)
            else:
                prior[view.shard_id] = (view.pending, view.moving_out)
                before.setdefault(view.shard_id, ((), ()))
            self._views[view.shard_id] = view
            dirty.add(view.shard_id)
        dirty |= self._short
        for shard_id in dirty:  # step A: independent per shard, order-free
            self._keep(shard_id, prior, before, touched)
        dirty |= self._drop_over_capacity(touched, before)  # step B
        self._fill_all(dirty)  # step C
        self._rebalance(before)  # step D
        return self._get_changes(before)

    def get_assignment(self, shard_id: bytes) -> Assignment:
        view = self._views[shard_id]
        assigned = self._assigned[shard_id]
        return Assignment(shard_id, assigned, get_fetching(view, assigned),
                          self._released.get(shard_id, ()))

    def get_assignments(self) -> tuple[Assignment, ...]:
        return tuple(self.get_assignment(s) for s in sorted(self._views))

    def get_peer_tasks(self, peer_id: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        rows = self._by_peer.get(peer_id, ())
        return get_peer_tasks((self.get_assignment(s) for s in rows), peer_id)

    def get_peer_load(self, peer_id: bytes) -> tuple[int, int]:
        """(verified bytes stored, bytes assigned)."""
        return self._stored.get(peer_id, 0), self._load.get(peer_id, 0)

    def get_replication_deficit(self) -> int:
        """Missing verified copies, counting only eligible peers."""
        return sum(
            self._views[s].target - len(get_counted(self._views[s].verified, self._peers))
            for s in self._under
        )

    def get_snapshot_views(self) -> tuple[ShardView, ...]:
        """Views carrying this index's prior (pending, moving_out): what the
        chain state stores so `full` can rebuild exactly this index."""
        out = []
        for shard_id in sorted(self._views):
            view = self._views[shard_id]
            pending = get_fetching(view, self._assigned[shard_id])
            moving = self._moving.get(shard_id, NO_PEER)
            out.append(ShardView(view.shard_id, view.size, view.target, view.verified,
                                 view.claimed, pending, moving))
        return tuple(out)

    def get_state(self) -> tuple:
        """Everything observable, canonical: for equality checks in tests."""
        loads = tuple(sorted((p, l) for p, l in self._load.items() if l))
        return (self.get_assignments(), tuple(sorted(self._moving.items())), loads,
                tuple(sorted(self._short)), self._demand, self._total_capacity)

    # ------------------------------------------------------------- peers

    def _update_peers(self, changed: list[PeerView]) -> tuple[set[bytes], set[bytes]]:
        """Register peer changes; return (dirty shards, touched peers)."""
        dirty: set[bytes] = set()
        touched: set[bytes] = set()
        rebuild = len(changed) > RING_REBUILD_THRESHOLD
        for peer in sorted(changed, key=lambda p: p.peer_id):
            old = self._peers.get(peer.peer_id)
            if old == peer:
                continue
            if is_eligible(old):
                self._total_capacity -= old.capacity
                if not rebuild:
                    self._ring.remove(old)
            self._peers[peer.peer_id] = peer
            if is_eligible(peer):
                self._total_capacity += peer.capacity
                if not rebuild:
                    self._ring.add(peer)
            touched.add(peer.peer_id)
            dirty |= self._by_peer.get(peer.peer_id, set())
        if rebuild:
            self._ring.rebuild(p for p in self._peers.values() if is_eligible(p))
        return dirty, touched

    # ------------------------------------------------------- bookkeeping

    def _add_row(self, peer_id: bytes, shard_id: bytes) -> None:
        self._by_peer.setdefault(peer_id, set()).add(shard_id)

    def _drop_row(self, peer_id: bytes, shard_id: bytes) -> None:
        rows = self._by_peer.get(peer_id)
        if rows is not None:
            rows.discard(shard_id)
            if not rows:
                del self._by_peer[peer_id]

    def _add_load(self, peer_id: bytes, delta: int) -> None:
        self._load[peer_id] = self._load.get(peer_id, 0) + delta

    def _detach(self, shard_id: bytes, before: dict) -> tuple[tuple[bytes, ...], bytes]:
        """Remove a shard's contributions; return its prior (pending, moving)."""
        view = self._views[shard_id]
        assigned = self._assigned.pop(shard_id)
        released = self._released.pop(shard_id, ())
        before.setdefault(shard_id, (assigned, released))
        for p in get_names(view, assigned):
            self._drop_row(p, shard_id)
        for p in assigned:
            self._add_load(p, -view.size)
        for p in set(view.verified):
            self._stored[p] -= view.size
        self._demand -= view.size * view.target
        self._under.discard(shard_id)
        self._short.discard(shard_id)
        return get_fetching(view, assigned), self._moving.pop(shard_id, NO_PEER)

    def _attach(self, shard_id: bytes, kept: Kept) -> None:
        view = self._views[shard_id]
        self._assigned[shard_id] = kept.holders
        if kept.releasable:
            self._released[shard_id] = kept.releasable
        if kept.moving_out != NO_PEER:
            self._moving[shard_id] = kept.moving_out
        for p in get_names(view, kept.holders):
            self._add_row(p, shard_id)
        for p in kept.holders:
            self._add_load(p, view.size)
        for p in set(view.verified):
            self._stored[p] = self._stored.get(p, 0) + view.size
        self._demand += view.size * view.target
        if kept.counted < view.target:
            self._under.add(shard_id)

    # ----------------------------------------------------- steps A and B

    def _keep(self, shard_id: bytes, prior: dict, before: dict, touched: set[bytes]) -> None:
        if shard_id not in prior:
            prior[shard_id] = self._detach(shard_id, before)
        pending, moving = prior[shard_id]
        kept = compute_kept(self._views[shard_id], pending, moving, self._peers)
        self._attach(shard_id, kept)
        # A new holder (a claim out of the blue) or a changed size may push a
        # peer over capacity: step B must look at every holder.
        touched.update(kept.holders)

    def _drop_over_capacity(self, touched: set[bytes], before: dict) -> set[bytes]:
        """Peers over their declared capacity lose all their pending fetches
        (the state-based rule: same result whichever shards changed)."""
        dropped: set[bytes] = set()
        for peer_id in sorted(touched):
            peer = self._peers.get(peer_id)
            if peer is None or self._load.get(peer_id, 0) <= peer.capacity:
                continue
            for shard_id in sorted(self._by_peer.get(peer_id, ())):
                view = self._views[shard_id]
                if peer_id in get_fetching(view, self._assigned[shard_id]):
                    self._unassign(shard_id, peer_id, before)
                    dropped.add(shard_id)
        return dropped

    def _unassign(self, shard_id: bytes, peer_id: bytes, before: dict) -> None:
        """Withdraw one pending fetch by re-running step A without it, so the
        shard stays a fixed point of step A (migration marker included)."""
        pending, moving = self._detach(shard_id, before)
        remaining = tuple(p for p in pending if p != peer_id)
        self._attach(shard_id, compute_kept(self._views[shard_id], remaining, moving, self._peers))

    # ------------------------------------------------------------ step C

    def _fill_all(self, candidates: set[bytes]) -> None:
        short = []
        for shard_id in candidates:
            view = self._views.get(shard_id)
            if view is not None and len(self._assigned[shard_id]) < view.target:
                counted = len(get_counted(view.verified, self._peers))
                short.append(get_priority(view, counted))
        for *_, shard_id in sorted(short):
            self._fill(shard_id)

    def _fill(self, shard_id: bytes) -> None:
        view = self._views[shard_id]
        assigned = self._assigned[shard_id]
        exclude = get_names(view, assigned) | set(self._released.get(shard_id, ()))
        chosen = self._choose(view, view.target - len(assigned), exclude)
        for p in chosen:
            self._add_load(p, view.size)
            self._add_row(p, shard_id)
        self._assigned[shard_id] = tuple(sorted(assigned + chosen))
        if len(self._assigned[shard_id]) < view.target:
            self._short.add(shard_id)

    def _choose(self, view: ShardView, need: int, exclude: set[bytes]) -> tuple[bytes, ...]:
        """Of the first need + EXTRA_CHOICES peers in the shard's order inside
        the band, the `need` relatively least loaded; if too few are inside,
        the relatively least loaded peers with room make up the rest."""
        inside: list[tuple[int, int, bytes]] = []
        outside: list[tuple[int, int, bytes]] = []
        order = self._ring.walk(get_shard_point(view.shard_id)) if need > 0 else iter(())
        for position, peer_id in enumerate(order):
            if peer_id in exclude:
                continue
            capacity = self._peers[peer_id].capacity
            load = self._load.get(peer_id, 0) + view.size
            if load > capacity:
                continue
            key = (get_ratio_key(load, capacity), position, peer_id)
            if is_within_band(load, capacity, self._demand, self._total_capacity):
                inside.append(key)
                if len(inside) == need + EXTRA_CHOICES:
                    break
            else:
                outside.append(key)
        chosen = sorted(inside)[:need] + sorted(outside)[: max(0, need - len(inside))]
        return tuple(p for *_, p in chosen)

    # ------------------------------------------------------------ step D

    def _rebalance(self, before: dict) -> None:
        """Move healthy copies toward under-full peers: only when no shard is
        below target, at most a few moves per call and in flight."""
        if self._under or self._ring.peer_count < 2 or self._demand == 0:
            return
        moves = min(REBALANCE_MOVES_PER_CALL, REBALANCE_MAX_IN_FLIGHT - len(self._moving))
        for _ in range(max(0, moves)):
            if not self._rebalance_once(before):
                return

    def _get_ratio_keys(self) -> Iterator[tuple[int, bytes]]:
        for p in self._peers.values():
            if is_eligible(p):
                yield get_ratio_key(self._load.get(p.peer_id, 0), p.capacity), p.peer_id

    def _rebalance_once(self, before: dict) -> bool:
        dst_ratio, dst = min(self._get_ratio_keys())
        peer = self._peers[dst]
        if not is_under_full(self._load.get(dst, 0), peer.capacity, self._demand,
                             self._total_capacity):
            return False
        for src_ratio, src in heapq.nlargest(REBALANCE_MAX_SOURCES, self._get_ratio_keys()):
            if src_ratio <= dst_ratio:
                return False
            shard_id = self._get_movable_shard(src, dst)
            if shard_id is not None:
                self._start_migration(shard_id, src, dst, before)
                return True
        return False

    def _get_movable_shard(self, src: bytes, dst: bytes) -> bytes | None:
        """Largest shard of src whose move keeps dst at most at its fair share
        and leaves src no less loaded (relatively) than dst: moves converge."""
        src_cap, dst_cap = self._peers[src].capacity, self._peers[dst].capacity
        src_load, dst_load = self._load.get(src, 0), self._load.get(dst, 0)
        rows = sorted((-self._views[s].size, s) for s in self._by_peer.get(src, ()))
        for neg_size, shard_id in rows:
            size, view = -neg_size, self._views[shard_id]
            # Only a shard at exactly target, all verified, with no extra
            # copy being released: the migration is then the shard's only
            # transfer, and step A keeps it as such.  (An extra verified copy
            # would make step A count the migration as already done.)
            if (shard_id in self._moving or shard_id in self._released
                    or src not in view.verified
                    or len(self._assigned[shard_id]) != view.target
                    or any(p not in view.verified for p in self._assigned[shard_id])
                    or src not in self._assigned[shard_id]
                    or dst in get_names(view, self._assigned[shard_id])
                    or dst in self._released.get(shard_id, ())
                    or dst_load + size > dst_cap
                    or not is_at_most_fair(dst_load + size, dst_cap, self._demand,
                                           self._total_capacity)
                    or (src_load - size) * dst_cap < (dst_load + size) * src_cap):
                continue
            return shard_id
        return None

    def _start_migration(self, shard_id: bytes, src: bytes, dst: bytes, before: dict) -> None:
        assigned = self._assigned[shard_id]
        before.setdefault(shard_id, (assigned, self._released.get(shard_id, ())))
        self._assigned[shard_id] = tuple(sorted(assigned + (dst,)))
        self._moving[shard_id] = src
        self._add_load(dst, self._views[shard_id].size)
        self._add_row(dst, shard_id)

    # ----------------------------------------------------------- changes

    def _get_changes(self, before: dict) -> tuple[Assignment, ...]:
        out = []
        for shard_id in sorted(before):
            if shard_id not in self._views:
                continue
            now = (self._assigned[shard_id], self._released.get(shard_id, ()))
            if now != before[shard_id]:
                out.append(self.get_assignment(shard_id))
        return tuple(out)


def compute_targets(peers: Iterable[PeerView], shards: Iterable[ShardView]) -> tuple[Assignment, ...]:
    """targets(state) -> assignments, from scratch, sorted by shard id."""
    return Targets.full(peers, shards).get_assignments()
