"""The beacon's ExplorerProvider: what the block explorer and the JSON API show.

Everything is read from the beacon's own chain state and store; per-head summaries are
computed once per new head and cached. Views that need history (reputation over time,
proofs per epoch, block intervals) scan a bounded window of recent blocks.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chain.codec import CodecError, decode, encode
from chain.errors import InvalidBlock
from chain.state import (
    ACTIVE, EXCLUDED, LEFT, SUSPENDED, Overlay, get_chain_info, get_collection, get_peer, get_peer_holdings,
    get_shard_holders, get_validators, iter_prefix,
)
from chain.transition import get_record_payload, process_record
from chain.types import CLAIM, DROP, INVALID, MISS, PASS, Block, Holding, ProofResult, Publish, SignedRecord
from node.cli import get_version
from node.web.api import make_web_app
from node.web.provider import BadRequest, Metric, NotFound

if TYPE_CHECKING:
    from node.beacon import BeaconNode

STATUS_NAMES = {ACTIVE: "active", SUSPENDED: "suspended", EXCLUDED: "excluded", LEFT: "left"}
VERDICT_NAMES = {PASS: "passed", MISS: "missed", INVALID: "failed"}
ONLINE_WINDOW_MS = 15_000
HISTORY_BLOCKS = 500
SOURCES_MAX = 16


def hexify(value: Any) -> Any:
    """Dataclasses to JSON-ready dicts, bytes to hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [hexify(v) for v in value]
    if is_dataclass(value):
        return {f.name: hexify(getattr(value, f.name)) for f in fields(value) if f.name != "torrent"}
    return value


def holder_counts(node: "BeaconNode", holders) -> tuple[list[bytes], list[bytes]]:
    """(verified holders on active peers, claimed-not-verified holders)."""
    verified, claimed = [], []
    for h in holders.holders:
        peer = get_peer(node.state, h.peer)
        if peer is None or peer.status != ACTIVE:
            continue
        (verified if h.verified_height > 0 else claimed).append(h.peer)
    return verified, claimed


class BeaconExplorer:
    def __init__(self, node: "BeaconNode") -> None:
        self.node = node
        self.head_changed = asyncio.Condition()
        self._cache_hash: bytes | None = None
        self._summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ summaries

    def _collections(self) -> list[tuple[bytes, Any]]:
        return [(k[len(b"collection/"):], v) for k, v in iter_prefix(self.node.state, b"collection/")]

    def _peers(self) -> list[tuple[bytes, Any]]:
        return [(k[len(b"peer/"):], v) for k, v in iter_prefix(self.node.state, b"peer/")]

    def summary(self) -> dict[str, Any]:
        state = self.node.state
        if self._cache_hash == state.head_hash:
            return self._summary
        shards_total = at_target = deficit = stored = target_bytes = 0
        redundancy: dict[str, int] = {}
        per_collection = {}
        for info_hash, coll in self._collections():
            c_at = c_def = 0
            for shard in coll.shards:
                verified, _ = holder_counts(self.node, get_shard_holders(state, info_hash, shard.index))
                n = len(verified)
                shards_total += 1
                c_at += n >= coll.target
                c_def += max(0, coll.target - n)
                stored += n * shard.length
                target_bytes += coll.target * shard.length
                redundancy[str(n)] = redundancy.get(str(n), 0) + 1
            at_target += c_at
            deficit += c_def
            per_collection[info_hash] = (c_at, c_def)
        counts = {"active": 0, "suspended": 0, "excluded": 0}
        for _, peer in self._peers():
            name = STATUS_NAMES.get(peer.status)
            if name in counts:
                counts[name] += 1
        self._summary = dict(shards_total=shards_total, shards_at_target=at_target, replication_deficit=deficit,
                             stored_bytes=stored, target_bytes=target_bytes, redundancy=redundancy,
                             per_collection=per_collection, peer_counts=counts)
        self._cache_hash = state.head_hash
        return self._summary

    # ------------------------------------------------------------------ provider API

    def status(self) -> dict[str, Any]:
        node, s = self.node, self.summary()
        info = get_chain_info(node.state)
        return {
            "chain_id": node.genesis.chain_id, "role": "beacon", "node_id": node.key.public_key.hex(),
            "version": get_version(), "head_height": info.height, "head_hash": node.state.head_hash.hex(),
            "head_time_ms": info.timestamp_ms, "finalized_height": info.height,
            "randomness": info.randomness.hex(), "syncing": node.syncer.is_syncing,
            "validators_total": len(get_validators(node.state)), "validators_online": self.validators_online(),
            "peers_active": s["peer_counts"]["active"], "peers_suspended": s["peer_counts"]["suspended"],
            "peers_excluded": s["peer_counts"]["excluded"], "collections": len(s["per_collection"]),
            "shards_total": s["shards_total"], "shards_at_target": s["shards_at_target"],
            "replication_deficit": s["replication_deficit"], "stored_bytes": s["stored_bytes"],
            "target_bytes": s["target_bytes"],
        }

    def validators_online(self) -> int:
        from node.chainnode import now_ms
        now = now_ms()
        online = 1  # this beacon
        for v in get_validators(self.node.state):
            if v.public_key != self.node.key.public_key and now - self.node.validator_seen_ms.get(v.public_key, 0) < ONLINE_WINDOW_MS:
                online += 1
        return online

    def _block_summary(self, block: Block) -> dict[str, Any]:
        h = block.header
        return {"height": h.height, "hash": block.hash().hex(), "time_ms": h.timestamp_ms, "round": h.round,
                "proposer": h.proposer.hex(), "records": len(block.body), "randomness": h.randomness.hex()}

    def blocks(self, before: int | None, limit: int) -> dict[str, Any]:
        top = self.node.height if before is None else min(before - 1, self.node.height)
        out = []
        h = top
        while h >= 1 and len(out) < limit:
            block = self.node.store.get_block(h)
            if block is not None:
                out.append(self._block_summary(block))
            h -= 1
        return {"blocks": out, "next_before": (out[-1]["height"] if out and out[-1]["height"] > 1 else None)}

    def _find_block(self, ref: str) -> Block:
        block = self.node.store.get_block(int(ref)) if ref.isdigit() else self.node.store.get_block_by_hash(bytes.fromhex(ref))
        if block is None:
            raise NotFound(f"block {ref}")
        return block

    def block(self, ref: str) -> dict[str, Any]:
        block = self._find_block(ref)
        h = block.header
        commit = self.node.store.get_commit(h.height)
        validators = get_validators(self.node.state)
        signers = []
        if commit is not None:
            for cs in commit.signatures:
                v = validators[cs.validator_index] if cs.validator_index < len(validators) else None
                signers.append({"index": cs.validator_index, "public_key": v.public_key.hex() if v else "",
                                "name": v.name if v else ""})
        records = []
        for signed in block.body:
            rec = signed.record
            item = {"kind": type(rec).__name__, **hexify(rec), "signature": signed.signature.hex()}
            if isinstance(rec, Publish):
                item["torrent_bytes"] = len(rec.torrent)
            elif isinstance(rec, Holding):  # enums as lowercase words (docs/api.md)
                item["action"] = {CLAIM: "claim", DROP: "drop"}.get(rec.action, str(rec.action))
            elif isinstance(rec, ProofResult):
                item["verdict"] = {PASS: "pass", MISS: "miss", INVALID: "invalid"}.get(rec.verdict, str(rec.verdict))
            records.append(item)
        return {**self._block_summary(block), "chain_id": h.chain_id, "parent_hash": h.parent_hash.hex(),
                "vrf_proof": h.vrf_proof.hex(), "state_root": h.state_root.hex(), "body_root": h.body_root.hex(),
                "signature": block.signature.hex(),
                "commit": {"round": commit.round if commit else None, "signers": signers},
                "records": records, "raw_hex": encode(block).hex()}

    def validators(self) -> list[dict[str, Any]]:
        from node.chainnode import now_ms
        proposed: dict[bytes, int] = {}
        rounds_missed: dict[bytes, int] = {}
        for block in self._recent_blocks():
            proposed[block.header.proposer] = proposed.get(block.header.proposer, 0) + 1
        evidence: dict[bytes, list] = {}
        for key, entry in iter_prefix(self.node.state, b"evidence/"):
            v = key[len(b"evidence/"):len(b"evidence/") + 32]
            evidence.setdefault(v, []).append({"height": int.from_bytes(key[41:49], "big"),
                                               "recorded_height": entry.recorded_height})
        now = now_ms()
        out = []
        for i, v in enumerate(get_validators(self.node.state)):
            online = v.public_key == self.node.key.public_key or now - self.node.validator_seen_ms.get(v.public_key, 0) < ONLINE_WINDOW_MS
            out.append({"index": i, "public_key": v.public_key.hex(), "vrf_public_key": v.vrf_public_key.hex(),
                        "name": v.name, "address": v.address, "online": online,
                        "proposed": proposed.get(v.public_key, 0), "missed_rounds": rounds_missed.get(v.public_key, 0),
                        "evidence": evidence.get(v.public_key, [])})
        return out

    def _recent_blocks(self, count: int = HISTORY_BLOCKS):
        top = self.node.height
        for h in range(top, max(0, top - count), -1):
            block = self.node.store.get_block(h)
            if block is not None:
                yield block

    def _peer_summary(self, peer_id: bytes, peer) -> dict[str, Any]:
        holdings = get_peer_holdings(self.node.state, peer_id).shards
        used = 0
        for ref in holdings:
            coll = get_collection(self.node.state, ref.collection)
            if coll is not None and ref.shard < len(coll.shards):
                used += coll.shards[ref.shard].length
        return {"id": peer_id.hex(), "status": STATUS_NAMES.get(peer.status, "unknown"),
                "reputation_ppm": peer.reputation_ppm, "capacity": peer.capacity, "used_bytes": used,
                "holdings": len(holdings), "bt_address": peer.bt_address, "api_address": peer.api_address,
                "proofs_passed": peer.proofs_passed, "proofs_missed": peer.proofs_missed,
                "proofs_failed": peer.proofs_failed,
                "joined_height": peer.registered_height}

    def peers(self, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        items = [(pid, p) for pid, p in self._peers() if status is None or STATUS_NAMES.get(p.status) == status]
        return {"peers": [self._peer_summary(pid, p) for pid, p in items[offset:offset + limit]], "total": len(items)}

    def peer(self, peer_id_hex: str) -> dict[str, Any]:
        peer_id = bytes.fromhex(peer_id_hex)
        peer = get_peer(self.node.state, peer_id)
        if peer is None:
            raise NotFound(f"peer {peer_id_hex}")
        out = self._peer_summary(peer_id, peer)
        holdings = []
        for ref in get_peer_holdings(self.node.state, peer_id).shards:
            coll = get_collection(self.node.state, ref.collection)
            holder = next((h for h in get_shard_holders(self.node.state, ref.collection, ref.shard).holders
                           if h.peer == peer_id), None)
            holdings.append({"collection": ref.collection.hex(), "name": coll.name if coll else "", "shard": ref.shard,
                             "state": "verified" if holder and holder.verified_height else "claimed",
                             "verified_height": (holder.verified_height or None) if holder else None})
        proofs, history = [], []
        for block in self._recent_blocks():
            for signed in block.body:
                rec = signed.record
                if isinstance(rec, ProofResult) and rec.peer == peer_id:
                    proofs.append({"height": block.header.height, "challenge_id": rec.challenge_id.hex(),
                                   "collection": "", "shard": None, "leaf": None,
                                   "verdict": VERDICT_NAMES.get(rec.verdict, "failed")})
        history.append({"height": self.node.height, "reputation_ppm": peer.reputation_ppm})
        return {**out, "thresholds": {"suspend_below_ppm": self.node.genesis.params.suspend_below_ppm},
                "holdings": holdings, "reputation_history": self.node.reputation_history(peer_id) or history,
                "proofs": proofs[:200]}

    def _collection_summary(self, info_hash: bytes, coll) -> dict[str, Any]:
        at, deficit = self.summary()["per_collection"].get(info_hash, (0, 0))
        return {"name": coll.name, "info_hash": info_hash.hex(), "info_hash_v1": coll.info_hash_v1.hex(),
                "target": coll.target, "size": sum(s.length for s in coll.shards), "shards": len(coll.shards),
                "shards_at_target": at, "deficit": deficit, "published_height": coll.published_height}

    def collections(self) -> list[dict[str, Any]]:
        return [self._collection_summary(ih, c) for ih, c in self._collections()]

    def _find_collection(self, ref: str) -> tuple[bytes, Any]:
        if re.fullmatch(r"[0-9a-f]{64}", ref):
            coll = get_collection(self.node.state, bytes.fromhex(ref))
            if coll is not None:
                return bytes.fromhex(ref), coll
        for ih, coll in self._collections():
            if coll.name == ref or coll.info_hash_v1.hex() == ref:
                return ih, coll
        raise NotFound(f"collection {ref}")

    def collection(self, ref: str) -> dict[str, Any]:
        info_hash, coll = self._find_collection(ref)
        state = self.node.state
        assigned = self.node.assignments_for(info_hash)
        shards, sources = [], []
        for shard in coll.shards:
            holders = get_shard_holders(state, info_hash, shard.index)
            verified, claimed = holder_counts(self.node, holders)
            last = max((h.verified_height for h in holders.holders), default=0)
            shards.append({"index": shard.index, "file": shard.file_index, "size": shard.length,
                           "target": coll.target, "verified_holders": [p.hex() for p in verified],
                           "claimed": [p.hex() for p in claimed],
                           "assigned": [p.hex() for p in assigned.get(shard.index, ())],
                           "last_proof_height": last or None})
            for p in verified + claimed:
                peer = get_peer(state, p)
                if peer is not None and peer.bt_address not in sources:
                    sources.append(peer.bt_address)
        files = self.node.collection_files(info_hash, coll)
        for item in shards:
            item["file"] = files[item["file"]]["path"] if item["file"] < len(files) else str(item["file"])
        return {**self._collection_summary(info_hash, coll), "files": files, "shards": shards,
                "sources": (sources + [s for s in coll.seeders if s not in sources])[:SOURCES_MAX]}

    def search(self, q: str) -> dict[str, Any]:
        q = q.strip()
        matches = []
        if q.isdigit() and 0 < int(q) <= self.node.height:
            matches.append({"kind": "block", "label": f"block {q}", "ref": q})
        low = q.lower()
        if re.fullmatch(r"[0-9a-f]{64}", low):
            raw = bytes.fromhex(low)
            if self.node.store.get_block_by_hash(raw) is not None:
                block = self.node.store.get_block_by_hash(raw)
                matches.append({"kind": "block", "label": f"block {block.header.height}", "ref": str(block.header.height)})
            if get_peer(self.node.state, raw) is not None:
                matches.append({"kind": "peer", "label": f"peer {low[:16]}…", "ref": low})
            if get_collection(self.node.state, raw) is not None:
                matches.append({"kind": "collection", "label": get_collection(self.node.state, raw).name, "ref": low})
        for ih, coll in self._collections():
            if low and (low in coll.name.lower() or coll.info_hash_v1.hex() == low) and not any(m["ref"] == ih.hex() for m in matches):
                matches.append({"kind": "collection", "label": coll.name, "ref": ih.hex()})
        for pid, _ in self._peers():
            if len(low) >= 8 and pid.hex().startswith(low) and not any(m["ref"] == pid.hex() for m in matches):
                matches.append({"kind": "peer", "label": f"peer {pid.hex()[:16]}…", "ref": pid.hex()})
        return {"matches": matches[:50]}

    def charts(self) -> dict[str, Any]:
        epoch = self.node.genesis.params.epoch_blocks
        per_epoch: dict[int, dict[str, int]] = {}
        intervals = []
        prev = None
        for block in reversed(list(self._recent_blocks(200))):
            h = block.header
            if prev is not None:
                intervals.append({"height": h.height, "interval_ms": h.timestamp_ms - prev})
            prev = h.timestamp_ms
            for signed in block.body:
                if isinstance(signed.record, ProofResult):
                    e = per_epoch.setdefault(h.height // epoch, {"passed": 0, "missed": 0, "failed": 0})
                    e[VERDICT_NAMES.get(signed.record.verdict, "failed")] += 1
        return {"redundancy": dict(self.summary()["redundancy"]),
                "proofs_per_epoch": [{"epoch": k, **v} for k, v in sorted(per_epoch.items())],
                "block_intervals": intervals[-100:]}

    def submit_record(self, data: bytes) -> dict[str, Any]:
        try:
            signed = decode(data, SignedRecord)
        except CodecError as exc:
            raise BadRequest(f"not a canonical SignedRecord: {exc}") from exc
        overlay = Overlay(self.node.state)
        try:
            process_record(overlay, self.node.height + 1, signed, get_record_payload(signed.record))
        except InvalidBlock as exc:
            raise BadRequest(f"record rejected: {exc}") from exc
        record_id = self.node.submit_record(signed)
        from node.pool import compute_record_id
        return {"accepted": record_id is not None, "id": compute_record_id(signed).hex()}

    def health(self) -> str:
        node = self.node
        if node.syncer.is_syncing:
            return "syncing"
        # Cut off from every other beacon, its head may be stale without its knowing:
        # not ready, so a load balancer sends readers elsewhere.
        alone = len(get_validators(node.state)) > 1 and not any(
            p.role == "beacon" for p in node.transport.peers())
        return "not_ready" if alone else "ready"

    def metrics(self) -> list[Metric]:
        epoch = self.node.genesis.params.epoch_blocks
        out = [Metric("beacon_finalized_epoch", "gauge", "Epoch of the last finalized block.", self.node.height // epoch)]
        totals = {"passed": 0, "missed": 0, "failed": 0}
        for _, peer in self._peers():
            totals["passed"] += peer.proofs_passed
            totals["missed"] += peer.proofs_missed
            totals["failed"] += peer.proofs_failed
        for k, v in totals.items():
            out.append(Metric("cairn_proofs_total", "counter", "Final proof verdicts over the registered peers.", v, {"verdict": k}))
        out.append(Metric("cairn_record_pool_size", "gauge", "Signed records waiting for a block.", len(self.node.pool)))
        out.append(Metric("cairn_connected_links", "gauge", "Open /p2p links.", len(self.node.transport.peers())))
        return out

    async def notify(self) -> None:
        async with self.head_changed:
            self.head_changed.notify_all()


def make_beacon_app(node: "BeaconNode") -> web.Application:
    explorer = BeaconExplorer(node)
    node.explorer = explorer
    app = make_web_app(explorer, role="beacon")

    async def get_torrent(request: web.Request) -> web.Response:
        ref = request.match_info["info_hash"]
        if not re.fullmatch(r"[0-9a-f]{64}", ref):
            return web.json_response({"error": "bad request", "detail": "info hash must be 64 lowercase hex"}, status=400)
        torrent = node.collection_torrent(bytes.fromhex(ref))
        if torrent is None:
            return web.json_response({"error": "not found", "detail": f"collection {ref}"}, status=404)
        return web.Response(body=torrent, content_type="application/x-bittorrent")

    app.router.add_get("/api/torrents/{info_hash}", get_torrent)
    return app
