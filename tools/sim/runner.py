"""Simulation: n consensus cores in one process over a seeded network, with the checks.

Typical use:

    sim = Simulation(SimConfig(n=4, seed=7, byzantine=((2, DoubleVoter),)))
    assert sim.run_until_height(5, deadline_ms=60_000)
    sim.check_safety()
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from chain.consensus import Broadcast, ConsensusConfig, Decide
from chain.crypto import SigningKey, sha256
from chain.types import Evidence
from tools.sim.app import SimApp, evidence_key
from tools.sim.chainapp import ChainApp, ChainSetup, make_chain_setup
from tools.sim.network import EventQueue, NetConfig, SimNetwork
from tools.sim.nodes import Node, SimInvariantError, signed_slot

SIM_CONSENSUS = ConsensusConfig(timeout_propose_ms=300, timeout_prevote_ms=100,
                                timeout_precommit_ms=100, timeout_delta_ms=100)


@dataclass(frozen=True)
class SimConfig:
    n: int = 4
    seed: int = 0
    net: NetConfig = NetConfig()
    consensus: ConsensusConfig = SIM_CONSENSUS
    gossip_ms: int = 400              # own messages of the current height are re-sent this often
    relay: bool = True                # honest nodes flood messages they see for the first time
    block_interval_ms: int = 0        # wait between a decision and the next height's start
    byzantine: tuple[tuple[int, type], ...] = ()   # (validator index, Node subclass)
    observers: int = 0                # non-voting nodes, indices n .. n+observers-1
    chain_id: bytes = b"sim"
    app: str = "sim"                  # "sim": SimApp (fast stand-in); "chain": ChainApp (real blocks)


@lru_cache(maxsize=64)
def sim_key(i: int) -> SigningKey:
    return SigningKey(sha256(b"cairn-sim/key/%d" % i))


@dataclass
class HeightStats:
    started_ms: dict[int, int] = field(default_factory=dict)     # node -> first start of the height
    decided_ms: dict[int, int] = field(default_factory=dict)     # node -> decision time
    rounds: dict[int, int] = field(default_factory=dict)         # node -> round decided in


class Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.chain_id = config.chain_id
        self.rng = random.Random(config.seed)
        self.queue = EventQueue()
        self.network = SimNetwork(config.net, self.rng, self.queue, self._deliver)
        self.validators = tuple(sim_key(i).public_key for i in range(config.n))
        if config.app not in ("sim", "chain"):
            raise ValueError(f"unknown sim app {config.app!r}")
        self.chain_setup: ChainSetup | None = (
            make_chain_setup(config.chain_id, [sim_key(i) for i in range(config.n)]) if config.app == "chain" else None)
        kinds = dict(config.byzantine)
        self.nodes: list[Node] = []
        for i in range(config.n + config.observers):
            cls = kinds.get(i, Node)
            self.nodes.append(cls(self, i, sim_key(i) if i < config.n else None))
        self.proposed: set[bytes] = set()
        self.signatures: dict[tuple[bytes, int, int, int], bytes] = {}   # honest (signer, h, r, step) -> hash
        self.double_signs: list[tuple[Any, ...]] = []
        self.evidence_seen: dict[tuple, Evidence] = {}                  # found by honest nodes
        self.evidence_seen_at: dict[tuple, int] = {}                    # key -> finder's height
        self.heights: dict[int, HeightStats] = {}
        self.persisted: dict[int, list] = {}                            # node -> records, across restarts
        for node in self.nodes:
            node.boot(0)

    def new_app(self, me: bytes | None) -> SimApp | ChainApp:
        """A fresh app at genesis for the node with public key `me` (None: an observer)."""
        if self.chain_setup is not None:
            return ChainApp(self.chain_setup, me, lambda: self.queue.now_ms)
        return SimApp(self.chain_id, self.validators, me)

    # ----- running

    @property
    def now_ms(self) -> int:
        return self.queue.now_ms

    def honest(self) -> list[Node]:
        return [n for n in self.nodes if n.honest]

    def run_until(self, until_ms: int) -> None:
        while (t := self.queue.next_time()) is not None and t <= until_ms:
            self.queue.run_one()
        self.queue.now_ms = max(self.queue.now_ms, until_ms)

    def run_until_height(self, height: int, deadline_ms: int) -> bool:
        """Run until every live honest node has decided `height`; False at the deadline."""
        def done() -> bool:
            return all(height in n.decisions for n in self.honest() if n.alive)
        while not done():
            t = self.queue.next_time()
            if t is None or t > deadline_ms:
                return False
            self.queue.run_one()
        return True

    def at(self, at_ms: int, action) -> None:
        self.queue.at(at_ms, action)

    def crash(self, idx: int) -> None:
        self.nodes[idx].alive = False

    def restart(self, idx: int, now_ms: int) -> Node:
        """Bring a crashed node back from what it persisted: its decisions and last SignState."""
        old = self.nodes[idx]
        old.alive = False
        app = self.new_app(old.key.public_key if old.key is not None else None)
        for h in sorted(old.decisions):
            d = old.decisions[h]
            app.apply(h, d.value, d.value_hash, d.commit)
        last = old.persisted[-1] if old.persisted else None
        node = type(old)(self, idx, old.key, last_signed=last, app=app)
        node.decisions = dict(old.decisions)
        self.nodes[idx] = node
        node.boot(now_ms)
        return node

    def _deliver(self, src: int, dst: int, message: Any, now_ms: int) -> None:
        node = self.nodes[dst]
        if node.alive:
            node.deliver(src, message, now_ms)

    # ----- what nodes report

    def note_start(self, node: Node, height: int, now_ms: int) -> None:
        self.heights.setdefault(height, HeightStats()).started_ms.setdefault(node.idx, now_ms)

    def note_decide(self, node: Node, decide: Decide, now_ms: int) -> None:
        stats = self.heights.setdefault(decide.height, HeightStats())
        stats.decided_ms[node.idx] = now_ms
        stats.rounds[node.idx] = decide.round

    def note_signed(self, node: Node, message: Broadcast) -> None:
        if not node.honest:
            return
        signer, h, r, step, value_hash = signed_slot(message)
        key = (signer, h, r, step)
        prior = self.signatures.setdefault(key, value_hash)
        if prior != value_hash:
            self.double_signs.append((node.idx, h, r, step, prior, value_hash))

    def note_evidence(self, node: Node, ev: Evidence) -> None:
        if node.honest:
            key = evidence_key(ev)
            self.evidence_seen.setdefault(key, ev)
            self.evidence_seen_at.setdefault(key, node.core.height)

    # ----- invariants

    def decided_hashes(self, height: int) -> dict[int, bytes]:
        return {n.idx: n.decisions[height].value_hash for n in self.honest() if height in n.decisions}

    def check_safety(self) -> None:
        """Agreement, validity, identical randomness and state roots, no honest double signature."""
        if self.double_signs:
            raise SimInvariantError(f"honest double signatures: {self.double_signs}")
        top = max((max(n.decisions, default=0) for n in self.honest()), default=0)
        for h in range(1, top + 1):
            hashes = set(self.decided_hashes(h).values())
            if len(hashes) > 1:
                raise SimInvariantError(f"disagreement at height {h}: {len(hashes)} values")
            for value_hash in hashes:
                if value_hash not in self.proposed:
                    raise SimInvariantError(f"height {h} decided a value nobody proposed")
        for n in self.honest():
            for h, d in n.decisions.items():
                if not n.app.is_well_formed(h, d.value, d.value_hash):
                    raise SimInvariantError(f"node {n.idx} decided an invalid value at {h}")
                if len(d.commit.signatures) < n.core.q:
                    raise SimInvariantError(f"node {n.idx} decided height {h} without a quorum")
        by_depth = sorted({n.app.height for n in self.honest()})
        if by_depth:
            shortest = by_depth[0]
            seen = {n.app.randomness_at(shortest) for n in self.honest()}
            if len(seen) > 1:
                raise SimInvariantError(f"randomness diverged by height {shortest}")
            for h in range(shortest + 1):
                if len({n.app.state_root_at(h) for n in self.honest()}) > 1:
                    raise SimInvariantError(f"state roots diverged at height {h}")

    def decided_evidence(self) -> dict[tuple, Evidence]:
        """Evidence in the values decided by the (longest) honest chain."""
        best = max(self.honest(), key=lambda n: n.app.height)
        return dict(best.app.decided_evidence)

    def latencies_ms(self, heights: range) -> list[int]:
        """Per height: time from the first honest start to the median honest decision."""
        out = []
        for h in heights:
            s = self.heights.get(h)
            if s is None:
                continue
            honest = [n.idx for n in self.honest()]
            decided = sorted(s.decided_ms[i] for i in honest if i in s.decided_ms)
            starts = [s.started_ms[i] for i in honest if i in s.started_ms]
            if decided and starts:
                out.append(decided[len(decided) // 2] - min(starts))
        return out
