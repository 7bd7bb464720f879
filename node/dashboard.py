"""The storage peer's DashboardProvider: disk, shards, challenges, reputation, system."""
from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chain.state import get_collection, get_peer
from node.chainnode import now_ms
from node.explorer import STATUS_NAMES
from node.web.api import make_web_app
from node.web.metrics import system_snapshot
from node.web.provider import Metric
from storage.index import ShardState

if TYPE_CHECKING:
    from node.peer import PeerNode


class PeerDashboard:
    def __init__(self, node: "PeerNode") -> None:
        self.node = node
        self.head_changed = asyncio.Condition()

    def _shard_state(self, rec) -> str:
        if rec.state == ShardState.FETCHING:
            return "downloading"
        if rec.state == ShardState.DROPPING:
            return "releasing"
        if rec.state == ShardState.LOST:
            return "lost"      # damaged or gone on disk; being dropped (and maybe re-fetched)
        holder = self.node.holder_entry(bytes.fromhex(rec.info_hash), rec.shard)
        if holder is None:
            return "held"
        return "verified" if holder.verified_height else "held"

    def _failure(self, row: dict[str, Any], now: int) -> dict[str, Any]:
        """Add why a download failed (and, while it waits, state "failed" and when it is
        retried) to a shard row."""
        failure = self.node.fetch_failures.get((row["collection"], row["shard"]))
        if failure is not None:
            row["error"] = f"{failure.cause}: {failure.detail}"
            if row["state"] == "assigned":
                row["state"] = "failed"
                row["error_cause"] = failure.cause
                row["retry_in_s"] = max(0, (failure.retry_at - now) // 1000)
        return row

    def _shards(self) -> list[dict[str, Any]]:
        node = self.node
        out = []
        now = now_ms()
        torrents = set(node.torrents.torrents())
        for rec in node.index.shards():
            coll = get_collection(node.state, bytes.fromhex(rec.info_hash))
            have, total, down, up = (node.torrents.progress(rec.info_hash, rec.pieces)
                                     if rec.info_hash in torrents else (0, len(rec.pieces), 0, 0))
            if rec.state in (ShardState.HELD, ShardState.DROPPING):
                have = total   # complete when it was marked held (libtorrent reads 0 while re-adding a torrent)
            elif rec.state == ShardState.LOST:
                have = 0
            progress = have / total if total else 0.0
            if have == total:
                down = 0   # libtorrent's rate is per torrent: only a shard still downloading shows it
            remaining = rec.size * (1 - progress)
            row = {"collection": rec.info_hash, "name": coll.name if coll else "", "shard": rec.shard,
                   "state": self._shard_state(rec), "bytes": rec.size, "progress": progress,
                   "down_rate": down, "up_rate": up,
                   "eta_s": int(remaining / down) if down and progress < 1 else None}
            if rec.state == ShardState.LOST:
                row["error"] = rec.reason
            out.append(self._failure(row, now))
        fetch, _ = node.tracker.get_tasks(node.me)
        known = {(s["collection"], s["shard"]) for s in out}
        for info_hash, index in fetch:
            if (info_hash.hex(), index) not in known:
                coll = get_collection(node.state, info_hash)
                out.append(self._failure({
                    "collection": info_hash.hex(), "name": coll.name if coll else "", "shard": index,
                    "state": "assigned", "bytes": coll.shards[index].length if coll else 0,
                    "progress": 0.0, "down_rate": 0, "up_rate": 0, "eta_s": None}, now))
        return out

    def status(self) -> dict[str, Any]:
        node = self.node
        peer = get_peer(node.state, node.me)
        used = node.index.held_bytes()
        disk = shutil.disk_usage(node.data_dir)
        return {
            "role": "peer", "node_id": node.me.hex(), "chain_id": node.genesis.chain_id,
            "head_height": node.height, "syncing": node.syncer.is_syncing,
            "disk": {"allocated": node.cfg.capacity, "used": used,
                     "free": max(0, min(node.cfg.capacity - used, disk.free))},  # free of the allocation
            "shards": self._shards(),
            "transfer": {"downloaded": node.torrents.downloaded_bytes()},   # payload bytes since start
            "self_check": dict(node.self_checks),
            "challenges": {"answered": node.challenge_stats["answered"],
                           "passed": getattr(peer, "proofs_passed", 0) if peer else 0,
                           "missed": getattr(peer, "proofs_missed", 0) if peer else 0,
                           "failed": getattr(peer, "proofs_failed", 0) if peer else 0},
            "reputation_ppm": peer.reputation_ppm if peer else None,
            "thresholds": {"suspend_below_ppm": node.genesis.params.suspend_below_ppm},
            "status": STATUS_NAMES.get(peer.status, "unknown") if peer else "unregistered",
            "system": system_snapshot(),
            "connected_peers": [{"id": p.key.hex(), "address": p.address, "role": p.role}
                                for p in node.transport.peers()],
        }

    def health(self) -> str:
        if self.node.syncer.is_syncing:
            return "syncing"
        return "ready" if self.node.transport.peers() else "not_ready"

    def metrics(self) -> list[Metric]:
        node = self.node
        return [
            Metric("cairn_peer_disk_used_bytes", "gauge", "Bytes of shards held.", node.index.held_bytes()),
            Metric("cairn_peer_disk_allocated_bytes", "gauge", "Declared capacity.", node.cfg.capacity),
            Metric("cairn_peer_challenges_answered_total", "counter", "Challenges answered.",
                   node.challenge_stats["answered"]),
            Metric("cairn_peer_self_checks_total", "counter", "Held shards re-hashed by the self-check.",
                   node.self_checks["checked"]),
            Metric("cairn_peer_shards_lost_total", "counter", "Held shards found damaged or gone on disk.",
                   node.self_checks["lost"]),
            Metric("cairn_peer_fetch_failures", "gauge", "Shard downloads stopped on a file error, waiting to retry.",
                   len(node.fetch_failures)),
            Metric("cairn_head_height", "gauge", "Height of the head block.", node.height),
        ]

    async def notify(self) -> None:
        async with self.head_changed:
            self.head_changed.notify_all()


def make_peer_app(node: "PeerNode") -> web.Application:
    dashboard = PeerDashboard(node)
    node.explorer = dashboard
    return make_web_app(dashboard, role="peer")
