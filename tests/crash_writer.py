"""Append blocks to a LevelDB chain store forever, printing each height once it is written.

    python -m tests.crash_writer DB_DIR

tests/test_store.py kills this with SIGKILL at arbitrary points and checks what is left.
The chain is a pure function of the height (keys from labels, records chosen by height),
so every restart continues the same chain from the stored head.
"""
from __future__ import annotations

import sys
from pathlib import Path

from chain.store import ChainStore
from chain.transition import process_block
from chain.types import CommittedBlock, PeerLeave
from storage.kv import LevelDBKV
from tests.chainutil import TestChain, make_key, peer_join

META_LAST = b"crash-writer/last-height"


def records_for(chain: TestChain, height: int) -> list:
    """A join every block, and every third block the peer of two blocks back leaves."""
    joining = make_key(f"crash-peer-{height}")
    records = [chain.sign(joining, peer_join(joining, capacity=height))]
    if height > 2 and height % 3 == 0:
        leaving = make_key(f"crash-peer-{height - 2}")
        records.append(chain.sign(leaving, PeerLeave(leaving.public_key, 2)))
    return records


def main(db_dir: str) -> None:
    chain = TestChain(4)
    store = ChainStore(LevelDBKV(Path(db_dir)), chain.genesis)
    chain.state = store.load_state()
    while True:
        height = chain.height + 1
        block = chain.build(records_for(chain, height))
        committed = CommittedBlock(block, chain.commit(block))
        state = process_block(chain.state, block, committed.commit)
        store.append(committed, state, extra_meta={META_LAST: height.to_bytes(8, "big")})
        chain.state = state
        print(height, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
