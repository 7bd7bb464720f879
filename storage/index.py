"""The storage peer's local index: which shards this peer holds, and in what state.

One record per (torrent, shard): its lifecycle state, piece range, files, size, the last
proof it answered and when things happened. It lives in a `KV` (LevelDB on a real node),
so it survives restarts alongside libtorrent's resume data.

The index knows nothing of libtorrent or the chain: times are passed in by the caller
(`now`, an integer in the caller's unit, e.g. unix milliseconds), and the self-check is
given functions to read a piece and to say what its hash must be.

Lifecycle:  fetching -> held -> dropping -> (removed)
            fetching -> dropping                 (an assignment withdrawn mid-download)
            any state -> lost                    (data gone or corrupt; not held any more)
            lost -> fetching                     (re-assigned and fetched again)
"""
from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack

from storage.errors import StorageError
from storage.kv import KV, BatchOps, LevelDBKV

__all__ = [
    "CheckResult", "check_shard", "IndexCorrupt", "LocalIndexError", "IndexStateError", "LocalIndex",
    "ShardRecord", "ShardState",
]


class LocalIndexError(StorageError):
    """Base of local-index errors."""


class IndexStateError(LocalIndexError):
    """A state transition the lifecycle does not allow, or an unknown shard."""


class IndexCorrupt(LocalIndexError):
    """A stored record does not decode: the index file was damaged or is foreign."""


class ShardState(enum.Enum):
    FETCHING = "fetching"
    HELD = "held"
    DROPPING = "dropping"
    LOST = "lost"


_ALLOWED: dict[ShardState | None, frozenset[ShardState]] = {
    None: frozenset({ShardState.FETCHING}),
    ShardState.FETCHING: frozenset({ShardState.FETCHING, ShardState.HELD, ShardState.DROPPING,
                                    ShardState.LOST}),
    ShardState.HELD: frozenset({ShardState.DROPPING, ShardState.LOST}),
    ShardState.DROPPING: frozenset({ShardState.LOST}),
    ShardState.LOST: frozenset({ShardState.FETCHING, ShardState.DROPPING, ShardState.LOST}),
}


@dataclass(frozen=True, slots=True)
class ShardRecord:
    info_hash: str               # v2 info hash, hex
    shard: int
    state: ShardState
    first_piece: int             # global piece indices, inclusive
    last_piece: int
    files: tuple[str, ...]       # paths relative to save_path
    save_path: str
    size: int                    # bytes of the shard's data
    proof_height: int | None     # chain height of the last challenge answered
    proof_ok: bool | None        # its verdict as this peer saw it
    created_at: int
    updated_at: int
    reason: str = ""             # why the shard was marked lost

    @property
    def pieces(self) -> range:
        return range(self.first_piece, self.last_piece + 1)


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    checked: tuple[int, ...]     # pieces whose hash was checked
    reason: str = ""


_PREFIX = b"shard/"
_VERSION = 1


def _key(info_hash: str, shard: int) -> bytes:
    try:
        raw = bytes.fromhex(info_hash)
    except ValueError as exc:
        raise IndexStateError(f"info hash is not hex: {info_hash!r}") from exc
    if len(raw) not in (20, 32) or not 0 <= shard < 2**32:
        raise IndexStateError(f"bad shard key ({info_hash}, {shard})")
    # Big-endian shard number: iteration order is (torrent, shard), the canonical order.
    return _PREFIX + raw + shard.to_bytes(4, "big")


def _encode(r: ShardRecord) -> bytes:
    return msgpack.packb([_VERSION, r.state.value, r.first_piece, r.last_piece, list(r.files),
                          r.save_path, r.size, r.proof_height, r.proof_ok, r.created_at,
                          r.updated_at, r.reason], use_bin_type=True)


def _decode(key: bytes, value: bytes) -> ShardRecord:
    try:
        (version, state, first, last, files, save_path, size, ph, pok, created, updated,
         reason) = msgpack.unpackb(value, raw=False)
        if version != _VERSION:
            raise ValueError(f"record version {version}")
        body = key[len(_PREFIX):]
        return ShardRecord(body[:-4].hex(), int.from_bytes(body[-4:], "big"), ShardState(state),
                           int(first), int(last), tuple(str(f) for f in files), str(save_path),
                           int(size), ph, pok, int(created), int(updated), str(reason))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IndexCorrupt(f"undecodable index record {key.hex()}: {exc}") from exc


def sample_pieces(record: ShardRecord, count: int, seed: bytes) -> tuple[int, ...]:
    """`count` distinct pieces of the shard drawn from `seed`, always its first and last.

    First and last because a truncated file or an unfinished tail shows there first.
    """
    n = record.last_piece - record.first_piece + 1
    picked = {record.first_piece, record.last_piece}
    i = 0
    while len(picked) < min(count, n):
        h = hashlib.sha256(seed + record.info_hash.encode() + record.shard.to_bytes(4, "big")
                           + i.to_bytes(4, "big")).digest()
        picked.add(record.first_piece + int.from_bytes(h[:8], "big") % n)
        i += 1
    return tuple(sorted(picked))


def check_shard(record: ShardRecord, read_piece: Callable[[int], bytes], expected: Callable[[int], bytes],
                *, samples: int = 4, seed: bytes = b"",
                digest: Callable[[bytes], bytes] | None = None) -> CheckResult:
    """The verdict of `LocalIndex.self_check` without writing it: reads files only, so a
    caller may run it off its event loop and apply the verdict (mark_lost) afterwards."""
    digest = digest or (lambda b: hashlib.sha256(b).digest())
    for rel in record.files:
        if not (Path(record.save_path) / rel).is_file():
            return CheckResult(False, (), f"file missing: {rel}")
    checked: list[int] = []
    for p in sample_pieces(record, samples, seed):
        try:
            data = read_piece(p)
        except (OSError, StorageError) as exc:
            # The data is unreadable: for the network that is the same as gone.
            return CheckResult(False, tuple(checked), f"piece {p} unreadable: {exc}")
        checked.append(p)
        if digest(data) != expected(p):
            return CheckResult(False, tuple(checked), f"piece {p} does not match its hash")
    return CheckResult(True, tuple(checked))


class LocalIndex:
    """Shards held by this peer, in a KV store."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv

    @classmethod
    def open(cls, path: Path) -> LocalIndex:
        return cls(LevelDBKV(path))

    def close(self) -> None:
        self._kv.close()

    # ------------------------------------------------ reading

    def get(self, info_hash: str, shard: int) -> ShardRecord | None:
        key = _key(info_hash, shard)
        value = self._kv.get(key)
        return None if value is None else _decode(key, value)

    def shards(self, state: ShardState | None = None, info_hash: str | None = None) -> Iterator[ShardRecord]:
        """Records in canonical (torrent, shard) order, optionally filtered."""
        prefix = _PREFIX if info_hash is None else _key(info_hash, 0)[:-4]
        for key, value in self._kv.iterate(prefix):
            r = _decode(key, value)
            if state is None or r.state is state:
                yield r

    def held(self) -> list[ShardRecord]:
        return list(self.shards(ShardState.HELD))

    def held_bytes(self) -> int:
        return sum(r.size for r in self.shards(ShardState.HELD))

    # ------------------------------------------------ transitions

    def begin_fetch(self, info_hash: str, shard: int, pieces: range, files: Sequence[str],
                    save_path: Path | str, size: int, now: int) -> ShardRecord:
        """Record that this peer starts fetching a shard (or fetches a lost one again)."""
        if len(pieces) == 0 or pieces.step != 1 or pieces.start < 0:
            raise IndexStateError(f"a shard is a non-empty contiguous piece range, got {pieces}")
        if size < 0:
            raise IndexStateError(f"negative shard size {size}")
        old = self.get(info_hash, shard)
        self._check_transition(info_hash, shard, old, ShardState.FETCHING)
        rec = ShardRecord(info_hash, shard, ShardState.FETCHING, pieces.start, pieces.stop - 1,
                          tuple(files), str(save_path), size,
                          old.proof_height if old else None, old.proof_ok if old else None,
                          old.created_at if old else now, now)
        self._put(rec)
        return rec

    def mark_held(self, info_hash: str, shard: int, now: int) -> ShardRecord:
        return self._move(info_hash, shard, ShardState.HELD, now)

    def mark_dropping(self, info_hash: str, shard: int, now: int) -> ShardRecord:
        return self._move(info_hash, shard, ShardState.DROPPING, now)

    def mark_lost(self, info_hash: str, shard: int, reason: str, now: int) -> ShardRecord:
        return self._move(info_hash, shard, ShardState.LOST, now, reason=reason)

    def remove(self, info_hash: str, shard: int) -> None:
        """Forget a shard once its data is gone (after a drop, or giving up a lost one)."""
        old = self._require(info_hash, shard)
        if old.state not in (ShardState.DROPPING, ShardState.LOST):
            raise IndexStateError(f"shard ({info_hash}, {shard}) is {old.state.value}; "
                                  "mark it dropping before removing it")
        self._kv.delete(_key(info_hash, shard))

    def record_proof(self, info_hash: str, shard: int, height: int, ok: bool, now: int) -> ShardRecord:
        old = self._require(info_hash, shard)
        if old.proof_height is not None and height < old.proof_height:
            raise IndexStateError(f"proof at height {height} is older than {old.proof_height}")
        rec = replace(old, proof_height=height, proof_ok=ok, updated_at=now)
        self._put(rec)
        return rec

    def apply(self, records: Iterable[ShardRecord], removals: Iterable[tuple[str, int]] = ()) -> None:
        """Write several records and removals in one atomic batch (e.g. at a restart scan)."""
        ops = BatchOps()
        for r in records:
            ops.put(_key(r.info_hash, r.shard), _encode(r))
        for info_hash, shard in removals:
            ops.delete(_key(info_hash, shard))
        self._kv.write_batch(ops)

    # ------------------------------------------------ self-check

    def self_check(self, info_hash: str, shard: int, read_piece: Callable[[int], bytes],
                   expected: Callable[[int], bytes], now: int, *, samples: int = 4,
                   seed: bytes = b"", digest: Callable[[bytes], bytes] | None = None) -> CheckResult:
        """Cheaply confirm a held shard is still on disk and intact; mark it lost if not.

        Checks that every file exists, then hashes `samples` pieces (first, last, and ones
        drawn from `seed`): `digest(read_piece(p))` must equal `expected(p)`. `digest`
        defaults to SHA-256; pass SHA-1 with v1 piece hashes, or a BEP 52 piece-root
        function with the v2 piece layer. A read error counts as missing data.
        """
        rec = self._require(info_hash, shard)
        if rec.state is not ShardState.HELD:
            raise IndexStateError(f"shard ({info_hash}, {shard}) is {rec.state.value}, not held")
        result = check_shard(rec, read_piece, expected, samples=samples, seed=seed, digest=digest)
        if not result.ok:
            self._move(rec.info_hash, rec.shard, ShardState.LOST, now, reason=result.reason)
        return result

    # ------------------------------------------------ internals

    def _require(self, info_hash: str, shard: int) -> ShardRecord:
        rec = self.get(info_hash, shard)
        if rec is None:
            raise IndexStateError(f"no shard ({info_hash}, {shard}) in the local index")
        return rec

    @staticmethod
    def _check_transition(info_hash: str, shard: int, old: ShardRecord | None,
                          new: ShardState) -> None:
        if new not in _ALLOWED[old.state if old else None]:
            was = old.state.value if old else "absent"
            raise IndexStateError(f"shard ({info_hash}, {shard}): {was} -> {new.value} not allowed")

    def _move(self, info_hash: str, shard: int, new: ShardState, now: int, reason: str = "") -> ShardRecord:
        old = self._require(info_hash, shard)
        self._check_transition(info_hash, shard, old, new)
        rec = replace(old, state=new, updated_at=now, reason=reason)
        self._put(rec)
        return rec

    def _put(self, rec: ShardRecord) -> None:
        self._kv.put(_key(rec.info_hash, rec.shard), _encode(rec))
