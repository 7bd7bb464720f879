"""claimer: claims every shard the targets assign it, without ever fetching a byte.

Misbehaviour: `start_fetch` signs a Holding CLAIM at once instead of downloading, and it
has nothing to answer challenges with. Caught by the claim challenge issued in the block
after the claim: no answer by the deadline, none to the retry -> MISS; with the demo
reputation (alpha 0.5) one MISS puts it under the suspension threshold, so it is
SUSPENDED (stops being eligible for assignments, its claims never counted anyway: a
claim counts only once verified), and EXCLUDED when the grace period runs out.
"""
from __future__ import annotations

import logging

from chain.types import CLAIM, Holding
from node.peer import PeerNode
from tools.adversary import make_main, run_module

log = logging.getLogger("cairn.adversary.claimer")


class ClaimerPeer(PeerNode):
    def start_fetch(self, info_hash: bytes, index: int) -> None:
        if self.holder_entry(info_hash, index) is not None:
            return
        key = ("claim", info_hash.hex(), index)
        if self.should_send(key):
            log.warning("ADVERSARY claimer: claiming shard %s/%d without fetching it", info_hash.hex()[:12], index)
            self.submit(key, Holding(self.me, info_hash, index, CLAIM, self.next_seq()))

    def build_answer(self, challenge_id: bytes, entry):
        return None      # nothing on disk: it cannot prove anything


main = make_main(ClaimerPeer, "tools.adversary.claimer")

if __name__ == "__main__":
    run_module(main)
