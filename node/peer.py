"""The storage peer: join, follow the chain, fetch what the targets assign, prove it.

After every finalized block the peer recomputes its own targets from its own chain copy
(chain.assignments) and reconciles: it fetches assigned shards straight from the holders
whose BitTorrent addresses are in chain state, claims a shard once libtorrent has
verified and flushed it, answers its open challenges before their deadlines, and drops a
released shard only after its DROP is final. Its records (PeerJoin, Holding) and proof
answers go to the beacons by gossip; nothing here trusts a beacon's word.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from chain.proofs import make_proof_answer
from chain.state import (
    ACTIVE, EXCLUDED, LEFT, SUSPENDED, get_challenge_from_entry, get_collection, get_last_seq, get_open_challenges_for_peer,
    get_peer, get_shard_holders,
)
from chain.transition import sign_record
from chain.types import CLAIM, DROP, CommittedBlock, Holding, PeerJoin
from node.chainnode import ChainNode, now_ms, run_node
from node.config import NodeConfig, parse_address
from node.messages import ROLE_PEER, ProofMsg, RecordMsg
from storage.collection import shard_leaf_to_file_leaf, shard_pieces
from storage.errors import StorageError
from storage.merkle import BLOCK_SIZE
from storage.index import LocalIndex, ShardState
from storage.proof import build_proof, read_piece
from storage.torrent import HashFailed, ShardComplete, TorrentSession

log = logging.getLogger("cairn.peer")

RESEND_AFTER_BLOCKS = 8        # a record not on chain by then is signed and sent again
FETCH_STALL_MS = 10_000        # a download with no new piece for this long is restarted
STATUS_NAMES = {ACTIVE: "active", SUSPENDED: "suspended", EXCLUDED: "excluded", LEFT: "left"}


@dataclass
class Sent:
    height: int
    record: object


class PeerNode(ChainNode):
    role = ROLE_PEER

    def __init__(self, datadir: Path, cfg: NodeConfig) -> None:
        super().__init__(datadir, cfg, validator=False)
        self.me = self.key.public_key
        self.data_dir = datadir / "data"
        self.data_dir.mkdir(exist_ok=True)
        host, port = parse_address(cfg.bt_listen)
        self.torrents = TorrentSession(host, port, datadir / "torrents")
        self.index = LocalIndex.open(datadir / "index")
        self.sent: dict[tuple, Sent] = {}            # (kind, ih, shard) -> last send
        self.answered: dict[bytes, int] = {}         # challenge id -> height answered
        self.challenge_stats = {"answered": 0, "passed": 0, "missed": 0, "failed": 0}
        self._seq = 0
        self._reconcile_scheduled = False
        self._fetch_progress: dict[tuple[str, int], tuple[int, int]] = {}

    # ------------------------------------------------------------------ records

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, now_ms(), get_last_seq(self.state, self.me) + 1)
        return self._seq

    def submit(self, key: tuple, record) -> None:
        signed = sign_record(self.key, self.chain_id, record)
        self.sent[key] = Sent(self.height, record)
        self.publish(RecordMsg(signed))
        log.info("sent %s %s", type(record).__name__, key[1:] if len(key) > 1 else "")

    def should_send(self, key: tuple) -> bool:
        sent = self.sent.get(key)
        return sent is None or self.height - sent.height >= RESEND_AFTER_BLOCKS

    def ensure_joined(self) -> None:
        peer = get_peer(self.state, self.me)
        bt_host, bt_port = parse_address(self.cfg.bt_listen)
        bt_address = f"{bt_host}:{self.torrents.port}"
        wanted = (bt_address, self.cfg.listen, self.cfg.capacity)
        if peer is not None and (peer.bt_address, peer.api_address, peer.capacity) == wanted:
            return
        if peer is not None and peer.status in (EXCLUDED, LEFT):
            return
        if self.should_send(("join",)) and self.transport.peers():
            self.submit(("join",), PeerJoin(self.me, bt_address, self.cfg.listen, self.cfg.capacity, self.next_seq()))

    # ------------------------------------------------------------------ reconcile

    def on_new_head(self, committed: CommittedBlock) -> None:
        self.schedule_reconcile()

    def schedule_reconcile(self) -> None:
        if not self._reconcile_scheduled:
            self._reconcile_scheduled = True
            asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_scheduled = False
        if self.syncer.is_syncing:
            return
        self.ensure_joined()
        peer = get_peer(self.state, self.me)
        if peer is None or peer.status in (EXCLUDED, LEFT):
            return
        to_fetch, may_drop = self.tracker.get_tasks(self.me)
        for info_hash, index in to_fetch:
            self.guarded(self.start_fetch, info_hash, index)
        for info_hash, index in may_drop:
            self.guarded(self.release, info_hash, index)
        self.guarded(self.settle_local, set(to_fetch))
        self.guarded(self.answer_challenges)

    def guarded(self, step, *args) -> None:
        """One shard's storage trouble is logged and must not stop the other steps."""
        try:
            step(*args)
        except StorageError as exc:
            log.error("storage error in %s%s: %s", step.__name__, args[:2] if args else "", exc)

    def holder_entry(self, info_hash: bytes, index: int):
        return next((h for h in get_shard_holders(self.state, info_hash, index).holders if h.peer == self.me), None)

    def sources(self, info_hash: bytes, index: int) -> list[tuple[str, int]]:
        out = []
        for h in get_shard_holders(self.state, info_hash, index).holders:
            peer = get_peer(self.state, h.peer)
            if h.peer != self.me and peer is not None and peer.status == ACTIVE:
                out.append(parse_address(peer.bt_address))
        coll = get_collection(self.state, info_hash)
        out += [parse_address(a) for a in (coll.seeders if coll else ())]
        return out

    def start_fetch(self, info_hash: bytes, index: int) -> None:
        ih = info_hash.hex()
        rec = self.index.get(ih, index)
        if rec is not None and rec.state in (ShardState.FETCHING, ShardState.HELD):
            if rec.state == ShardState.FETCHING and ih in self.torrents.torrents():
                self.watch_fetch(rec, self.sources(info_hash, index))
            return
        if rec is not None and rec.state == ShardState.DROPPING:
            if self.holder_entry(info_hash, index) is not None:
                return          # our DROP is not final yet: the copy still counts as ours
            self.drop_local(ih, [index])    # released, and now wanted again: start clean
        meta = self.collection_meta(info_hash)
        if meta is None:
            return
        shard = meta.shards[index]
        pieces = shard_pieces(shard)
        files = (meta.files[shard.file_index].path,)
        self.index.begin_fetch(ih, index, pieces, files, str(self.data_dir), shard.length, now_ms())
        self.torrents.fetch(meta.torrent, self.data_dir, pieces, self.sources(info_hash, index))
        log.info("fetching shard %s/%d (%d bytes, %d pieces)", ih[:12], index, shard.length, len(pieces))

    def watch_fetch(self, rec, sources: list[tuple[str, int]]) -> None:
        """Keep a download moving: dial the holders again, and restart it (with a log line
        saying what libtorrent looked like) when it made no progress for a while."""
        now = now_ms()
        have = self.torrents.progress(rec.info_hash, rec.pieces)[0]
        last = self._fetch_progress.get((rec.info_hash, rec.shard))
        if last is None or last[0] != have:
            self._fetch_progress[(rec.info_hash, rec.shard)] = (have, now)
            self.torrents.add_peers(rec.info_hash, sources)
        elif now - last[1] > FETCH_STALL_MS:
            picture = self.torrents.kick(rec.info_hash, sources)
            log.warning("fetch of shard %s/%d stalled at %d/%d pieces for %d s; restarted (%s)",
                        rec.info_hash[:12], rec.shard, have, len(rec.pieces), (now - last[1]) // 1000, picture)
            self._fetch_progress[(rec.info_hash, rec.shard)] = (have, now)

    def settle_local(self, assigned: set[tuple[bytes, int]]) -> None:
        """Bring local shards in line with the chain: claim complete assigned shards, and
        free what nobody asked us to keep (a finished DROP, an unassigned download)."""
        to_drop: dict[str, list[int]] = {}
        for rec in list(self.index.shards()):
            ref = (bytes.fromhex(rec.info_hash), rec.shard)
            on_chain = get_collection(self.state, ref[0]) is not None and self.holder_entry(*ref) is not None
            if on_chain:
                continue
            if rec.state == ShardState.HELD and ref in assigned:
                key = ("claim", rec.info_hash, rec.shard)
                if self.should_send(key):
                    self.submit(key, Holding(self.me, ref[0], rec.shard, CLAIM, self.next_seq()))
            elif rec.state == ShardState.FETCHING and ref in assigned:
                continue
            elif ("claim", rec.info_hash, rec.shard) in self.sent and self.height - self.sent[("claim", rec.info_hash, rec.shard)].height < RESEND_AFTER_BLOCKS:
                continue   # our claim is on its way; the targets will catch up with it
            else:
                to_drop.setdefault(rec.info_hash, []).append(rec.shard)
                self.sent.pop(("drop", rec.info_hash, rec.shard), None)
        for ih, shards in to_drop.items():
            self.drop_local(ih, shards)

    def release(self, info_hash: bytes, index: int) -> None:
        """Ask to drop a released copy; the data stays until the DROP is final."""
        key = ("drop", info_hash.hex(), index)
        rec = self.index.get(info_hash.hex(), index)
        if rec is not None and rec.state == ShardState.HELD:
            self.index.mark_dropping(info_hash.hex(), index, now_ms())
        if self.holder_entry(info_hash, index) is not None and self.should_send(key):
            self.submit(key, Holding(self.me, info_hash, index, DROP, self.next_seq()))

    def drop_local(self, ih: str, shards: list[int]) -> None:
        """Forget shards of one torrent and give their disk space back, in one libtorrent
        operation (each drop re-adds the torrent, so per-shard calls would churn it)."""
        recs = [r for r in (self.index.get(ih, i) for i in shards) if r is not None]
        if not recs:
            return
        for rec in recs:
            if rec.state != ShardState.DROPPING:
                self.index.mark_dropping(ih, rec.shard, now_ms())
        if ih in self.torrents.torrents():
            self.torrents.drop_pieces(ih, [p for rec in recs for p in rec.pieces])
        for rec in recs:
            self.index.remove(ih, rec.shard)
            log.info("dropped shard %s/%d and freed %d bytes", ih[:12], rec.shard, rec.size)

    # ------------------------------------------------------------------ challenges

    def answer_challenges(self) -> None:
        height = self.height
        for challenge_id, entry in get_open_challenges_for_peer(self.state, self.me):
            if challenge_id in self.answered or entry.deadline_height < height:
                continue
            answer = self.build_answer(challenge_id, entry)
            if answer is None:
                continue
            self.answered[challenge_id] = height
            self.challenge_stats["answered"] += 1
            self.publish(ProofMsg(answer.peer, answer.challenge_id, answer.proof, answer.signature))
        for cid in [c for c, h in self.answered.items() if h < height - 1000]:
            del self.answered[cid]

    def held_shard(self, info_hash: bytes, index: int):
        """(meta, shard, index record) of a shard we hold on disk, or None."""
        meta = self.collection_meta(info_hash)
        rec = self.index.get(info_hash.hex(), index)
        if meta is None or rec is None or rec.state not in (ShardState.HELD, ShardState.DROPPING):
            return None
        return meta, meta.shards[index], rec

    def read_leaf_piece(self, meta, shard, leaf: int) -> bytes:
        """The one piece (from disk) that holds leaf `leaf` of `shard`."""
        file_index, file_leaf = shard_leaf_to_file_leaf(meta, shard, leaf)
        path = self.data_dir / meta.name / meta.files[file_index].path
        return read_piece(path, file_leaf * BLOCK_SIZE // meta.piece_length, meta.piece_length)

    def build_answer(self, challenge_id: bytes, entry):
        held = self.held_shard(entry.collection, entry.shard)
        if held is None:
            return None
        meta, shard, rec = held
        try:
            proof = build_proof(meta, shard, entry.leaf, self.read_leaf_piece(meta, shard, entry.leaf))
        except StorageError as exc:
            log.error("cannot prove shard %s/%d: %s; marking it lost", rec.info_hash[:12], entry.shard, exc)
            self.index.mark_lost(rec.info_hash, entry.shard, str(exc)[:200], now_ms())
            return None
        return make_proof_answer(self.key, self.chain_id, get_challenge_from_entry(challenge_id, entry), proof)

    # ------------------------------------------------------------------ torrent events

    async def _torrent_events(self) -> None:
        async for ev in self.torrents.events():
            if isinstance(ev, ShardComplete):
                for rec in self.index.shards(ShardState.FETCHING, ev.info_hash):
                    if set(rec.pieces) <= set(ev.pieces) or self.torrents.has_pieces(rec.info_hash, rec.pieces):
                        self.index.mark_held(rec.info_hash, rec.shard, now_ms())
                        log.info("shard %s/%d complete and verified", rec.info_hash[:12], rec.shard)
                self.schedule_reconcile()
            elif isinstance(ev, HashFailed):
                log.warning("piece %d of %s failed its hash check", ev.piece, ev.info_hash[:12])

    def reseed_held(self) -> None:
        """After a restart: serve every shard the index says we hold."""
        for rec in self.index.shards():
            if rec.state in (ShardState.HELD, ShardState.FETCHING):
                meta = self.collection_meta(bytes.fromhex(rec.info_hash))
                if meta is None:
                    continue
                if rec.state == ShardState.HELD:
                    self.torrents.seed(meta.torrent, self.data_dir, rec.pieces)
                else:
                    self.torrents.fetch(meta.torrent, self.data_dir, rec.pieces,
                                        self.sources(bytes.fromhex(rec.info_hash), rec.shard))

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        from node.dashboard import make_peer_app
        return make_peer_app(self)

    async def on_start(self) -> None:
        self.torrents.attach(asyncio.get_running_loop())
        self.reseed_held()
        self._spawn(self._torrent_events())
        self.schedule_reconcile()

    def on_tick(self) -> None:
        # Reconcile also without new blocks, e.g. once the first links are up.
        if now_ms() % 2000 < 260:
            self.schedule_reconcile()

    async def on_stop(self) -> None:
        try:
            self.torrents.save_resume_data()
        except StorageError as exc:
            log.error("could not save resume data: %s", exc)
        self.torrents.detach()
        self.torrents.close(save=False)
        self.index.close()


def run_peer(datadir: Path, cfg: NodeConfig) -> int:
    return run_node(lambda: PeerNode(datadir, cfg))
