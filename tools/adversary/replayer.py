"""replayer: holds nothing; answers its challenges with other holders' proofs, re-signed.

Misbehaviour: it follows the chain and, for every PASS ProofResult of another peer, asks
a beacon for the stored answer (GetProof -> ProofReply; also takes ProofMsgs that reach
it by gossip), keeping the proofs it collects per shard. It claims an assigned shard
without fetching it, but only once it holds such a proof for that shard (claiming
earlier would only earn a MISS). Challenged, it takes a collected proof of the shard,
one for the very leaf asked if it has one, else the newest, and signs it as its own
answer.

Verdicts:
  * Forwarding the other peer's answer unchanged proves nothing (get_proof_verdict
    rejects it: another challenge id, another peer's signature): no verdict, then MISS.
    That is why it re-signs.
  * Re-signed, the proof is the other holder's leaf. A claim challenge draws a random
    leaf of the shard, and an epoch challenge gives every holder of a shard a different
    leaf, so the leaf almost never matches: INVALID (a correctly signed wrong proof)
    -> EXCLUDED at once, all holdings dropped.
  * If the leaf does match (chance 1/leaf_count for a claim challenge; always for a
    one-leaf shard, i.e. a file of at most 16 KiB, whose every proof is leaf 0) the
    replay PASSES. Nothing can tell it apart: a proof carries the leaf's 16 KiB, so for
    a one-leaf shard the proof *is* the whole shard, and in general this is the known
    limit (fetching a challenged block from another holder on demand), see
    docs/adversaries.md.
"""
from __future__ import annotations

import logging
import time

from chain.proofs import make_proof_answer
from chain.state import EXCLUDED, LEFT, get_challenge, get_challenge_from_entry, get_peer
from chain.types import CLAIM, PASS, CommittedBlock, Holding, ProofResult
from node.messages import ROLE_BEACON, GetProof, ProofMsg, ProofReply
from node.peer import PeerNode
from storage.collection import shard_leaf_to_file_leaf
from storage.errors import StorageError
from storage.proof import Proof
from tools.adversary import make_main, run_module

log = logging.getLogger("cairn.adversary.replayer")

KEEP_PER_SHARD = 8
ASK_EVERY_S = 1.0
MAX_ASKS = 10


class ReplayerPeer(PeerNode):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.collected: dict[tuple[bytes, int], list[Proof]] = {}   # (collection, shard) -> proofs, oldest first
        self.wanted: dict[bytes, list] = {}                         # challenge id -> [collection, shard, asks, last ask]

    # ------------------------------------------------------------------ collecting other holders' proofs

    def apply_committed(self, committed: CommittedBlock, *args, **kwargs) -> None:
        before = self.state
        for signed in committed.block.body:
            rec = signed.record
            if isinstance(rec, ProofResult) and rec.verdict == PASS and rec.peer != self.me:
                challenge = get_challenge(before, rec.challenge_id)
                if challenge is not None:
                    self.wanted[rec.challenge_id] = [challenge.collection, challenge.shard, 0, 0.0]
        super().apply_committed(committed, *args, **kwargs)

    def ask_beacons(self) -> None:
        peer = get_peer(self.state, self.me)
        if peer is not None and peer.status in (EXCLUDED, LEFT):
            self.wanted.clear()          # caught: nothing left to replay into
            return
        beacons = [key for key, hello in self.hellos.items() if hello.role == ROLE_BEACON]
        if not beacons:
            return
        now = time.monotonic()
        for cid, want in list(self.wanted.items()):
            if want[2] >= MAX_ASKS:
                del self.wanted[cid]
            elif now - want[3] >= ASK_EVERY_S:
                self.send(beacons[want[2] % len(beacons)], GetProof(cid))
                want[2] += 1
                want[3] = now

    def keep(self, collection: bytes, shard: int, proof_bytes: bytes, source: str) -> None:
        try:
            proof = Proof.decode(proof_bytes)
        except StorageError:
            return
        kept = self.collected.setdefault((collection, shard), [])
        if proof not in kept:
            kept.append(proof)
            del kept[:-KEEP_PER_SHARD]
            log.info("ADVERSARY replayer: collected a proof of %s/%d (file leaf %d) from %s",
                     collection.hex()[:12], shard, proof.leaf_index, source)
            self.schedule_reconcile()

    def on_direct(self, peer: bytes, msg) -> None:
        if isinstance(msg, ProofReply):
            want = self.wanted.get(msg.challenge_id)
            if want is not None and msg.proof is not None:
                del self.wanted[msg.challenge_id]
                self.keep(want[0], want[1], msg.proof.proof, "a beacon's proof store")
            return
        super().on_direct(peer, msg)

    def on_gossip(self, peer, inner) -> None:
        if isinstance(inner, ProofMsg) and inner.peer != self.me:
            challenge = get_challenge(self.state, inner.challenge_id)
            if challenge is not None and challenge.peer == inner.peer:
                self.keep(challenge.collection, challenge.shard, inner.proof, "gossip")
        super().on_gossip(peer, inner)

    def on_tick(self) -> None:
        super().on_tick()
        self.ask_beacons()

    # ------------------------------------------------------------------ claiming and answering with them

    def start_fetch(self, info_hash: bytes, index: int) -> None:
        if self.holder_entry(info_hash, index) is not None or not self.collected.get((info_hash, index)):
            return
        key = ("claim", info_hash.hex(), index)
        if self.should_send(key):
            log.warning("ADVERSARY replayer: claiming shard %s/%d, holding only others' proofs", info_hash.hex()[:12], index)
            self.submit(key, Holding(self.me, info_hash, index, CLAIM, self.next_seq()))

    def build_answer(self, challenge_id: bytes, entry):
        proofs = self.collected.get((entry.collection, entry.shard))
        meta = self.collection_meta(entry.collection)
        if not proofs or meta is None:
            return None
        _, file_leaf = shard_leaf_to_file_leaf(meta, meta.shards[entry.shard], entry.leaf)
        proof = next((p for p in proofs if p.leaf_index == file_leaf), proofs[-1])
        log.warning("ADVERSARY replayer: challenged on file leaf %d of %s/%d, replaying a proof of leaf %d",
                    file_leaf, entry.collection.hex()[:12], entry.shard, proof.leaf_index)
        return make_proof_answer(self.key, self.chain_id, get_challenge_from_entry(challenge_id, entry), proof)


main = make_main(ReplayerPeer, "tools.adversary.replayer")

if __name__ == "__main__":
    run_module(main)
