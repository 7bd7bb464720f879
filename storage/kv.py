"""A small key-value interface with atomic batches, and its backends.

Everything that persists (the chain store, the peer's local index) sits behind `KV`,
so one contract test suite runs against every backend (tests/test_kv.py).
"""
from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import plyvel


class KVError(Exception):
    """A key-value store could not be opened or written."""


class Batch(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...


class KV(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def iterate(self, prefix: bytes = b"", *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]: ...
    def write_batch(self, ops: "BatchOps", *, durable: bool = True) -> None: ...
    def close(self) -> None: ...


class BatchOps:
    """Ops collected in memory, applied by `KV.write_batch` all at once or not at all."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((bytes(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self.ops.append((bytes(key), None))

    def __len__(self) -> int:
        return len(self.ops)


class MemoryKV:
    """In-memory backend (sorted keys), for simulators and unit tests of logic above it."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        if key in self._data:
            del self._data[key]
            self._keys.pop(bisect.bisect_left(self._keys, key))

    def iterate(self, prefix: bytes = b"", *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        lo = bisect.bisect_left(self._keys, prefix)
        keys = []
        for k in self._keys[lo:]:
            if not k.startswith(prefix):
                break
            keys.append(k)
        if reverse:
            keys.reverse()
        for k in keys:
            yield k, self._data[k]

    def write_batch(self, ops: BatchOps, *, durable: bool = True) -> None:
        for key, value in ops.ops:
            if value is None:
                self.delete(key)
            else:
                self.put(key, value)

    def close(self) -> None:
        pass


class LevelDBKV:
    """LevelDB backend through plyvel; a batch is one atomic LevelDB write batch."""

    def __init__(self, path: Path | str, *, sync: bool = True) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            self._db = plyvel.DB(str(path), create_if_missing=True)
        except plyvel.Error as exc:
            raise KVError(f"cannot open LevelDB at {path}: {exc}") from exc
        self._sync = sync

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value, sync=self._sync)

    def delete(self, key: bytes) -> None:
        self._db.delete(key, sync=self._sync)

    def iterate(self, prefix: bytes = b"", *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        with self._db.iterator(prefix=prefix, reverse=reverse) as it:
            yield from it

    def write_batch(self, ops: BatchOps, *, durable: bool = True) -> None:
        """Atomic either way; durable=False skips the fsync. LevelDB's log is sequential,
        so the next durable write makes every earlier one durable too: a crash can lose
        only the tail of non-durable writes, never leave a torn batch."""
        with self._db.write_batch(sync=self._sync and durable) as wb:
            for key, value in ops.ops:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()
