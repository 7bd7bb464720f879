"""silent: fetches and claims honestly, proves each copy once, then never answers again.

Misbehaviour: `build_answer` answers honestly until the first of its copies is verified
(so it is counted as a holder), then never answers any challenge again, while the
process keeps running, seeding, following the chain, even claiming new assignments. Caught by the first epoch challenge on one
of its verified shards: no answer by the deadline nor to the retry -> MISS -> SUSPENDED
(its copies stop counting and are re-created elsewhere at once) -> EXCLUDED when the
grace period ends with it still suspended (it never answers, so it never comes back).
"""
from __future__ import annotations

import logging

from node.peer import PeerNode
from chain.state import get_peer_holdings
from tools.adversary import is_verified_holder, make_main, run_module

log = logging.getLogger("cairn.adversary.silent")


class SilentPeer(PeerNode):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ignored: set[bytes] = set()

    def build_answer(self, challenge_id: bytes, entry):
        if any(is_verified_holder(self, ref.collection, ref.shard) for ref in get_peer_holdings(self.state, self.me).shards):
            if challenge_id not in self._ignored:
                self._ignored.add(challenge_id)
                log.warning("ADVERSARY silent: ignoring challenge %s on shard %s/%d",
                            challenge_id.hex()[:12], entry.collection.hex()[:12], entry.shard)
            return None
        return super().build_answer(challenge_id, entry)


main = make_main(SilentPeer, "tools.adversary.silent")

if __name__ == "__main__":
    run_module(main)
