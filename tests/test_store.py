"""The chain store: one atomic batch per block, and a consistent prefix after any crash."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chain.errors import StoreError
from chain.genesis import get_genesis_state
from chain.state import get_height, iter_encoded
from chain.store import ChainStore
from chain.transition import process_block
from chain.types import CommittedBlock, Params
from storage.kv import LevelDBKV, MemoryKV
from tests.chainutil import TestChain, make_key, peer_join
from tests.crash_writer import META_LAST

ROOT = Path(__file__).resolve().parent.parent


def grow(chain: TestChain, store: ChainStore, blocks: int) -> None:
    for _ in range(blocks):
        key = make_key(f"store-peer-{chain.height}")
        block = chain.build([chain.sign(key, peer_join(key))])
        committed = CommittedBlock(block, chain.commit(block))
        state = process_block(chain.state, block, committed.commit)
        store.append(committed, state)
        chain.state = state
        chain.blocks.append(committed)


def test_fresh_store_holds_the_genesis_state():
    chain = TestChain(4)
    store = ChainStore(MemoryKV(), chain.genesis)
    assert store.head_height() == 0
    assert store.load_state().root == get_genesis_state(chain.genesis).root
    assert store.get_block(0) is None and store.get_blocks(0, 10) == []


def test_blocks_commits_and_state_round_trip():
    chain = TestChain(4)
    store = ChainStore(MemoryKV(), chain.genesis)
    grow(chain, store, 5)
    assert store.head_height() == 5
    for cb in chain.blocks:
        height = cb.block.header.height
        assert store.get_block(height) == cb.block
        assert store.get_block_by_hash(cb.block.hash()) == cb.block
        assert store.get_commit(height) == cb.commit
    assert store.get_blocks(2, 2) == chain.blocks[1:3]
    assert store.get_blocks(4, 100) == chain.blocks[3:]
    assert store.get_block(6) is None and store.get_block_by_hash(b"\x00" * 32) is None
    loaded = store.load_state()
    assert loaded.root == chain.state.root and loaded.head_hash == chain.state.head_hash
    assert list(iter_encoded(loaded)) == list(iter_encoded(chain.state))


def test_append_refuses_a_block_that_does_not_extend_the_head():
    chain = TestChain(4)
    store = ChainStore(MemoryKV(), chain.genesis)
    grow(chain, store, 1)
    stale = chain.blocks[0]
    with pytest.raises(StoreError):
        store.append(stale, chain.state)
    block = chain.build()
    with pytest.raises(StoreError):  # the state given is not the one after this block
        store.append(CommittedBlock(block, chain.commit(block)), chain.state)
    assert store.head_height() == 1


def test_store_of_another_chain_is_refused():
    kv = MemoryKV()
    ChainStore(kv, TestChain(4).genesis)
    with pytest.raises(StoreError):
        ChainStore(kv, TestChain(4, chain_id="another").genesis)


def test_meta_is_written_with_the_block():
    chain = TestChain(4)
    store = ChainStore(MemoryKV(), chain.genesis)
    assert store.get_meta(b"vote") is None
    store.put_meta(b"vote", b"v1")
    block = chain.build()
    state = process_block(chain.state, block, chain.commit(block))
    store.append(CommittedBlock(block, chain.commit(block)), state, extra_meta={b"vote": b"v2", b"x": b""})
    assert store.get_meta(b"vote") == b"v2" and store.get_meta(b"x") == b""


def test_proofs_are_kept_for_the_retention_window():
    chain = TestChain(4, params=Params(proof_retention_blocks=10))
    store = ChainStore(MemoryKV(), chain.genesis)
    store.put_proofs(5, {b"a" * 32: b"proof-a", b"b" * 32: b"proof-b"})
    store.put_proofs(8, {b"c" * 32: b"proof-c"})
    assert store.get_proof(b"a" * 32) == b"proof-a" and store.get_proof(b"z" * 32) is None
    assert store.prune_proofs(15) == 0
    assert store.prune_proofs(16) == 2
    assert store.get_proof(b"a" * 32) is None and store.get_proof(b"c" * 32) == b"proof-c"
    assert store.prune_proofs(100) == 1 and store.get_proof(b"c" * 32) is None


def test_leveldb_store_reopens_and_continues(tmp_path):
    chain = TestChain(4)
    kv = LevelDBKV(tmp_path / "db")
    grow(chain, ChainStore(kv, chain.genesis), 3)
    kv.close()
    kv = LevelDBKV(tmp_path / "db")
    store = ChainStore(kv, chain.genesis)
    chain.state = store.load_state()
    grow(chain, store, 2)
    assert store.head_height() == 5 and store.load_state().root == chain.state.root
    kv.close()


def test_load_state_detects_a_tampered_state():
    chain = TestChain(4)
    kv = MemoryKV()
    store = ChainStore(kv, chain.genesis)
    grow(chain, store, 2)
    key = next(k for k, _ in kv.iterate(b"s/peer/"))
    kv.delete(key)
    with pytest.raises(StoreError):
        store.load_state()


# ---------------------------------------------------------------------------- crash safety

def check_consistent_prefix(db: Path, chain: TestChain) -> None:
    """The store holds blocks 1..head and the state replaying them gives; `chain` holds
    the replay so far and is extended with the new blocks."""
    kv = LevelDBKV(db)
    try:
        store = ChainStore(kv, chain.genesis)
        head = store.head_height()
        assert head >= chain.height, "a block that was reported written is gone"
        for cb in store.get_blocks(1, chain.height):
            assert cb == chain.blocks[cb.block.header.height - 1]
        for cb in store.get_blocks(chain.height + 1, head - chain.height):
            chain.state = process_block(chain.state, cb.block, cb.commit)
            chain.blocks.append(cb)
        assert get_height(chain.state) == head
        loaded = store.load_state()
        assert loaded.root == chain.state.root and loaded.head_hash == chain.state.head_hash
        assert list(iter_encoded(loaded)) == list(iter_encoded(chain.state))
        assert store.get_meta(META_LAST) == (head.to_bytes(8, "big") if head else None)
    finally:
        kv.close()


@pytest.mark.timeout(120)
def test_kill_9_leaves_a_consistent_prefix(tmp_path):
    db = tmp_path / "db"
    rng = random.Random(20240611)
    replay = TestChain(4)
    reported = 0
    for _ in range(15):
        writer = subprocess.Popen([sys.executable, "-m", "tests.crash_writer", str(db)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Let it write a few blocks, then kill it wherever it happens to be.
            for _ in range(rng.randint(1, 6)):
                line = writer.stdout.readline()
                assert line, writer.stderr.read()
                reported = int(line)
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
            writer.stderr.close()
        check_consistent_prefix(db, replay)
        assert replay.height >= reported
    assert replay.height >= 15
