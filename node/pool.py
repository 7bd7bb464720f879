"""The record pool: signed records waiting to be included in a block.

Beacons keep records that arrived by gossip or POST /api/records until a decided block
includes them or they become stale. Validity here is a cheap pre-check (decoding, the
author's signature, size); the state transition has the final word, and a proposer
drops records its own trial block rejects.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from chain.codec import encode
from chain.crypto import sha256
from chain.types import SignedRecord

MAX_POOL_RECORDS = 20_000


@dataclass(frozen=True, slots=True)
class PoolEntry:
    record: SignedRecord
    record_id: bytes
    received_ms: int


def compute_record_id(record: SignedRecord) -> bytes:
    return sha256(encode(record))


class RecordPool:
    def __init__(self, max_records: int = MAX_POOL_RECORDS) -> None:
        self._entries: OrderedDict[bytes, PoolEntry] = OrderedDict()
        self._max = max_records

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, record_id: bytes) -> bool:
        return record_id in self._entries

    def add(self, record: SignedRecord, now_ms: int) -> bytes | None:
        """Add a pre-checked record; returns its id, or None if already there or the pool is full."""
        record_id = compute_record_id(record)
        if record_id in self._entries or len(self._entries) >= self._max:
            return None
        self._entries[record_id] = PoolEntry(record, record_id, now_ms)
        return record_id

    def select(self, limit: int) -> list[SignedRecord]:
        """Oldest first: fair, and an author's records keep the order they were sent in."""
        out = []
        for entry in self._entries.values():
            if len(out) >= limit:
                break
            out.append(entry.record)
        return out

    def remove(self, records) -> None:
        for record in records:
            self._entries.pop(compute_record_id(record), None)

    def remove_ids(self, ids) -> None:
        for record_id in ids:
            self._entries.pop(record_id, None)

    def expire(self, now_ms: int, max_age_ms: int) -> int:
        stale = [rid for rid, e in self._entries.items() if now_ms - e.received_ms > max_age_ms]
        self.remove_ids(stale)
        return len(stale)
