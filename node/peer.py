"""The storage peer: join, follow the chain, fetch what the targets assign, prove it.

After every finalized block the peer recomputes its own targets from its own chain copy
(chain.assignments) and reconciles: it fetches assigned shards straight from the holders
whose BitTorrent addresses are in chain state, claims a shard once libtorrent has
verified and flushed it, answers its open challenges before their deadlines, and drops a
released shard only after its DROP is final. Its records (PeerJoin, Holding) and proof
answers go to the beacons by gossip; nothing here trusts a beacon's word.

It also looks after its own disk. A background self-check re-hashes a few pieces of one
held shard at a time (in a worker thread, a bounded number of bytes per second); a shard
found damaged or gone, there or while building a proof, is dropped on chain and its local
copy discarded (see `shard_lost`). A download that fails on a file error (a full disk
above all) is stopped, shown as failed, and retried with a capped exponential backoff,
sooner once the disk has room again (see `fail_fetches`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass, replace
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
from storage.collection import CollectionMeta, Shard, shard_leaf_to_file_leaf, shard_pieces
from storage.errors import StorageError
from storage.merkle import BLOCK_SIZE, blocks_per_piece, ceil_log2, compute_leaf_hashes, reduce_to_root
from storage.index import CheckResult, LocalIndex, ShardRecord, ShardState, check_shard
from storage.proof import build_proof, read_piece
from storage.torrent import FileFailed, HashFailed, ShardComplete, TorrentFailed, TorrentSession

log = logging.getLogger("cairn.peer")

RESEND_AFTER_BLOCKS = 8        # a record not on chain by then is signed and sent again
FETCH_STALL_MS = 10_000        # a download with no new piece for this long is restarted
STATUS_NAMES = {ACTIVE: "active", SUSPENDED: "suspended", EXCLUDED: "excluded", LEFT: "left"}
# Self-check: one held shard per round, SELF_CHECK_SAMPLES pieces of it (first, last and
# random ones), and rounds paced so the reads stay under SELF_CHECK_BYTES_PER_S: the check
# must never compete with serving and proving. At 1 s per shard a peer with 10^4 shards
# sees each of them about every 3 hours; challenges catch the rest (and also drop it).
SELF_CHECK_MIN_INTERVAL_S = 1.0
SELF_CHECK_BYTES_PER_S = 8 << 20
SELF_CHECK_SAMPLES = 4
# A failed download is retried after FETCH_RETRY_FIRST_MS, doubling per failure up to
# FETCH_RETRY_MAX_MS; a disk-full failure is retried sooner (but never within
# FETCH_RETRY_FIRST_MS of the failure) once the disk has room for the shard again.
FETCH_RETRY_FIRST_MS = 5_000
FETCH_RETRY_MAX_MS = 300_000
TORRENT_ERROR_RETRY_MS = 5_000  # a stopped torrent with no download to blame is restarted after this
DISK_FULL_BLAME_MS = 30_000     # a torrent stopped this soon after a disk-full write failed, failed for that


@dataclass
class Sent:
    height: int
    record: object


@dataclass(frozen=True)
class FetchFailure:
    """Why the download of a shard stopped, and when it is tried again."""
    cause: str          # short, for people: "disk full", "file error", "torrent stopped"
    detail: str         # libtorrent's message
    attempts: int       # failures in a row
    failed_at: int      # ms
    retry_at: int       # ms
    size: int           # bytes the shard needs on disk
    disk_full: bool
    free_after: int     # free bytes on the disk once the failed downloads were discarded


def retry_delay_ms(attempts: int) -> int:
    """Capped exponential backoff after `attempts` failures in a row."""
    return min(FETCH_RETRY_MAX_MS, FETCH_RETRY_FIRST_MS << min(max(attempts - 1, 0), 20))


def retry_due(failure: FetchFailure, now: int, free: int, pending: int) -> bool:
    """Whether a failed download may start again: its backoff ran out, or it failed for a
    full disk and space came back since (more free than right after its own partial data
    was discarded, and room for it beside the `pending` bytes other downloads still
    need), though never within the first retry delay of the failure. Space it freed
    itself does not count, or a disk that stays full would be retried at the first delay
    for ever."""
    if now >= failure.retry_at:
        return True
    return (failure.disk_full and now - failure.failed_at >= FETCH_RETRY_FIRST_MS
            and free > failure.free_after and free - pending >= failure.size)


class PieceChecker:
    """Reads the pieces of one shard from disk and says what their BEP 52 hash must be:
    the torrent's piece-layer entry (or the file's pieces root for a one-piece file),
    computed exactly as build_proof checks a piece. Pure apart from reading the file, so it
    runs in a worker thread."""

    def __init__(self, data_dir: Path, meta: CollectionMeta, shard: Shard) -> None:
        self.file = meta.files[shard.file_index]
        self.rel_path = f"{meta.name}/{self.file.path}"
        self.path = data_dir / meta.name / self.file.path
        self.piece_length = meta.piece_length
        self.one_piece = self.file.length <= meta.piece_length
        self.layer = b"" if self.one_piece else meta.piece_layers.get(self.file.pieces_root, b"")

    def read(self, piece: int) -> bytes:
        return read_piece(self.path, piece - self.file.first_piece, self.piece_length)

    def expected(self, piece: int) -> bytes:
        if self.one_piece:
            return self.file.pieces_root
        i = piece - self.file.first_piece
        return self.layer[i * 32:(i + 1) * 32]

    def digest(self, data: bytes) -> bytes:
        leaves = compute_leaf_hashes(data)
        height = ceil_log2(len(leaves)) if self.one_piece else ceil_log2(blocks_per_piece(self.piece_length))
        return reduce_to_root(leaves, height)


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
        self.fetch_failures: dict[tuple[str, int], FetchFailure] = {}   # (ih hex, shard) -> last failure
        self._torrent_errors: dict[str, tuple[int, int]] = {}          # ih hex -> (attempts, retry at ms)
        self._check_urgent: deque[tuple[str, int]] = deque()            # checked before the round robin
        self._check_round: list[tuple[str, int]] = []                   # rest of the current pass
        self._unmatched_warned: dict[str, int] = {}
        self._disk_full_seen: dict[str, tuple[int, str]] = {}           # ih hex -> (ms, message)
        self.self_checks = {"checked": 0, "lost": 0}

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
        assigned = set(to_fetch)
        for key in [k for k in self.fetch_failures if (bytes.fromhex(k[0]), k[1]) not in assigned]:
            del self.fetch_failures[key]      # no longer ours to fetch: nothing left to retry
        for info_hash, index in to_fetch:
            self.guarded(self.start_fetch, info_hash, index)
        for info_hash, index in may_drop:
            self.guarded(self.release, info_hash, index)
        self.guarded(self.settle_local, assigned)
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
        if rec is not None and rec.state in (ShardState.DROPPING, ShardState.LOST):
            if self.holder_entry(info_hash, index) is not None:
                return          # our DROP is not final yet: the copy still counts as ours
        failure = self.fetch_failures.get((ih, index))
        if failure is not None and not retry_due(failure, now_ms(), self.disk_free(), self.pending_fetch_bytes()):
            return
        if rec is not None and rec.state == ShardState.DROPPING:
            self.drop_local(ih, [index])    # released, and now wanted again: start clean
        elif rec is not None and rec.state == ShardState.LOST:
            self.discard_copy(rec, only_if_held=True)   # never resume from pieces that failed a check
        meta = self.collection_meta(info_hash)
        if meta is None:
            return
        shard = meta.shards[index]
        pieces = shard_pieces(shard)
        files = (f"{meta.name}/{meta.files[shard.file_index].path}",)   # relative to data_dir
        self.index.begin_fetch(ih, index, pieces, files, str(self.data_dir), shard.length, now_ms())
        self.torrents.fetch(meta.torrent, self.data_dir, pieces, self.sources(info_hash, index))
        log.info("fetching shard %s/%d (%d bytes, %d pieces)%s", ih[:12], index, shard.length, len(pieces),
                 f", attempt {failure.attempts + 1} after {failure.cause}" if failure else "")

    def disk_free(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def pending_fetch_bytes(self) -> int:
        """What the downloads under way may still write (counted in full: a conservative
        guess that keeps retries from racing each other for the same free space)."""
        return sum(r.size for r in self.index.shards(ShardState.FETCHING))

    def watch_fetch(self, rec, sources: list[tuple[str, int]]) -> None:
        """Keep a download moving: dial the holders again, and restart it (with a log line
        saying what libtorrent looked like) when it made no progress for a while. A torrent
        libtorrent stopped on an error is not restarted here: that is a failed fetch."""
        now = now_ms()
        have = self.torrents.progress(rec.info_hash, rec.pieces)[0]
        last = self._fetch_progress.get((rec.info_hash, rec.shard))
        error = self.torrents.error(rec.info_hash)
        if error is not None and last is not None and now - last[1] > FETCH_STALL_MS:
            # Normally failed on its FileFailed/TorrentFailed events, which say why (and
            # may still be queued now, hence the wait); this catches a torrent stopped
            # without them, e.g. before the event stream was attached at start-up.
            cause, detail, disk_full = self.stop_cause(rec.info_hash, error, False)
            self.fail_fetches(rec.info_hash, [rec], cause, detail, disk_full=disk_full)
        elif error is not None:
            self._fetch_progress.setdefault((rec.info_hash, rec.shard), (have, now))
        elif last is None or last[0] != have:
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
            if rec.state == ShardState.LOST:
                if on_chain:
                    self.send_lost_drop(rec.info_hash, rec.shard)   # (again, if it did not land)
                elif ref not in assigned:
                    to_drop.setdefault(rec.info_hash, []).append(rec.shard)   # forget it for good
                continue       # assigned again: start_fetch re-fetches it from scratch
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

    # ------------------------------------------------------------------ damaged or failed shards

    def shard_lost(self, ih: str, shard: int, reason: str) -> None:
        """A shard we hold turned out damaged or gone on disk (self-check or proof build).

        What we do, chosen over repairing the bad pieces in place: stop claiming it, send a
        Holding DROP so the chain counts one copy fewer and the targets re-create it on
        chain (possibly here again), and discard the local copy (libtorrent forgets its
        pieces, the bytes are freed). If the targets assign it back, it is fetched whole
        and clean like any new shard. Simple and robust: no byte of a copy that failed a
        check is trusted again, the chain never counts a copy that cannot answer, and an
        open challenge on it closes with the DROP instead of turning into a MISS.
        """
        rec = self.index.get(ih, shard)
        if rec is None or rec.state not in (ShardState.HELD, ShardState.DROPPING):
            return
        log.error("shard %s/%d is damaged on disk (%s): dropping it on chain and discarding the local copy",
                  ih[:12], shard, reason)
        self.self_checks["lost"] += 1
        rec = self.index.mark_lost(ih, shard, reason[:200], now_ms())
        self.send_lost_drop(ih, shard)
        self.guarded(self.discard_copy, rec)
        self.schedule_reconcile()

    def send_lost_drop(self, ih: str, shard: int) -> None:
        key = ("drop", ih, shard)
        if self.holder_entry(bytes.fromhex(ih), shard) is not None and self.should_send(key):
            self.submit(key, Holding(self.me, bytes.fromhex(ih), shard, DROP, self.next_seq()))

    def discard_copy(self, rec: ShardRecord, only_if_held: bool = False) -> None:
        """Make libtorrent forget a lost shard's pieces (and free their bytes), so neither
        serving nor a later fetch builds on them. `only_if_held`: skip when libtorrent
        already holds none of them (a discard done before)."""
        if rec.info_hash not in self.torrents.torrents():
            return
        if only_if_held and self.torrents.progress(rec.info_hash, rec.pieces)[0] == 0:
            return
        self.torrents.drop_pieces(rec.info_hash, rec.pieces)

    def fail_fetches(self, ih: str, recs: list[ShardRecord], cause: str, detail: str, *, disk_full: bool) -> None:
        """Stop downloads (of one torrent) that hit a file error: discard what they wrote
        (on a full disk that is space back), never claim them, retry later with backoff."""
        now = now_ms()
        for rec in recs:
            key = (rec.info_hash, rec.shard)
            old = self.fetch_failures.get(key)
            attempts = (old.attempts if old else 0) + 1
            failure = FetchFailure(cause, detail[:300], attempts, now, now + retry_delay_ms(attempts),
                                   rec.size, disk_full, self.disk_free())
            self.fetch_failures[key] = failure
            self._fetch_progress.pop(key, None)
            log.error("cannot fetch shard %s/%d: %s (%s); partial download discarded, attempt %d in %d s%s",
                      ih[:12], rec.shard, cause, detail, attempts + 1, (failure.retry_at - now) // 1000,
                      " or once the disk has room" if disk_full else "")
        self.drop_local(ih, [rec.shard for rec in recs])   # one libtorrent re-add for all of them
        free = self.disk_free()      # now with the partial data gone: the baseline for "space came back"
        for rec in recs:
            key = (rec.info_hash, rec.shard)
            self.fetch_failures[key] = replace(self.fetch_failures[key], free_after=free)

    def on_torrent_error(self, ev: FileFailed | TorrentFailed) -> None:
        """A libtorrent file or torrent error: fail the downloads it hit, and check the held
        shards it may have hit (a read error while serving). One burst of failed writes
        brings many events; once its downloads are failed and dropped the rest find
        nothing left to act on."""
        ih = ev.info_hash
        if ih not in self.torrents.torrents():
            return
        path = os.path.abspath(ev.path) if isinstance(ev, FileFailed) else None

        def hit(rec: ShardRecord) -> bool:
            return path is None or any(os.path.abspath(os.path.join(rec.save_path, f)) == path for f in rec.files)

        fetching = list(self.index.shards(ShardState.FETCHING, ih))
        held = [r for r in self.index.shards(ShardState.HELD, ih) if hit(r)]
        failed = [r for r in fetching if hit(r)]
        if not failed and self.torrents.error(ih) is not None:
            # The torrent is stopped (or in upload mode) right now, which stalls every
            # download in it; failing them re-adds it clean. (Once an earlier event's
            # failures re-added it, later events of the same burst find it running.)
            failed = fetching
        if isinstance(ev, FileFailed):
            cause, detail, disk_full = "disk full" if ev.disk_full else "file error", ev.message, ev.disk_full
            if disk_full:
                self._disk_full_seen[ih] = (now_ms(), ev.message)
        else:
            cause, detail, disk_full = self.stop_cause(ih, ev.message, ev.disk_full)
        if failed:
            self.fail_fetches(ih, failed, cause, detail, disk_full=disk_full)
        for rec in held:
            key = (rec.info_hash, rec.shard)
            if key not in self._check_urgent:
                self._check_urgent.append(key)
        if not failed and not held and isinstance(ev, FileFailed) and self._unmatched_warned.get(ih, 0) < now_ms() - 60_000:
            # Usually the tail of a burst whose downloads were already failed; said once a minute.
            self._unmatched_warned[ih] = now_ms()
            log.warning("file error in collection %s matches no shard of ours: %s", ih[:12], ev.message)
        if ih in self.torrents.torrents() and self.torrents.error(ih) is not None and ih not in self._torrent_errors:
            # Nothing left to drop re-adds the torrent, so it stays stopped (serving none
            # of its shards) until cleared: the self-check looks at its held shards first.
            log.error("collection %s stopped on an error (%s); restarting it in %d s",
                      ih[:12], self.torrents.error(ih), TORRENT_ERROR_RETRY_MS // 1000)
            self._torrent_errors[ih] = (1, now_ms() + TORRENT_ERROR_RETRY_MS)

    def stop_cause(self, ih: str, message: str, disk_full: bool) -> tuple[str, str, bool]:
        """(cause, detail, disk full?) of a stopped torrent. libtorrent stops a torrent
        whose writes failed with an error of its own (e.g. "v1 and v2 hashes do not
        describe the same data"): the cause people need to see is the full disk that came
        just before, if one did."""
        seen = self._disk_full_seen.get(ih)
        if not disk_full and seen is not None and now_ms() - seen[0] < DISK_FULL_BLAME_MS:
            return "disk full", seen[1], True
        return ("disk full" if disk_full else "torrent stopped"), message, disk_full

    def restart_stopped_torrents(self) -> None:
        now = now_ms()
        for ih, (attempts, due) in list(self._torrent_errors.items()):
            if ih not in self.torrents.torrents() or (now >= due and self.torrents.error(ih) is None):
                del self._torrent_errors[ih]    # gone, or ran clean until the next retry would be due
            elif now >= due:
                log.info("restarting collection %s after its error (attempt %d)", ih[:12], attempts)
                self.torrents.clear_error(ih)
                self._torrent_errors[ih] = (attempts + 1, now + retry_delay_ms(attempts + 1))

    # ------------------------------------------------------------------ self-check

    def next_to_check(self) -> ShardRecord | None:
        """The next held shard to self-check: urgent ones first, then round robin over
        every held shard in canonical order (a new pass starts when one ends)."""
        while self._check_urgent:
            rec = self.checkable(*self._check_urgent.popleft())
            if rec is not None:
                return rec
        if not self._check_round:
            self._check_round = [(r.info_hash, r.shard) for r in self.index.shards(ShardState.HELD)]
            self._check_round.reverse()      # popped from the end: canonical order
        while self._check_round:
            rec = self.checkable(*self._check_round.pop())
            if rec is not None:
                return rec
        return None

    def checkable(self, ih: str, shard: int) -> ShardRecord | None:
        rec = self.index.get(ih, shard)
        if rec is None or rec.state != ShardState.HELD or self.proof_in_flight(ih, shard):
            return None
        return rec

    def proof_in_flight(self, ih: str, shard: int) -> bool:
        """We answered an open challenge on this shard: its verdict is about to land, and a
        DROP now would close the challenge unjudged. It is checked on a later pass."""
        info_hash = bytes.fromhex(ih)
        return any(e.collection == info_hash and e.shard == shard and cid in self.answered
                   for cid, e in get_open_challenges_for_peer(self.state, self.me))

    async def self_check_once(self) -> int:
        """Check one held shard; returns the bytes read (to pace the next check)."""
        rec = self.next_to_check()
        if rec is None:
            return 0
        meta = self.collection_meta(bytes.fromhex(rec.info_hash))
        if meta is None or rec.shard >= len(meta.shards):
            return 0
        checker = PieceChecker(self.data_dir, meta, meta.shards[rec.shard])
        # The record as this node lays files out (older records stored paths without the
        # collection's directory): the check must look where proofs read from.
        view = replace(rec, files=(checker.rel_path,), save_path=str(self.data_dir))
        result: CheckResult = await asyncio.to_thread(
            check_shard, view, checker.read, checker.expected, samples=SELF_CHECK_SAMPLES,
            seed=os.urandom(16), digest=checker.digest)
        self.self_checks["checked"] += 1
        now = self.index.get(rec.info_hash, rec.shard)
        if not result.ok and now is not None and now.state == ShardState.HELD and now.updated_at == rec.updated_at:
            # (Still the copy that was checked: not dropped or re-fetched meanwhile.)
            self.shard_lost(rec.info_hash, rec.shard, f"self-check: {result.reason}")
        return len(result.checked) * meta.piece_length

    async def _self_check_loop(self) -> None:
        while True:
            read = 0
            if not self.syncer.is_syncing:
                read = await self.self_check_once()
            await asyncio.sleep(max(SELF_CHECK_MIN_INTERVAL_S, read / SELF_CHECK_BYTES_PER_S))

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
            # No valid proof can come from this copy: drop it (the DROP also closes this
            # challenge) rather than let the deadline pass as a MISS.
            self.shard_lost(rec.info_hash, entry.shard, f"proof of leaf {entry.leaf}: {exc}")
            return None
        return make_proof_answer(self.key, self.chain_id, get_challenge_from_entry(challenge_id, entry), proof)

    # ------------------------------------------------------------------ torrent events

    async def _torrent_events(self) -> None:
        async for ev in self.torrents.events():
            if isinstance(ev, ShardComplete):
                self.guarded(self.on_shard_complete, ev)
                self.schedule_reconcile()
            elif isinstance(ev, HashFailed):
                log.warning("piece %d of %s failed its hash check", ev.piece, ev.info_hash[:12])
            elif isinstance(ev, (FileFailed, TorrentFailed)):
                self.guarded(self.on_torrent_error, ev)
                self.schedule_reconcile()

    def on_shard_complete(self, ev: ShardComplete) -> None:
        done = [rec for rec in self.index.shards(ShardState.FETCHING, ev.info_hash)
                if set(rec.pieces) <= set(ev.pieces) or self.torrents.has_pieces(rec.info_hash, rec.pieces)]
        if not done:
            return
        try:
            # Persist before we speak: libtorrent's resume data must know these pieces
            # before the index says held (and a claim goes out), or a crash leaves a stale
            # resume file behind and the restarted peer downloads them all again.
            self.torrents.save_resume_data(only=[ev.info_hash])
        except StorageError as exc:
            # The data is on disk and verified, so the shard is held all the same; at worst
            # a crash before the next save costs a re-check or a re-download.
            log.error("could not save resume data of %s: %s", ev.info_hash[:12], exc)
        for rec in done:
            self.index.mark_held(rec.info_hash, rec.shard, now_ms())
            self.fetch_failures.pop((rec.info_hash, rec.shard), None)
            log.info("shard %s/%d complete and verified", rec.info_hash[:12], rec.shard)

    def reseed_held(self) -> None:
        """After a restart: serve every shard the index says we hold, and make sure none
        that was lost is served from the resume data."""
        for rec in self.index.shards(ShardState.LOST):
            self.guarded(self.discard_copy, rec)
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
        self._spawn(self._self_check_loop())
        self.schedule_reconcile()

    def on_tick(self) -> None:
        # Reconcile also without new blocks, e.g. once the first links are up.
        if now_ms() % 2000 < 260:
            self.schedule_reconcile()
        if self._torrent_errors:
            self.guarded(self.restart_stopped_torrents)

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
