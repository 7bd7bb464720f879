"""wrongleaf: holds the data, but answers with a valid proof of a leaf it was not asked for.

Misbehaviour: after a holding is verified (its claim challenge is answered honestly, so
the copy counts first), every challenge on it gets a correct storage proof of the next
leaf of the shard (leaf + 1 mod leaf count), signed as the answer. For a one-leaf shard
there is no other leaf: it proves leaf 0 and relabels it as the file's leaf 1. Either
way the signed proof is not leaf `challenge.leaf` of the shard, so get_proof_verdict
returns INVALID, which excludes the peer at once and drops all its holdings.
"""
from __future__ import annotations

import dataclasses
import logging

from chain.proofs import make_proof_answer
from chain.state import get_challenge_from_entry
from node.peer import PeerNode
from storage.collection import leaf_count
from storage.errors import StorageError
from storage.proof import build_proof
from tools.adversary import is_verified_holder, make_main, run_module

log = logging.getLogger("cairn.adversary.wrongleaf")


class WrongLeafPeer(PeerNode):
    def build_answer(self, challenge_id: bytes, entry):
        if not is_verified_holder(self, entry.collection, entry.shard):
            return super().build_answer(challenge_id, entry)
        held = self.held_shard(entry.collection, entry.shard)
        if held is None:
            return None
        meta, shard, rec = held
        other = (entry.leaf + 1) % leaf_count(shard)
        try:
            proof = build_proof(meta, shard, other, self.read_leaf_piece(meta, shard, other))
        except StorageError as exc:
            log.error("cannot read shard %s/%d: %s", rec.info_hash[:12], entry.shard, exc)
            return None
        if other == entry.leaf:          # a one-leaf shard: claim the proof is of another leaf
            proof = dataclasses.replace(proof, leaf_index=proof.leaf_index + 1)
        log.warning("ADVERSARY wrongleaf: challenged on leaf %d of %s/%d, answering with file leaf %d",
                    entry.leaf, rec.info_hash[:12], entry.shard, proof.leaf_index)
        return make_proof_answer(self.key, self.chain_id, get_challenge_from_entry(challenge_id, entry), proof)


main = make_main(WrongLeafPeer, "tools.adversary.wrongleaf")

if __name__ == "__main__":
    run_module(main)
