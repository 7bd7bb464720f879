"""Benchmark chain/targets.py at network scale.

    python -m tools.bench.targets [--json] [--quick] [--peers N --shards M]

Default 10,000 peers x 1,000,000 shards (target 3); --quick is 1,000 x 100,000.
Reports: full_s (from scratch), settle_s (every fetch proven: a 10^6-shard
incremental call), incremental_ms (median block touching 100 shards),
leave_ms (median of three single-peer leaves), movement_ratio (worst of
the three: bytes to re-create / minimum), balance_max_over_mean (assigned bytes, equal capacities),
peak_rss_mb (includes the benchmark's own copies of the input views).  Stops by itself: a --budget (seconds, default 540) skips the
remaining phases once exceeded.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import resource
import statistics
import sys
import time

from chain.targets import PeerView, ShardView, Targets

SHARD_MIN = 16 << 20
SHARD_MAX = 64 << 20
TARGET = 3
# Capacity: the fair share plus 60 % headroom, so the band, not capacity, binds.
HEADROOM_NUM, HEADROOM_DEN = 160, 100
BLOCK_SHARDS = 100
BLOCKS = 20


def h(tag: bytes, i: int) -> bytes:
    return hashlib.sha256(tag + i.to_bytes(8, "big")).digest()


def make_world(n_peers: int, n_shards: int, seed: int) -> tuple[list[PeerView], list[ShardView]]:
    rnd = random.Random(seed)
    sizes = [rnd.randrange(SHARD_MIN, SHARD_MAX) for _ in range(n_shards)]
    capacity = sum(sizes) * TARGET * HEADROOM_NUM // HEADROOM_DEN // n_peers
    peers = [PeerView(h(b"peer", i), capacity, h(b"seed", i), True) for i in range(n_peers)]
    shards = [ShardView(h(b"shard", i), s, TARGET) for i, s in enumerate(sizes)]
    return peers, shards


def get_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def get_balance(t: Targets, peers: list[PeerView]) -> float:
    loads = [t.get_peer_load(p.peer_id)[1] for p in peers if p.eligible]
    return max(loads) * len(loads) / sum(loads)


def settle_all(t: Targets) -> list[ShardView]:
    """Every assigned peer proves its copy; released copies are dropped."""
    return [ShardView(v.shard_id, v.size, v.target,
                      tuple(sorted(set(t.get_assignment(v.shard_id).assigned))))
            for v in t.get_snapshot_views()]


def make_block(views: dict, ids: list[bytes], peers: list[PeerView],
               rnd: random.Random) -> list[ShardView]:
    """100 shards touched: each loses one verified copy, or gets a claim."""
    out = []
    for shard_id in rnd.sample(ids, BLOCK_SHARDS):
        v = views[shard_id]
        if v.verified and rnd.random() < 0.5:
            out.append(ShardView(v.shard_id, v.size, v.target, v.verified[1:], v.claimed))
        else:
            extra = rnd.choice(peers).peer_id
            out.append(ShardView(v.shard_id, v.size, v.target, v.verified, (extra,)))
    return out


def measure_leave(t: Targets, views: dict, gone: PeerView) -> tuple[float, float]:
    """(movement ratio, ms) for one peer leaving a network where `views`
    (settled: no fetch pending) is the current input."""
    minimum = sum(v.size for v in views.values()
                  if gone.peer_id in v.verified and len(v.verified) - 1 < v.target)
    start = time.perf_counter()
    changes = t.apply_changes([PeerView(gone.peer_id, gone.capacity, gone.rank_seed, False)], ())
    ms = (time.perf_counter() - start) * 1000
    moved = sum(views[a.shard_id].size * len(a.fetching) for a in changes)
    return (moved / minimum if minimum else 1.0), ms


def freeze_heap() -> None:
    """A long-lived node freezes its big, immortal index out of the cyclic GC;
    otherwise a gen-2 collection (~10^7 objects) lands in some block."""
    gc.collect()
    gc.freeze()


def run(n_peers: int, n_shards: int, budget_s: float, seed: int = 1) -> dict:
    began = time.perf_counter()
    out: dict = {"peers": n_peers, "shards": n_shards, "target": TARGET}
    peers, shards = make_world(n_peers, n_shards, seed)
    start = time.perf_counter()
    t = Targets.full(peers, shards)
    out["full_s"] = round(time.perf_counter() - start, 2)
    out["balance_max_over_mean"] = round(get_balance(t, peers), 4)
    del shards
    if time.perf_counter() - began > budget_s:
        out["skipped"] = "settle, incremental, leave: over budget"
        out["peak_rss_mb"] = round(get_peak_rss_mb(), 1)
        return out
    settled = settle_all(t)
    start = time.perf_counter()
    t.apply_changes((), settled)
    out["settle_s"] = round(time.perf_counter() - start, 2)
    views = {v.shard_id: v for v in settled}
    del settled
    freeze_heap()
    rnd = random.Random(seed)
    ids = sorted(views)
    times = []
    for _ in range(BLOCKS):
        block = make_block(views, ids, peers, rnd)
        start = time.perf_counter()
        t.apply_changes((), block)
        times.append((time.perf_counter() - start) * 1000)
        views.update((v.shard_id, v) for v in block)
    out["incremental_ms"] = round(statistics.median(times), 2)
    out["incremental_ms_max"] = round(max(times), 2)
    # Leaves from a fully settled state (so the minimum is exact), each
    # settled again before the next; the time is the median of three.
    leaves = []
    for k in range(3):
        settled = settle_all(t)
        t.apply_changes((), settled)
        views = {v.shard_id: v for v in settled}
        del settled
        freeze_heap()
        leaves.append(measure_leave(t, views, peers[len(peers) // 2 + k]))
    out["movement_ratio"] = round(max(ratio for ratio, _ in leaves), 4)
    out["leave_ms"] = round(statistics.median(ms for _, ms in leaves), 2)
    out["total_s"] = round(time.perf_counter() - began, 1)
    out["peak_rss_mb"] = round(get_peak_rss_mb(), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000 peers x 100,000 shards")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.peers, args.shards = 1_000, 100_000
    result = run(args.peers, args.shards, args.budget)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
