"""The libtorrent adapter: one BitTorrent session per node, behind our own API and events.

Nothing outside this module touches libtorrent alerts. Alerts are converted, as soon as
they are popped, into the frozen dataclass events below: a libtorrent alert object is only
valid until the next `pop_alerts()` (reading one later segfaults), so no alert escapes.

Asyncio integration uses libtorrent's alert fd: libtorrent writes a byte into a pipe when
its alert queue turns non-empty, and the loop watches the read end with `add_reader`.
This is the C++ form of `set_alert_notify` (the notify callback writes the byte) with no
Python callback running on a libtorrent thread, so shutdown cannot deadlock on the GIL.
Synchronous callers (tests, tools) wait with `session.wait_for_alert`; both paths feed
the same `_process_alerts`, so no event is lost whichever path popped it.

Transport is TCP: over loopback uTP measured 16x slower, so uTP is disabled. No DHT, LSD,
UPnP, NAT-PMP or trackers: peers are always given explicitly (from chain state).

A "shard" here is just a set of global piece indices of a hybrid torrent; the mapping
from shards to pieces lives elsewhere. Torrents are keyed by their v2 info hash in hex
(v1 for a v1-only torrent), the same key the chain and the local index use.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

from storage.errors import StorageError, TorrentError

__all__ = [
    "Event", "FileFailed", "HashFailed", "ListenFailed", "PeerConnected",
    "PeerDisconnected", "PieceFinished", "ReclaimError", "ResumeRejected",
    "SessionError", "ShardComplete", "StateChanged", "StatsUpdate", "TorrentFailed",
    "TorrentFinished", "TorrentRemoved", "TorrentSession", "UnknownTorrent",
    "info_hash_of", "parse_torrent_info", "punch_hole", "session_settings",
]


# ---------------------------------------------------------------- errors

class SessionError(StorageError):
    """The BitTorrent session could not do what was asked (listen, wait, persist)."""


class ListenFailed(SessionError):
    """The session could not bind its listen socket."""


class UnknownTorrent(SessionError):
    """An operation named an info hash this session does not hold."""


class ReclaimError(SessionError):
    """Disk space of dropped pieces could not be given back (delete or hole punch failed)."""


# ---------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class PieceFinished:
    """A piece downloaded and passed its hash check (it now counts as held)."""
    info_hash: str
    piece: int


@dataclass(frozen=True, slots=True)
class HashFailed:
    """A downloaded piece failed its hash check; it is not held and will be re-fetched."""
    info_hash: str
    piece: int


@dataclass(frozen=True, slots=True)
class ShardComplete:
    """Every piece of a set asked for with `fetch` (or `seed`) is verified and in its file.

    Sent only after a disk flush: libtorrent reports a piece as passed while its blocks
    may still sit in its write queue (seen here: 1 run in 12 had a verified piece not yet
    in the file), and whoever reacts to this event reads the files to build proofs.
    """
    info_hash: str
    pieces: frozenset[int]


@dataclass(frozen=True, slots=True)
class TorrentFinished:
    """Every wanted piece of the torrent (all fetches together) is held."""
    info_hash: str


class _OsError:
    """For error events that carry `os_errno` (0 when the cause was not a system error)."""
    __slots__ = ()

    @property
    def disk_full(self) -> bool:
        return self.os_errno in _DISK_FULL_ERRNOS


@dataclass(frozen=True, slots=True)
class TorrentFailed(_OsError):
    """libtorrent stopped the torrent on an error (it is paused until cleared)."""
    info_hash: str
    message: str
    os_errno: int = 0


@dataclass(frozen=True, slots=True)
class FileFailed(_OsError):
    """Reading or writing one of the torrent's files failed (`path` is absolute)."""
    info_hash: str
    path: str
    message: str
    os_errno: int = 0  # errno.ENOSPC on a full disk


@dataclass(frozen=True, slots=True)
class ResumeRejected:
    """Saved resume data was unusable; libtorrent falls back to a full hash check."""
    info_hash: str
    message: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    info_hash: str
    state: str
    previous: str


@dataclass(frozen=True, slots=True)
class PeerConnected:
    info_hash: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    info_hash: str
    host: str
    port: int
    reason: str


@dataclass(frozen=True, slots=True)
class TorrentRemoved:
    info_hash: str


@dataclass(frozen=True, slots=True)
class StatsUpdate:
    """Per-torrent counters; rates in payload bytes per second, progress in ppm of wanted."""
    info_hash: str
    download_rate: int
    upload_rate: int
    progress_ppm: int
    total_download: int
    total_upload: int
    num_peers: int


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _os_errno(ec: object) -> int:
    """The errno of a libtorrent error_code, or 0 if it is not an OS (system/generic) error."""
    return int(ec.value()) if ec.category().name() in ("system", "generic") else 0


Event = (PieceFinished | HashFailed | ShardComplete | TorrentFinished | TorrentFailed
         | FileFailed | ResumeRejected | StateChanged | PeerConnected | PeerDisconnected
         | TorrentRemoved | StatsUpdate)

PieceSet = frozenset[int]
Peer = tuple[str, int]

# Alerts we turn into events or need internally; block-level and log categories are left
# off because at one alert per 16 KiB block they cost more than the transfer they report.
_ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
               | lt.alert_category.connect | lt.alert_category.piece_progress
               | lt.alert_category.file_progress | lt.alert_category.peer)

_SYNC_EVENT_BACKLOG = 100_000   # bounded: an async-only user never drains the sync buffer
_WAIT_SLICE_S = 0.25            # longest single wait_for_alert, so predicates on status re-check
_RESUME_SUFFIX = ".resume"


def session_settings(listen_host: str, listen_port: int) -> dict[str, object]:
    """The libtorrent settings of every cairn session (the bench's raw sessions reuse them)."""
    return {
        "listen_interfaces": f"{listen_host}:{listen_port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Several peers share one host on a test network, and on loopback.
        "allow_multiple_connections_per_ip": True,
        # A storage peer holds many torrents at once; no queueing may park one of them.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_checking": 2,
        "active_limit": -1,
        # Finished torrents drop peers they have no use for; when a later fetch wants more,
        # the same peers must be dialled again at once, not after the default 60 s.
        "min_reconnect_time": 1,
        # Keep links between peers that have nothing to trade right now: a shard fetched
        # later from the same holders then starts at once on the open connection.
        "close_redundant_connections": False,
        # Serving is the job here, not tit-for-tat: every interested peer gets unchoked.
        "unchoke_slots_limit": -1,
        "user_agent": "cairn/0.1",
        "alert_mask": int(_ALERT_MASK),
        "alert_queue_size": 100_000,
    }


# ---------------------------------------------------------------- torrent metadata helpers

def parse_torrent_info(torrent_bytes: bytes) -> lt.torrent_info:
    """Parse .torrent bytes, or raise TorrentError naming the problem."""
    if not isinstance(torrent_bytes, (bytes, bytearray)) or not torrent_bytes:
        raise TorrentError("torrent metadata must be non-empty bytes")
    try:
        return lt.torrent_info(bytes(torrent_bytes))
    except RuntimeError as exc:
        raise TorrentError(f"invalid torrent metadata: {exc}") from exc


def _key(hashes: lt.info_hash_t) -> str:
    return str(hashes.v2) if hashes.has_v2() else str(hashes.v1)


def info_hash_of(torrent_bytes: bytes) -> str:
    """The key of a torrent: v2 info hash hex (v1 hex for a v1-only torrent)."""
    return _key(parse_torrent_info(torrent_bytes).info_hashes())


def _normalize(pieces: Iterable[int], num_pieces: int) -> PieceSet:
    out = frozenset(int(p) for p in pieces)
    bad = [p for p in out if not 0 <= p < num_pieces]
    if bad:
        raise TorrentError(f"piece indices out of range 0..{num_pieces - 1}: {sorted(bad)[:5]}")
    return out


@dataclass(frozen=True, slots=True)
class _FileSpan:
    """A real (non-pad) file and the global pieces that touch it."""
    index: int
    path: str
    offset: int       # offset of the file in the torrent's byte stream
    size: int
    first_piece: int
    last_piece: int   # inclusive


def _file_spans(ti: lt.torrent_info) -> list[_FileSpan]:
    fs = ti.layout()
    plen = ti.piece_length()
    spans = []
    for i in range(fs.num_files()):
        size = fs.file_size(i)
        if fs.file_flags(i) & lt.file_storage.flag_pad_file or size == 0:
            continue
        off = fs.file_offset(i)
        spans.append(_FileSpan(i, fs.file_path(i), off, size, off // plen, (off + size - 1) // plen))
    return spans


# ---------------------------------------------------------------- disk reclaim

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(path: Path, offset: int, length: int) -> None:
    """Deallocate a byte range of a file, keeping its size (reads return zeros)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        if rc != 0:
            err = ctypes.get_errno()
            raise ReclaimError(f"punching a hole in {path} at {offset}+{length}: {os.strerror(err)}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _ranges(sorted_pieces: list[int]) -> list[tuple[int, int]]:
    """Coalesce sorted piece indices into inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for p in sorted_pieces:
        if runs and runs[-1][1] == p - 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)   # the rename itself must survive a crash
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- the session

@dataclass(slots=True)
class _Torrent:
    handle: lt.torrent_handle
    ti: lt.torrent_info
    save_path: Path
    # Outstanding fetch sets -> pieces of the set not yet verified.
    watches: dict[PieceSet, set[int]] = field(default_factory=dict)
    # Verified sets waiting for the disk flush numbered `seq` to finish.
    flushing: list[tuple[int, PieceSet]] = field(default_factory=list)
    flush_requested: int = 0
    flush_done: int = 0
    # Our own record of the piece priorities we set. libtorrent applies priority changes
    # asynchronously, so reading them back right after a change can return the old ones;
    # building on a stale read would silently un-want a shard being fetched.
    prios: list[int] = field(default_factory=list)


class TorrentSession:
    """One libtorrent session: seed, fetch piece sets, drop them, persist resume data."""

    def __init__(self, listen_host: str, listen_port: int, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._torrents: dict[str, _Torrent] = {}
        self._sync_events: deque[Event] = deque(maxlen=_SYNC_EVENT_BACKLOG)
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._resume_bufs: dict[str, bytes | str] = {}   # key -> resume bytes, or error text
        self._removed: set[str] = set()
        self._listen: tuple[int, str | None] | None = None  # (port, error)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipe: tuple[int, int] | None = None
        self._closed = False
        self._retired_download = 0   # payload bytes of torrent handles since removed
        self._ses = lt.session(session_settings(listen_host, listen_port))
        self.port = self._await_listen(listen_host)
        self._load_resume_files()

    # ------------------------------------------------ start-up

    def _await_listen(self, host: str) -> int:
        # listen_port() can read 0 until the socket is bound; the alert says which.
        if not self.wait_until(lambda: self._listen is not None, 10.0):
            raise ListenFailed(f"no listen result for {host} within 10 s")
        assert self._listen is not None
        port, err = self._listen
        if err is not None:
            raise ListenFailed(f"cannot listen on {host}: {err}")
        return port

    def _load_resume_files(self) -> None:
        for path in sorted(self.state_dir.glob("*" + _RESUME_SUFFIX)):
            try:
                atp = lt.read_resume_data(path.read_bytes())
                if atp.ti is None or not atp.ti.is_valid():
                    raise RuntimeError("resume data carries no torrent metadata")
            except RuntimeError as exc:
                # A torn or foreign file must not keep the node from starting; it is moved
                # aside (not deleted: an operator may want it) and reported as an event.
                path.replace(path.with_name(path.name + ".bad"))
                self._emit(ResumeRejected(path.stem, f"{path.name}: {exc}"))
                continue
            self._add(atp, atp.ti)

    # ------------------------------------------------ public operations

    def seed(self, torrent_bytes: bytes, save_path: Path, pieces: Iterable[int] | None = None) -> str:
        """Serve data already on disk (all pieces unless `pieces` given); returns the key.

        Without resume data libtorrent hash-checks the files first, so only verified pieces
        are ever announced; with resume data (a restart) nothing is re-hashed.
        """
        ti = parse_torrent_info(torrent_bytes)
        want = _normalize(range(ti.num_pieces()) if pieces is None else pieces, ti.num_pieces())
        return self._want(ti, Path(os.path.abspath(save_path)), want, [])

    def fetch(self, torrent_bytes: bytes, save_path: Path, pieces: Iterable[int],
              peers: Iterable[Peer]) -> str:
        """Download exactly `pieces` (global indices) from `peers`; returns the key.

        Other pieces get priority 0, and files without wanted pieces priority 0 so they are
        never created. Calling again extends the wanted set; pass the peers again, since
        libtorrent closes connections to peers it no longer needs once a set is done.
        A ShardComplete event fires
        once all of `pieces` are verified (at once if they already are).
        """
        ti = parse_torrent_info(torrent_bytes)
        want = _normalize(pieces, ti.num_pieces())
        if not want:
            raise TorrentError("fetch needs at least one piece")
        return self._want(ti, Path(os.path.abspath(save_path)), want, list(peers))

    def add_peers(self, info_hash: str, peers: Iterable[Peer]) -> None:
        t = self._get(info_hash)
        for host, port in peers:
            t.handle.connect_peer((host, int(port)))

    def kick(self, info_hash: str, peers: Iterable[Peer]) -> str:
        """Restart a stalled download: re-assert our piece priorities, bounce the torrent's
        connections and dial the peers again. Returns what the torrent looked like."""
        t = self._get(info_hash)
        st = t.handle.status()
        wanted = [p for p, prio in enumerate(t.prios) if prio > 0]
        missing = [p for p in wanted if not (st.pieces and st.pieces[p])]
        libtorrent_prios = t.handle.get_piece_priorities()
        lost = [p for p in missing if libtorrent_prios[p] == 0]
        picture = (f"state={st.state} peers={st.num_peers} seeds={st.num_seeds} missing={missing[:8]} "
                   f"priority-lost={lost[:8]}")
        if t.prios:
            t.handle.prioritize_pieces(t.prios)
        t.handle.unset_flags(lt.torrent_flags.upload_mode)
        t.handle.pause()
        t.handle.resume()
        for host, port in peers:
            t.handle.connect_peer((host, int(port)))
        return picture

    def error(self, info_hash: str) -> str | None:
        """Why libtorrent stopped the torrent (a TorrentFailed) or stopped its downloads
        (upload mode, after a write failed), or None if it runs."""
        st = self._get(info_hash).handle.status()
        if st.errc.value():
            return st.errc.message()
        if st.flags & lt.torrent_flags.upload_mode:
            return "downloads stopped after a write failed (upload mode)"
        return None

    def clear_error(self, info_hash: str) -> None:
        """Let a torrent stopped on an error run again (it serves and fetches once more)."""
        t = self._get(info_hash)
        t.handle.clear_error()
        t.handle.unset_flags(lt.torrent_flags.upload_mode)
        t.handle.resume()

    def downloaded_bytes(self) -> int:
        """Payload bytes downloaded by this session since it started, over all torrents
        (also those removed or re-added since, e.g. by drop_pieces)."""
        return self._retired_download + sum(t.handle.status().total_payload_download
                                            for t in self._torrents.values())

    def has_pieces(self, info_hash: str, pieces: Iterable[int]) -> bool:
        """True only if every piece is held and passed libtorrent's hash check."""
        t = self._get(info_hash)
        want = _normalize(pieces, t.ti.num_pieces())
        bits = self._have_bits(t)
        return all(bits[p] for p in want) if bits else not want

    def progress(self, info_hash: str, pieces: Iterable[int]) -> tuple[int, int, int, int]:
        """(verified pieces of the set, size of the set, download B/s, upload B/s)."""
        t = self._get(info_hash)
        want = _normalize(pieces, t.ti.num_pieces())
        st = t.handle.status(lt.status_flags_t.query_pieces)
        bits = st.pieces
        have = sum(1 for p in want if bits and bits[p])
        return have, len(want), st.download_payload_rate, st.upload_payload_rate

    def stats(self, info_hash: str) -> StatsUpdate:
        """A snapshot of the torrent's counters, now (StatsUpdate events come via request_stats)."""
        return self._stats_of(info_hash, self._get(info_hash).handle.status())

    def request_stats(self) -> None:
        """Ask libtorrent for StatsUpdate events of every torrent whose status changed."""
        self._ses.post_torrent_updates()

    def torrents(self) -> list[str]:
        return sorted(self._torrents)

    def save_path(self, info_hash: str) -> Path:
        return self._get(info_hash).save_path

    def flush(self, info_hash: str, timeout: float = 30.0) -> None:
        """Return once every piece `has_pieces` reports is readable from the files.

        libtorrent marks a piece verified from its in-memory blocks, possibly before the
        write reaches the file; a flush is a fence behind all of the torrent's disk writes.
        """
        t = self._get(info_hash)
        seq = self._request_flush(t)
        if not self.wait_until(lambda: t.flush_done >= seq, timeout):
            raise SessionError(f"disk flush of {info_hash} not done within {timeout} s")

    def drop_pieces(self, info_hash: str, pieces: Iterable[int], timeout: float = 30.0) -> None:
        """Stop holding `pieces` and give their disk space back.

        Files none of whose pieces are still held or wanted are deleted; otherwise the
        dropped ranges are hole-punched. libtorrent has no call to forget a verified
        piece, so the torrent is removed and re-added from edited resume data (its
        remaining pieces are not re-hashed). With nothing left the torrent is gone.
        """
        key = info_hash
        t = self._get(key)
        drop = _normalize(pieces, t.ti.num_pieces())
        if not drop:
            return
        self._await_loaded(t, timeout)
        n = t.ti.num_pieces()
        # Stop traffic first so no write for a dropped piece can land after the punch; the
        # flush inside the resume-data request is a fence behind every earlier write.
        t.handle.pause()
        try:
            atp = lt.read_resume_data(self._resume_now(key, timeout))
        except SessionError:
            t.handle.resume()   # nothing was changed yet: keep serving what we hold
            raise
        atp.flags &= ~lt.torrent_flags.paused
        # The paused handle is the authority on what is held and wanted (resume data of a
        # seed may leave these fields empty); the resume data supplies everything else.
        have = list(self._have_bits(t)) or [False] * n
        prios = list(t.prios) or list(t.handle.get_piece_priorities())
        fprios = list(t.handle.get_file_priorities())
        for p in drop:
            have[p] = False
            prios[p] = 0
        keep = {p for p in range(n) if have[p] or prios[p] > 0}
        spans = _file_spans(t.ti)
        gone = [s for s in spans if not any(p in keep for p in range(s.first_piece, s.last_piece + 1))]
        resume_path = self._resume_path(key)
        if not keep:
            # Forget it on disk first: a crash from here on must not resurrect the torrent.
            resume_path.unlink(missing_ok=True)
            self._remove(key, timeout)
            self._delete_files(t.save_path, gone)
            return
        atp.have_pieces = have
        if len(atp.verified_pieces):
            atp.verified_pieces = [bool(v) and have[i] for i, v in enumerate(atp.verified_pieces)]
        atp.unfinished_pieces = {p: m for p, m in dict(atp.unfinished_pieces).items() if p not in drop}
        for s in gone:
            fprios[s.index] = 0
        atp.file_priorities = fprios
        atp.piece_priorities = prios
        # Persist the smaller holding before touching the data: a crash in between leaves
        # surplus bytes on disk, never a resume file that claims punched-out pieces.
        _atomic_write(resume_path, lt.write_resume_data_buf(atp))
        watches = t.watches
        self._remove(key, timeout)
        self._delete_files(t.save_path, gone)
        gone_idx = {s.index for s in gone}
        plen = t.ti.piece_length()
        for s in spans:
            if s.index in gone_idx:
                continue
            mine = sorted(p for p in drop if s.first_piece <= p <= s.last_piece)
            for first, last in _ranges(mine):
                start = first * plen - s.offset
                end = min((last + 1) * plen - s.offset, s.size)
                path = t.save_path / s.path
                if path.exists():
                    punch_hole(path, start, end - start)
        self._add(atp, t.ti)
        new = self._torrents[key]
        new.watches = {ws: rem for ws, rem in watches.items() if not (ws & drop)}

    def save_resume_data(self, timeout: float = 30.0, only: Iterable[str] | None = None) -> int:
        """Write every torrent's resume file (or only those of `only`) into state_dir
        atomically; returns how many."""
        keys = list(self._torrents) if only is None else list(dict.fromkeys(only))
        for key in keys:
            self._get(key)   # UnknownTorrent before anything is written
        # Flush first (a fence behind every write), so no resume file claims a piece whose
        # bytes are not yet in its file.
        fences = {key: self._request_flush(self._torrents[key]) for key in keys}
        for key, seq in fences.items():
            t = self._torrents[key]
            if not self.wait_until(lambda t=t, seq=seq: t.flush_done >= seq, timeout):
                raise SessionError(f"disk flush of {key} not done within {timeout} s")
        for key in keys:
            self._request_resume(key)
        for key in keys:
            _atomic_write(self._resume_path(key), self._await_resume(key, timeout))
        return len(keys)

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Process pending alerts (waiting up to `timeout` for one); return buffered events."""
        if self._closed:
            raise SessionError("session is closed")
        if timeout > 0:
            self._ses.wait_for_alert(int(timeout * 1000))
        self._process_alerts()
        out = list(self._sync_events)
        self._sync_events.clear()
        return out

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Process alerts until `predicate()` holds or `timeout` passes (no sleeping)."""
        deadline = time.monotonic() + timeout
        while True:
            self._process_alerts()
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._ses.wait_for_alert(max(1, int(min(left, _WAIT_SLICE_S) * 1000)))

    def close(self, save: bool = True) -> None:
        """Save resume data (unless told not to) and shut the session down."""
        if self._closed:
            return
        if save and self._torrents:
            self.save_resume_data()
        self.detach()
        self._closed = True
        self._ses.pause()
        del self._ses   # joins libtorrent's threads; the alert pipe must outlive them
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    # ------------------------------------------------ asyncio

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Wake `loop` through the alert fd whenever libtorrent has alerts."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise SessionError("session already attached to another event loop")
        if self._pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)   # a full pipe must never block libtorrent's thread
            self._pipe = (r, w)
            self._ses.set_alert_fd(w)
        self._loop = loop
        loop.add_reader(self._pipe[0], self._on_alert_fd)
        # Alerts that arrived before attaching did not write to the pipe: handle them now.
        loop.call_soon(self._process_alerts)

    def detach(self) -> None:
        if self._loop is not None and self._pipe is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._pipe[0])
        self._loop = None

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on, as they happen (attaches to the running loop)."""
        self.attach()
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Async form of wait_until: re-check `predicate` after every batch of events."""
        self.attach()
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await q.get()
            return True
        except TimeoutError:
            return False
        finally:
            self._subscribers.remove(q)

    def _on_alert_fd(self) -> None:
        assert self._pipe is not None
        try:
            while os.read(self._pipe[0], 4096):
                pass
        except BlockingIOError:
            pass   # pipe drained: exactly the state we want
        self._process_alerts()

    # ------------------------------------------------ internals

    def _get(self, key: str) -> _Torrent:
        if self._closed:
            raise SessionError("session is closed")
        try:
            return self._torrents[key]
        except KeyError:
            raise UnknownTorrent(f"no torrent {key} in this session") from None

    def _resume_path(self, key: str) -> Path:
        return self.state_dir / (key + _RESUME_SUFFIX)

    def _want(self, ti: lt.torrent_info, save_path: Path, want: PieceSet, peers: list[Peer]) -> str:
        key = _key(ti.info_hashes())
        t = self._torrents.get(key)
        if t is None:
            atp = lt.add_torrent_params()
            atp.ti = ti
            atp.save_path = str(save_path)
            prios = [1 if p in want else 0 for p in range(ti.num_pieces())]
            atp.file_priorities = self._file_prios(ti, prios)
            atp.piece_priorities = prios
            atp.peers = [(h, int(p)) for h, p in peers]
            t = self._add(atp, ti)
        else:
            if Path(t.save_path) != save_path:
                raise SessionError(f"torrent {key} is already held under {t.save_path}")
            self._await_loaded(t, 30.0)
            if want and t.handle.flags() & lt.torrent_flags.upload_mode:
                t.handle.unset_flags(lt.torrent_flags.upload_mode)   # a new ask: download again (see _add)
            prios = list(t.prios) or list(t.handle.get_piece_priorities())
            if any(prios[p] == 0 for p in want):
                for p in want:
                    prios[p] = max(prios[p], 1)
                self._open_files(t, ti, prios)
                t.handle.prioritize_pieces(prios)
                t.prios = prios
            for host, port in peers:
                t.handle.connect_peer((host, int(port)))
        self._watch(key, t, want)
        return key

    @staticmethod
    def _file_prios(ti: lt.torrent_info, piece_prios: list[int]) -> list[int]:
        fprios = [0] * ti.layout().num_files()
        for s in _file_spans(ti):
            if any(piece_prios[p] for p in range(s.first_piece, s.last_piece + 1)):
                fprios[s.index] = 4
        return fprios

    def _open_files(self, t: _Torrent, ti: lt.torrent_info, prios: list[int], timeout: float = 30.0) -> None:
        """Raise to 1 the priority of files that get wanted pieces, and wait until it took.

        libtorrent applies a file priority after a disk-thread round trip, and applying it
        sets every piece of the file to that priority: a prioritize_pieces issued before it
        lands would be overwritten and the whole file fetched. So only files whose priority
        changes are touched, and piece priorities are set once the change is visible."""
        wanted = self._file_prios(ti, prios)
        current = list(t.handle.get_file_priorities())
        opening = [i for i, w in enumerate(wanted) if w > 0 and current[i] == 0]
        if not opening:
            return
        for i in opening:
            t.handle.file_priority(i, 1)
        if not self.wait_until(lambda: all(t.handle.get_file_priorities()[i] > 0 for i in opening), timeout):
            raise SessionError(f"torrent {_key(ti.info_hashes())}: file priorities did not apply")

    def _await_loaded(self, t: _Torrent, timeout: float) -> None:
        """Wait until a (re-)added torrent has loaded its resume data: before that its
        piece priorities and have-bits read as defaults, and acting on those would make
        libtorrent fetch the whole torrent."""
        loading = (lt.torrent_status.states.checking_resume_data,)
        if t.handle.status().state in loading and not self.wait_until(
                lambda: t.handle.status().state not in loading, timeout):
            raise SessionError(f"torrent {_key(t.ti.info_hashes())} did not finish loading its resume data")

    def _add(self, atp: lt.add_torrent_params, ti: lt.torrent_info) -> _Torrent:
        # Not auto-managed: libtorrent's queue would otherwise pause torrents past its
        # active limits, and a paused torrent neither serves nor answers challenges.
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        atp.flags &= ~lt.torrent_flags.seed_mode
        # libtorrent puts a torrent in upload mode (serve, never download) when a write
        # fails on a full disk, and resume data keeps the flag: re-added with it, a torrent
        # would stall every later fetch for good, with no error. A disk error reaches the
        # caller as a FileFailed event instead, and the caller decides when to retry.
        atp.flags &= ~lt.torrent_flags.upload_mode
        atp.flags |= lt.torrent_flags.duplicate_is_error
        try:
            handle = self._ses.add_torrent(atp)
        except RuntimeError as exc:
            raise TorrentError(f"libtorrent refused the torrent: {exc}") from exc
        key = _key(ti.info_hashes())
        self._removed.discard(key)
        t = _Torrent(handle, ti, Path(atp.save_path))
        t.prios = list(atp.piece_priorities) if len(atp.piece_priorities) else []
        self._torrents[key] = t
        return t

    def _watch(self, key: str, t: _Torrent, want: PieceSet) -> None:
        bits = self._have_bits(t)
        remaining = {p for p in want if not (bits and bits[p])}
        if remaining:
            t.watches[want] = remaining
        else:
            self._flush_then_complete(t, want)

    @staticmethod
    def _have_bits(t: _Torrent) -> list[bool]:
        return t.handle.status(lt.status_flags_t.query_pieces).pieces

    def _remove(self, key: str, timeout: float) -> None:
        t = self._torrents.pop(key)
        self._retired_download += t.handle.status().total_payload_download
        self._removed.discard(key)
        self._ses.remove_torrent(t.handle)
        if not self.wait_until(lambda: key in self._removed, timeout):
            raise SessionError(f"libtorrent did not remove {key} within {timeout} s")

    @staticmethod
    def _delete_files(save_path: Path, spans: list[_FileSpan]) -> None:
        for s in spans:
            path = save_path / s.path
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise ReclaimError(f"deleting {path}: {exc}") from exc
            # Remove directories the torrent created and left empty, never save_path itself.
            parent = path.parent
            while parent != save_path and save_path in parent.parents:
                try:
                    parent.rmdir()
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        break
                    raise ReclaimError(f"removing directory {parent}: {exc}") from exc
                parent = parent.parent

    def _request_resume(self, key: str) -> None:
        self._resume_bufs.pop(key, None)
        # No flush_disk_cache flag: it posts a cache_flushed_alert of its own, which would
        # break the count of our flush fences; callers flush explicitly beforehand.
        self._torrents[key].handle.save_resume_data(lt.torrent_handle.save_info_dict)

    def _await_resume(self, key: str, timeout: float) -> bytes:
        if not self.wait_until(lambda: key in self._resume_bufs, timeout):
            raise SessionError(f"no resume data for {key} within {timeout} s")
        buf = self._resume_bufs.pop(key)
        if isinstance(buf, str):
            raise SessionError(f"saving resume data of {key} failed: {buf}")
        return buf

    def _resume_now(self, key: str, timeout: float) -> bytes:
        self.flush(key, timeout)
        self._request_resume(key)
        return self._await_resume(key, timeout)

    def _emit(self, ev: Event) -> None:
        self._sync_events.append(ev)
        for q in self._subscribers:
            q.put_nowait(ev)

    @staticmethod
    def _stats_of(key: str, st: lt.torrent_status) -> StatsUpdate:
        return StatsUpdate(key, st.download_payload_rate, st.upload_payload_rate,
                           st.progress_ppm, st.total_payload_download,
                           st.total_payload_upload, st.num_peers)

    def _alert_key(self, a: lt.alert) -> str | None:
        if isinstance(a, (lt.torrent_removed_alert, lt.torrent_deleted_alert)):
            return _key(a.info_hashes)
        h = getattr(a, "handle", None)
        if h is None or not h.is_valid():
            return None
        return _key(h.info_hashes())

    def _process_alerts(self) -> None:
        if self._closed:
            return
        for a in self._ses.pop_alerts():
            # Convert now: the alert object dies at the next pop_alerts().
            self._on_alert(a)

    def _on_alert(self, a: lt.alert) -> None:  # noqa: C901 - one flat dispatch table
        if isinstance(a, lt.listen_succeeded_alert):
            if a.socket_type == lt.listen_succeeded_alert_socket_type_t.tcp:
                self._listen = (a.port, None)
            return
        if isinstance(a, lt.listen_failed_alert):
            if a.socket_type == lt.listen_failed_alert_socket_type_t.tcp:
                self._listen = (0, a.message())
            return
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                self._emit(self._stats_of(_key(st.info_hashes), st))
            return
        key = self._alert_key(a)
        if key is None:
            return
        if isinstance(a, lt.piece_finished_alert):
            self._emit(PieceFinished(key, a.piece_index))
            self._piece_done(key, a.piece_index)
        elif isinstance(a, lt.hash_failed_alert):
            self._emit(HashFailed(key, a.piece_index))
        elif isinstance(a, lt.torrent_finished_alert):
            self._emit(TorrentFinished(key))
        elif isinstance(a, lt.torrent_checked_alert):
            self._recheck_watches(key)
        elif isinstance(a, lt.cache_flushed_alert):
            self._flushed(key)
        elif isinstance(a, lt.save_resume_data_alert):
            self._resume_bufs[key] = lt.write_resume_data_buf(a.params)
        elif isinstance(a, lt.save_resume_data_failed_alert):
            self._resume_bufs[key] = a.message()
        elif isinstance(a, lt.torrent_removed_alert):
            self._removed.add(key)
            self._emit(TorrentRemoved(key))
        elif isinstance(a, lt.torrent_error_alert):
            self._emit(TorrentFailed(key, a.message(), _os_errno(a.error)))
        elif isinstance(a, lt.file_error_alert):
            self._emit(FileFailed(key, a.filename(), a.message(), _os_errno(a.error)))
        elif isinstance(a, lt.fastresume_rejected_alert):
            self._emit(ResumeRejected(key, a.message()))
        elif isinstance(a, lt.state_changed_alert):
            self._emit(StateChanged(key, str(a.state), str(a.prev_state)))
        elif isinstance(a, lt.peer_connect_alert):
            self._emit(PeerConnected(key, a.ip[0], a.ip[1]))
        elif isinstance(a, lt.peer_disconnected_alert):
            self._emit(PeerDisconnected(key, a.ip[0], a.ip[1], a.message()))

    def _piece_done(self, key: str, piece: int) -> None:
        t = self._torrents.get(key)
        if t is None:
            return
        for ws, rem in list(t.watches.items()):
            rem.discard(piece)
            if not rem:
                del t.watches[ws]
                self._flush_then_complete(t, ws)

    def _recheck_watches(self, key: str) -> None:
        # Pieces restored from resume data or a file check raise no PieceFinished.
        t = self._torrents.get(key)
        if t is None or not t.watches:
            return
        bits = self._have_bits(t)
        for ws, rem in list(t.watches.items()):
            rem.difference_update(p for p in list(rem) if bits and bits[p])
            if not rem:
                del t.watches[ws]
                self._flush_then_complete(t, ws)

    def _request_flush(self, t: _Torrent) -> int:
        t.flush_requested += 1
        t.handle.flush_cache()
        return t.flush_requested

    def _flush_then_complete(self, t: _Torrent, ws: PieceSet) -> None:
        t.flushing.append((self._request_flush(t), ws))

    def _flushed(self, key: str) -> None:
        # Flushes are fences on one torrent's disk queue, so they complete in request order.
        t = self._torrents.get(key)
        if t is None:
            return
        t.flush_done += 1
        ready = [ws for seq, ws in t.flushing if seq <= t.flush_done]
        t.flushing = [(seq, ws) for seq, ws in t.flushing if seq > t.flush_done]
        for ws in ready:
            self._emit(ShardComplete(key, ws))
