"""The block and state store, on a KV backend (LevelDB in nodes, memory in simulations).

Key layout:

    g                          genesis hash (a store belongs to one chain)
    h                          head: height (8 bytes big endian) || block hash
    b/<height>                 encode(Block)
    x/<block hash>             height
    c/<height>                 encode(Commit)
    s/<state key>              encoded state value (chain/state.py)
    m/<key>                    meta: values the node keeps beside the chain (last signed vote...)
    p/<challenge id>           proof sidecar: height || proof bytes
    q/<height><challenge id>   index of proofs by height, for pruning

Each block goes in with ONE atomic write batch: block, hash index, commit, the state's
changed keys, head, and any meta the caller must persist with it. A crash therefore
leaves either the old head or the new one, never a block without its state.
"""
from __future__ import annotations

from collections.abc import Mapping

from chain.codec import decode, encode
from chain.constants import MAX_BLOCK_BYTES
from chain.errors import CodecError, StoreError
from chain.genesis import get_genesis_state
from chain.state import State, get_height, iter_encoded, make_state
from chain.types import Block, Commit, CommittedBlock, Genesis
from storage.kv import KV, BatchOps

KEY_GENESIS = b"g"
KEY_HEAD = b"h"
BLOCK = b"b/"
HASH = b"x/"
COMMIT = b"c/"
STATE = b"s/"
META = b"m/"
PROOF = b"p/"
PROOF_BY_HEIGHT = b"q/"


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


class ChainStore:
    """Blocks, commits, state and proofs of one chain on a KV."""

    def __init__(self, kv: KV, genesis: Genesis) -> None:
        self.kv = kv
        self.genesis = genesis
        stored = kv.get(KEY_GENESIS)
        if stored is None:
            self._write_genesis()
        elif stored != genesis.hash():
            raise StoreError("this store holds another chain (genesis hash differs)")

    def _write_genesis(self) -> None:
        state = get_genesis_state(self.genesis)
        ops = BatchOps()
        for key, data in iter_encoded(state):
            ops.put(STATE + key, data)
        ops.put(KEY_HEAD, u64(0) + state.head_hash)
        ops.put(KEY_GENESIS, self.genesis.hash())
        self.kv.write_batch(ops)

    # ------------------------------------------------------------------------ head and blocks

    def head(self) -> tuple[int, bytes]:
        data = self.kv.get(KEY_HEAD)
        if data is None or len(data) != 40:
            raise StoreError("store has no valid head pointer")
        return int.from_bytes(data[:8], "big"), data[8:]

    def head_height(self) -> int:
        return self.head()[0]

    def append(self, committed: CommittedBlock, new_state: State,
               extra_meta: Mapping[bytes, bytes] | None = None, *, durable: bool = True) -> None:
        """Write a block, its commit, the state changes it made and the new head, atomically.

        `new_state` must be the state `committed.block` led to from the current head (its
        `diff` is what gets written); `extra_meta` goes into the same batch.
        """
        height, head_hash = self.head()
        block = committed.block
        block_hash = block.hash()
        if block.header.height != height + 1 or block.header.parent_hash != head_hash:
            raise StoreError(f"block {block.header.height} does not extend the stored head {height}")
        if new_state.head_hash != block_hash or get_height(new_state) != height + 1:
            raise StoreError("the state given is not the state after this block")
        ops = BatchOps()
        ops.put(BLOCK + u64(height + 1), encode(block))
        ops.put(HASH + block_hash, u64(height + 1))
        ops.put(COMMIT + u64(height + 1), encode(committed.commit))
        for key, data in new_state.diff:
            if data is None:
                ops.delete(STATE + key)
            else:
                ops.put(STATE + key, data)
        for key in sorted(extra_meta or {}):
            ops.put(META + key, extra_meta[key])
        ops.put(KEY_HEAD, u64(height + 1) + block_hash)
        self.kv.write_batch(ops, durable=durable)

    def get_block(self, height: int) -> Block | None:
        data = self.kv.get(BLOCK + u64(height)) if height > 0 else None
        return None if data is None else self._decode(data, Block)

    def get_block_by_hash(self, block_hash: bytes) -> Block | None:
        height = self.kv.get(HASH + block_hash)
        return None if height is None else self.get_block(int.from_bytes(height, "big"))

    def get_commit(self, height: int) -> Commit | None:
        data = self.kv.get(COMMIT + u64(height)) if height > 0 else None
        return None if data is None else self._decode(data, Commit)

    def get_blocks(self, start: int, count: int) -> list[CommittedBlock]:
        """Up to `count` committed blocks from height `start`, stopping at the head."""
        out: list[CommittedBlock] = []
        for height in range(max(start, 1), min(start + count, self.head_height() + 1)):
            block, commit = self.get_block(height), self.get_commit(height)
            if block is None or commit is None:
                raise StoreError(f"block {height} is below the head but missing")
            out.append(CommittedBlock(block, commit))
        return out

    def _decode(self, data: bytes, tp: type):
        try:
            return decode(data, tp, max_bytes=MAX_BLOCK_BYTES)
        except CodecError as exc:
            raise StoreError(f"stored {tp.__name__} does not decode: {exc}") from exc

    # ------------------------------------------------------------------------ state

    def load_state(self) -> State:
        """The head state, rebuilt from the stored key/values and checked against the head
        block's state root."""
        height, head_hash = self.head()
        encoded = {key[len(STATE):]: data for key, data in self.kv.iterate(STATE)}
        try:
            state = make_state(self.genesis, head_hash, encoded)
        except (CodecError, KeyError) as exc:
            raise StoreError(f"stored state does not decode: {exc}") from exc
        expected = get_genesis_state(self.genesis).root if height == 0 else self._head_state_root(height)
        if state.root != expected or get_height(state) != height:
            raise StoreError(f"stored state does not match the state root of block {height}")
        return state

    def _head_state_root(self, height: int) -> bytes:
        block = self.get_block(height)
        if block is None:
            raise StoreError(f"head block {height} is missing")
        return block.header.state_root

    # ------------------------------------------------------------------------ meta

    def get_meta(self, key: bytes) -> bytes | None:
        return self.kv.get(META + key)

    def iter_meta(self, prefix: bytes, *, reverse: bool = False):
        """(key, value) of every meta entry under prefix, in key order (or reversed)."""
        for key, value in self.kv.iterate(META + prefix, reverse=reverse):
            yield key[len(META):], value

    def put_meta(self, key: bytes, value: bytes) -> None:
        ops = BatchOps()
        ops.put(META + key, value)
        self.kv.write_batch(ops)

    # ------------------------------------------------------------------------ proof sidecars

    def put_proofs(self, height: int, proofs: Mapping[bytes, bytes]) -> None:
        ops = BatchOps()
        for challenge_id in sorted(proofs):
            ops.put(PROOF + challenge_id, u64(height) + proofs[challenge_id])
            ops.put(PROOF_BY_HEIGHT + u64(height) + challenge_id, b"")
        self.kv.write_batch(ops)

    def get_proof(self, challenge_id: bytes) -> bytes | None:
        data = self.kv.get(PROOF + challenge_id)
        return None if data is None else data[8:]

    def prune_proofs(self, current_height: int) -> int:
        """Delete proofs older than the retention window; returns how many went."""
        cutoff = current_height - self.genesis.params.proof_retention_blocks
        ops = BatchOps()
        pruned = 0
        for key, _ in self.kv.iterate(PROOF_BY_HEIGHT):
            height, challenge_id = key[2:10], key[10:]
            if int.from_bytes(height, "big") >= cutoff:
                break
            ops.delete(key)
            stored = self.kv.get(PROOF + challenge_id)
            # A proof stored again at a later height lives on under its newer index entry.
            if stored is not None and stored[:8] == height:
                ops.delete(PROOF + challenge_id)
                pruned += 1
        if len(ops):
            self.kv.write_batch(ops)
        return pruned
