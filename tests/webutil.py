"""In-memory providers for testing the web layer alone, and a server thread to run them.

`MemoryExplorer` and `MemoryDashboard` implement the provider protocols of
node/web/provider.py over plain data (a small made-up network: 4 validators, 6 peers,
2 collections, ~60 blocks), with a few mutators the tests use (`advance`, `set_verified`,
`set_health`, ...). They are for unit-testing the web layer only; the real beacon and
peer services are tested against a live local network.

Run `python tests/webutil.py [--port 8080] [--peer-port 8081]` to look at the pages.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chain.codec import decode  # noqa: E402
from chain.errors import CodecError  # noqa: E402
from chain.types import SignedRecord  # noqa: E402
from node.web.api import make_web_app  # noqa: E402
from node.web.metrics import system_snapshot  # noqa: E402
from node.web.provider import BadRequest, Metric, NotFound  # noqa: E402

MiB = 1024 * 1024
EPOCH_BLOCKS = 10
SUSPEND_BELOW_PPM = 600_000


def h(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def hx(*parts: object) -> str:
    return h(*parts).hex()


def now_ms() -> int:
    return int(time.time() * 1000)


class MemoryExplorer:
    """ExplorerProvider over plain data."""

    def __init__(self, *, blocks: int = 57, seed: int = 1, chain_id: str = "cairn-demo") -> None:
        self.head_changed = asyncio.Condition()
        self.rng = random.Random(seed)
        self.chain_id = chain_id
        self.health_state = "ready"
        self.syncing = False
        self.node_id = hx("node", "beacon0")
        self.validators_list = [
            {"index": i, "public_key": hx("validator", i), "vrf_public_key": hx("vrf", i),
             "name": f"beacon{i}", "address": f"127.0.0.1:{7000 + i}", "online": i != 3,
             "proposed": 0, "missed_rounds": 0, "evidence": []}
            for i in range(4)]
        self.validators_list[3]["missed_rounds"] = 4
        # peers
        self.peers_list: list[dict[str, Any]] = []
        statuses = ["active", "active", "active", "active", "suspended", "excluded"]
        for i, st in enumerate(statuses):
            self.peers_list.append({
                "id": hx("peer", i), "status": st,
                "reputation_ppm": {"active": 1_000_000 - 9_000 * i, "suspended": 512_000,
                                   "excluded": 0}[st],
                "capacity": (64 + 16 * i) * MiB, "used_bytes": 0, "holdings": 0,
                "bt_address": f"127.0.0.1:{6881 + i}", "api_address": f"127.0.0.1:{7100 + i}",
                "proofs_passed": 0, "proofs_missed": 0, "proofs_failed": 0,
                "joined_height": 2 + i})
        self.peers_list[4]["proofs_missed"] = 5
        self.peers_list[5]["proofs_failed"] = 1
        # collections and holdings
        self.collections_list: list[dict[str, Any]] = []
        self.shards: dict[str, list[dict[str, Any]]] = {}
        active = [p["id"] for p in self.peers_list if p["status"] == "active"]
        self._add_collection("demo-photos", [("photos/a.jpg", 700_000), ("photos/b.jpg", 1_300_000),
                                             ("data/table.csv", 90_000), ("readme.txt", 2_000)],
                             holders=lambda i: [active[(i + k) % 4] for k in range(3)])
        self._add_collection("field-recordings", [("dawn.flac", 9 * MiB), ("dusk.flac", 7 * MiB),
                                                  ("notes.md", 4_100)],
                             holders=lambda i: [active[(i + k + 1) % 4] for k in range(3 if i else 2)])
        # blocks
        self.blocks_list: list[dict[str, Any]] = []
        t = now_ms() - 1_800 * blocks
        for height in range(blocks):
            t += 1000 + self.rng.randrange(0, 1600)
            self._append_block(t)
        shift = now_ms() - 1_500 - self.blocks_list[-1]["time_ms"]
        for b in self.blocks_list:
            b["time_ms"] += shift
        self._recount()

    # ------------------------------------------------------------------ construction helpers

    def _add_collection(self, name: str, files: list[tuple[str, int]],
                        holders: Callable[[int], list[str]]) -> None:
        ih = hx("collection", name)
        shards = []
        for i, (path, size) in enumerate(files):
            verified = holders(i)
            shards.append({"index": i, "file": path, "size": size, "target": 3,
                           "verified_holders": verified, "claimed": [],
                           "assigned": list(verified), "last_proof_height": None})
        self.shards[ih] = shards
        self.collections_list.append({
            "name": name, "info_hash": ih, "info_hash_v1": h("v1", name)[:20].hex(), "target": 3,
            "size": sum(s for _, s in files), "shards": len(files), "shards_at_target": 0,
            "deficit": 0, "published_height": 3 + len(self.collections_list),
            "files": [{"path": p, "length": s} for p, s in files]})

    def _append_block(self, time_ms: int) -> dict[str, Any]:
        height = len(self.blocks_list)
        parent = self.blocks_list[-1]["hash"] if self.blocks_list else "00" * 32
        rnd = 1 if self.rng.random() < 0.08 else 0
        proposer = self.validators_list[(height + rnd) % 3]
        records = self._records_for(height)
        signers = [{"index": v["index"], "public_key": v["public_key"], "name": v["name"]}
                   for v in self.validators_list if v["online"]]
        block = {
            "height": height, "hash": hx("block", self.chain_id, height), "time_ms": time_ms,
            "round": rnd, "proposer": proposer["public_key"], "records": len(records),
            "randomness": hx("randomness", height), "chain_id": self.chain_id,
            "parent_hash": parent, "vrf_proof": (h("vrf-proof", height) * 3)[:80].hex(),
            "state_root": hx("state", height), "body_root": hx("body", height),
            "signature": (h("sig", height) + h("sig2", height)).hex(),
            "commit": {"round": rnd, "signers": signers}, "records_list": records,
        }
        block["raw_hex"] = (h("raw", height) * (4 + 2 * len(records))).hex()
        proposer["proposed"] += 1
        if rnd:
            self.validators_list[(height) % 3]["missed_rounds"] += 1
        self.blocks_list.append(block)
        return block

    def _records_for(self, height: int) -> list[dict[str, Any]]:
        if 2 <= height < 2 + len(self.peers_list):
            p = self.peers_list[height - 2]
            return [{"kind": "PeerJoin", "peer": p["id"], "bt_address": p["bt_address"],
                     "api_address": p["api_address"], "capacity": p["capacity"], "seq": 0,
                     "signature": hx("rsig", height) * 2}]
        recs: list[dict[str, Any]] = []
        if height % 4 == 1 and self.collections_list:
            c = self.collections_list[height % len(self.collections_list)]
            shard = height % c["shards"]
            holder = self.shards[c["info_hash"]][shard]["verified_holders"][0]
            recs.append({"kind": "Holding", "peer": holder, "collection": c["info_hash"],
                         "shard": shard, "action": "claim", "seq": height,
                         "signature": hx("hsig", height) * 2})
        if height % 5 == 0 and height >= 10:
            p = self.peers_list[height % 4]
            recs.append({"kind": "ProofResult", "peer": p["id"], "challenge_id": hx("ch", height),
                         "verdict": "pass", "proof_digest": hx("pd", height)})
        return recs

    def _summary(self, b: dict[str, Any]) -> dict[str, Any]:
        return {k: b[k] for k in ("height", "hash", "time_ms", "round", "proposer", "records",
                                  "randomness")}

    def _recount(self) -> None:
        by_id = {p["id"]: p for p in self.peers_list}
        for p in self.peers_list:
            p["holdings"] = 0
            p["used_bytes"] = 0
        total_shards = at_target = deficit = 0
        stored = target_bytes = 0
        for c in self.collections_list:
            shards = self.shards[c["info_hash"]]
            c["shards_at_target"] = sum(1 for s in shards if len(s["verified_holders"]) >= s["target"])
            c["deficit"] = sum(max(0, s["target"] - len(s["verified_holders"])) for s in shards)
            total_shards += len(shards)
            at_target += c["shards_at_target"]
            deficit += c["deficit"]
            for s in shards:
                stored += s["size"] * len(s["verified_holders"])
                target_bytes += s["size"] * s["target"]
                for pid in s["verified_holders"]:
                    by_id[pid]["holdings"] += 1
                    by_id[pid]["used_bytes"] += s["size"]
                if s["last_proof_height"] is None and s["verified_holders"]:
                    s["last_proof_height"] = max(0, len(self.blocks_list) - 1 - 3 * s["index"])
        for p in self.peers_list:
            if p["status"] == "active":
                p["proofs_passed"] = 4 * p["holdings"] + len(self.blocks_list) // 10
        self._totals = dict(shards_total=total_shards, shards_at_target=at_target,
                            replication_deficit=deficit, stored_bytes=stored,
                            target_bytes=target_bytes)

    # ------------------------------------------------------------------ mutators (run on the loop)

    async def notify(self) -> None:
        async with self.head_changed:
            self.head_changed.notify_all()

    async def advance(self, n: int = 1) -> int:
        """Append n blocks (1 s apart, the last one now) and wake the live streams."""
        for i in range(n):
            self._append_block(now_ms() - 1000 * (n - 1 - i))
        self._recount()
        await self.notify()
        return len(self.blocks_list) - 1

    async def set_verified(self, collection: str, shard: int, holders: list[str]) -> None:
        c = self._find_collection(collection)
        self.shards[c["info_hash"]][shard]["verified_holders"] = list(holders)
        self._recount()
        await self.notify()

    async def set_health(self, state: str, syncing: bool | None = None) -> None:
        self.health_state = state
        self.syncing = state == "syncing" if syncing is None else syncing
        await self.notify()

    # ------------------------------------------------------------------ ExplorerProvider

    def _head(self) -> dict[str, Any]:
        return self.blocks_list[-1]

    def status(self) -> dict[str, Any]:
        head = self._head()
        counts = {s: sum(1 for p in self.peers_list if p["status"] == s)
                  for s in ("active", "suspended", "excluded")}
        return {
            "chain_id": self.chain_id, "role": "beacon", "node_id": self.node_id,
            "version": "0.1.0", "head_height": head["height"], "head_hash": head["hash"],
            "head_time_ms": head["time_ms"], "finalized_height": head["height"],
            "randomness": head["randomness"], "syncing": self.syncing,
            "validators_total": len(self.validators_list),
            "validators_online": sum(1 for v in self.validators_list if v["online"]),
            "peers_active": counts["active"], "peers_suspended": counts["suspended"],
            "peers_excluded": counts["excluded"], "collections": len(self.collections_list),
            **self._totals,
        }

    def blocks(self, before: int | None, limit: int) -> dict[str, Any]:
        top = len(self.blocks_list) if before is None else min(before, len(self.blocks_list))
        chosen = [self._summary(b) for b in reversed(self.blocks_list[max(0, top - limit):top])]
        nxt = chosen[-1]["height"] if chosen and chosen[-1]["height"] > 0 else None
        return {"blocks": chosen, "next_before": nxt}

    def block(self, ref: str) -> dict[str, Any]:
        b = None
        if ref.isdigit():
            if int(ref) < len(self.blocks_list):
                b = self.blocks_list[int(ref)]
        else:
            b = next((x for x in self.blocks_list if x["hash"] == ref), None)
        if b is None:
            raise NotFound(f"block {ref}")
        out = {k: v for k, v in b.items() if k != "records_list"}
        out["records"] = b["records_list"]
        return out

    def validators(self) -> list[dict[str, Any]]:
        return [dict(v) for v in self.validators_list]

    def peers(self, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        chosen = [p for p in self.peers_list if status is None or p["status"] == status]
        return {"peers": [dict(p) for p in chosen[offset:offset + limit]], "total": len(chosen)}

    def peer(self, peer_id_hex: str) -> dict[str, Any]:
        p = next((x for x in self.peers_list if x["id"] == peer_id_hex), None)
        if p is None:
            raise NotFound(f"peer {peer_id_hex}")
        out = dict(p)
        out["holdings"] = [
            {"collection": c["info_hash"], "name": c["name"], "shard": s["index"], "state": "verified",
             "verified_height": s["last_proof_height"]}
            for c in self.collections_list for s in self.shards[c["info_hash"]]
            if p["id"] in s["verified_holders"]]
        head = self._head()["height"]
        rep, hist = 1_000_000, []
        for height in range(p["joined_height"], head + 1, 3):
            if p["status"] == "suspended" and height > head // 2:
                rep = rep * 95 // 100
            elif p["status"] == "excluded" and height > head - 10:
                rep = 0
            hist.append({"height": height, "reputation_ppm": rep})
        hist.append({"height": head, "reputation_ppm": p["reputation_ppm"]})
        out["reputation_history"] = hist
        proofs = []
        for i, hold in enumerate(out["holdings"]):
            for k in range(2):
                height = max(0, head - 7 * k - i)
                proofs.append({"height": height, "challenge_id": hx("ch", p["id"], height, i),
                               "collection": hold["collection"], "shard": hold["shard"],
                               "leaf": (height * 7 + i) % 64, "verdict": "passed"})
        if p["status"] == "suspended":
            proofs.append({"height": head - 2, "challenge_id": hx("ch", p["id"], "m"),
                           "collection": self.collections_list[0]["info_hash"], "shard": 0,
                           "leaf": 5, "verdict": "missed"})
        if p["status"] == "excluded":
            proofs.append({"height": head - 9, "challenge_id": hx("ch", p["id"], "f"),
                           "collection": self.collections_list[1]["info_hash"], "shard": 1,
                           "leaf": 11, "verdict": "failed"})
        out["proofs"] = sorted(proofs, key=lambda x: -x["height"])
        out["thresholds"] = {"suspend_below_ppm": SUSPEND_BELOW_PPM}
        return out

    def collections(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "files"} for c in self.collections_list]

    def _find_collection(self, ref: str) -> dict[str, Any]:
        for c in self.collections_list:
            if ref in (c["name"], c["info_hash"], c["info_hash_v1"]):
                return c
        raise NotFound(f"collection {ref}")

    def collection(self, ref: str) -> dict[str, Any]:
        c = self._find_collection(ref)
        out = dict(c)
        out["shards"] = [dict(s) for s in self.shards[c["info_hash"]]]
        return out

    def search(self, q: str) -> dict[str, Any]:
        matches: list[dict[str, Any]] = []
        ql = q.lower()
        if q.isdigit() and int(q) < len(self.blocks_list):
            matches.append({"kind": "block", "label": f"Block {int(q)}", "ref": str(int(q))})
        if re.fullmatch(r"[0-9a-f]{6,64}", ql):
            for b in self.blocks_list:
                if b["hash"].startswith(ql):
                    matches.append({"kind": "block", "label": f"Block {b['height']}",
                                    "ref": str(b["height"])})
            for p in self.peers_list:
                if p["id"].startswith(ql):
                    matches.append({"kind": "peer", "label": f"Peer {p['id'][:12]}… ({p['status']})",
                                    "ref": p["id"]})
        for c in self.collections_list:
            if ql in c["name"].lower() or c["info_hash"].startswith(ql) and len(ql) >= 6 \
                    or c["info_hash_v1"] == ql:
                matches.append({"kind": "collection", "label": c["name"], "ref": c["info_hash"]})
        return {"matches": matches}

    def charts(self) -> dict[str, Any]:
        red: dict[str, int] = {}
        for shards in self.shards.values():
            for s in shards:
                k = str(len(s["verified_holders"]))
                red[k] = red.get(k, 0) + 1
        head = self._head()["height"]
        per_epoch = []
        for e in range(head // EPOCH_BLOCKS + 1):
            per_epoch.append({"epoch": e, "passed": 0 if e == 0 else 8 + (e * 3) % 5,
                              "missed": 1 if e in (3, 4) else 0, "failed": 1 if e == 2 else 0})
        intervals = [{"height": b["height"], "interval_ms": b["time_ms"] - a["time_ms"]}
                     for a, b in zip(self.blocks_list, self.blocks_list[1:])][-60:]
        return {"redundancy": dict(sorted(red.items(), key=lambda kv: int(kv[0]))),
                "proofs_per_epoch": per_epoch[-30:], "block_intervals": intervals}

    def submit_record(self, data: bytes) -> dict[str, Any]:
        try:
            decode(data, SignedRecord)
        except CodecError as e:
            raise BadRequest(f"not a SignedRecord: {e}") from e
        rid = hashlib.sha256(data).hexdigest()
        seen = getattr(self, "_seen", set())
        self._seen = seen
        accepted = rid not in seen
        seen.add(rid)
        return {"accepted": accepted, "id": rid}

    def health(self) -> str:
        return self.health_state

    def metrics(self) -> list[Metric]:
        return [
            Metric("beacon_finalized_epoch", "gauge", "Epoch of the last finalized block.",
                   self._head()["height"] // EPOCH_BLOCKS),
            Metric("cairn_proofs_total", "counter", "Proof verdicts on chain.", 412, {"verdict": "passed"}),
            Metric("cairn_proofs_total", "counter", "Proof verdicts on chain.", 7, {"verdict": "missed"}),
            Metric("cairn_proofs_total", "counter", "Proof verdicts on chain.", 1, {"verdict": "failed"}),
        ]


class MemoryDashboard:
    """DashboardProvider over plain data (one storage peer's view)."""

    def __init__(self) -> None:
        self.head_changed = asyncio.Condition()
        self.health_state = "ready"
        self.head_height = 57
        self.state = "active"
        self.reputation_ppm = 964_000
        allocated = 256 * MiB
        self.shards = [
            {"collection": hx("collection", "demo-photos"), "name": "demo-photos", "shard": 0,
             "state": "verified", "bytes": 700_000, "progress": 1.0, "down_rate": 0,
             "up_rate": 41_000, "eta_s": 0},
            {"collection": hx("collection", "demo-photos"), "name": "demo-photos", "shard": 1,
             "state": "verified", "bytes": 1_300_000, "progress": 1.0, "down_rate": 0,
             "up_rate": 0, "eta_s": 0},
            {"collection": hx("collection", "field-recordings"), "name": "field-recordings",
             "shard": 0, "state": "downloading", "bytes": 9 * MiB, "progress": 0.42,
             "down_rate": 1_250_000, "up_rate": 0, "eta_s": 5},
            {"collection": hx("collection", "field-recordings"), "name": "field-recordings",
             "shard": 2, "state": "held", "bytes": 4_100, "progress": 1.0, "down_rate": 0,
             "up_rate": 0, "eta_s": 0},
            {"collection": hx("collection", "field-recordings"), "name": "field-recordings",
             "shard": 1, "state": "assigned", "bytes": 7 * MiB, "progress": 0.0, "down_rate": 0,
             "up_rate": 0, "eta_s": None},
        ]
        self.allocated = allocated
        self.challenges = {"answered": 31, "passed": 30, "missed": 1, "failed": 0}
        self.connected = [
            {"id": hx("validator", i), "address": f"127.0.0.1:{7000 + i}", "role": "beacon"}
            for i in range(3)] + [
            {"id": hx("peer", i), "address": f"127.0.0.1:{7100 + i}", "role": "peer"} for i in (1, 2)]

    async def tick(self, seconds: float = 1.0) -> None:
        """Move downloads on by `seconds` and wake the live streams."""
        self.head_height += 1
        for s in self.shards:
            if s["state"] == "downloading" and s["down_rate"]:
                done = min(1.0, s["progress"] + s["down_rate"] * seconds / s["bytes"])
                s["progress"] = round(done, 4)
                left = s["bytes"] * (1 - done)
                s["eta_s"] = int(left / s["down_rate"]) if done < 1 else 0
                if done >= 1:
                    s.update(state="held", down_rate=0, eta_s=0)
        async with self.head_changed:
            self.head_changed.notify_all()

    def status(self) -> dict[str, Any]:
        used = int(sum(s["bytes"] * s["progress"] for s in self.shards))
        return {
            "role": "peer", "node_id": hx("peer", 0), "chain_id": "cairn-demo",
            "head_height": self.head_height, "syncing": self.health_state == "syncing",
            "disk": {"allocated": self.allocated, "used": used, "free": self.allocated - used},
            "shards": [dict(s) for s in self.shards], "challenges": dict(self.challenges),
            "reputation_ppm": self.reputation_ppm,
            "thresholds": {"suspend_below_ppm": SUSPEND_BELOW_PPM}, "status": self.state,
            "system": system_snapshot(), "connected_peers": [dict(c) for c in self.connected],
        }

    def health(self) -> str:
        return self.health_state

    def metrics(self) -> list[Metric]:
        return []


class ServerThread:
    """Runs a web app (built on the server's own loop) in a daemon thread on 127.0.0.1."""

    def __init__(self, make_provider: Callable[[], Any], role: str, port: int = 0) -> None:
        self._make_provider = make_provider
        self.role = role
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.provider: Any = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"web-{role}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("web server did not start within 30 s")
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.provider = self._make_provider()
        app = make_web_app(self.provider, role=self.role)  # type: ignore[arg-type]
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, timeout: float = 10) -> Any:
        """Run an async mutator of the provider on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)


def main() -> None:
    ap = argparse.ArgumentParser(description="serve the web layer over made-up data")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--peer-port", type=int, default=8081)
    ap.add_argument("--tick", type=float, default=2.0, help="seconds between new blocks")
    args = ap.parse_args()
    beacon = ServerThread(MemoryExplorer, "beacon", args.port).start()
    peer = ServerThread(MemoryDashboard, "peer", args.peer_port).start()
    print(f"explorer:  {beacon.base_url}/\ndashboard: {peer.base_url}/")
    try:
        while True:
            time.sleep(args.tick)
            beacon.call(beacon.provider.advance)
            peer.call(peer.provider.tick, args.tick)
    except KeyboardInterrupt:
        pass
    finally:
        beacon.stop()
        peer.stop()


if __name__ == "__main__":
    main()
