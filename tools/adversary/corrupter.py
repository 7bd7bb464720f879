"""corrupter: fetches honestly, then corrupts its copy on disk and keeps "proving" it.

Misbehaviour: once a holding is verified (the claim challenge is answered from good
data, so the copy counts first), the next challenge on it flips one byte in every
16 KiB leaf of the shard's byte range in the file on disk, then answers from the
corrupt piece. An honest peer cannot: build_proof refuses a piece that does not match
the torrent (it stays silent and re-fetches). To be a real liar it forges: the proof is
built exactly like build_proof (challenged leaf's bytes, sibling path inside the piece
from hashing the piece, path above it from the torrent's piece layer) minus the checks,
and signed. The leaf no longer hashes to the pieces root -> INVALID -> EXCLUDED at once,
all its holdings removed.
"""
from __future__ import annotations

import logging
import os

from chain.proofs import make_proof_answer
from chain.state import get_challenge_from_entry
from node.peer import PeerNode
from storage.collection import CollectionMeta, Shard, shard_first_leaf
from storage.errors import StorageError
from storage.merkle import BLOCK_SIZE, blocks_per_piece, ceil_log2, compute_leaf_hashes, sibling_path
from storage.proof import Proof, _layer_levels
from tools.adversary import is_verified_holder, make_main, run_module

log = logging.getLogger("cairn.adversary.corrupter")


def forge_proof(meta: CollectionMeta, shard: Shard, leaf_index_in_shard: int, piece_bytes: bytes) -> Proof:
    """build_proof without its checks: a proof of whatever `piece_bytes` holds."""
    file = meta.files[shard.file_index]
    per_piece = blocks_per_piece(meta.piece_length)
    file_leaf = shard_first_leaf(file, shard, meta.piece_length) + leaf_index_in_shard
    piece_in_file, leaf_in_piece = divmod(file_leaf, per_piece)
    leaves = compute_leaf_hashes(piece_bytes)
    data = bytes(piece_bytes[leaf_in_piece * BLOCK_SIZE:(leaf_in_piece + 1) * BLOCK_SIZE])
    if file.length <= meta.piece_length:
        return Proof(file_leaf, data, sibling_path(leaves, leaf_in_piece))
    piece_height = ceil_log2(per_piece)
    layer = meta.piece_layers[file.pieces_root]
    lower = sibling_path(leaves, leaf_in_piece, height=piece_height)
    upper = tuple(level[(piece_in_file >> h) ^ 1] for h, level in enumerate(_layer_levels(layer, piece_height)))
    return Proof(file_leaf, data, lower + upper)


def corrupt_range(path, offset: int, length: int) -> int:
    """Flip the first byte of every 16 KiB block in [offset, offset + length); returns bytes flipped."""
    flipped = 0
    with open(path, "r+b", buffering=0) as f:
        for pos in range(offset, offset + length, BLOCK_SIZE):
            b = os.pread(f.fileno(), 1, pos)
            if not b:
                break
            os.pwrite(f.fileno(), bytes([b[0] ^ 0xFF]), pos)
            flipped += 1
        os.fsync(f.fileno())
    return flipped


class CorrupterPeer(PeerNode):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.corrupted: set[tuple[str, int]] = set()

    def build_answer(self, challenge_id: bytes, entry):
        if not is_verified_holder(self, entry.collection, entry.shard):
            return super().build_answer(challenge_id, entry)
        held = self.held_shard(entry.collection, entry.shard)
        if held is None:
            return None
        meta, shard, rec = held
        file = meta.files[shard.file_index]
        path = self.data_dir / meta.name / file.path
        offset = shard_first_leaf(file, shard, meta.piece_length) * BLOCK_SIZE
        try:
            if (rec.info_hash, entry.shard) not in self.corrupted:
                n = corrupt_range(path, offset, shard.length)
                self.corrupted.add((rec.info_hash, entry.shard))
                log.warning("ADVERSARY corrupter: flipped %d bytes of shard %s/%d on disk (%s)",
                            n, rec.info_hash[:12], entry.shard, file.path)
            piece = self.read_leaf_piece(meta, shard, entry.leaf)
        except (OSError, StorageError) as exc:
            log.error("cannot read shard %s/%d: %s", rec.info_hash[:12], entry.shard, exc)
            return None
        proof = forge_proof(meta, shard, entry.leaf, piece)
        log.warning("ADVERSARY corrupter: answering challenge %s with a forged proof of leaf %d",
                    challenge_id.hex()[:12], entry.leaf)
        return make_proof_answer(self.key, self.chain_id, get_challenge_from_entry(challenge_id, entry), proof)


main = make_main(CorrupterPeer, "tools.adversary.corrupter")

if __name__ == "__main__":
    run_module(main)
