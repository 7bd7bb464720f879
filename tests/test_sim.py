"""Many seeded runs of the real consensus cores in the simulator, honest and byzantine.

Every run checks (Simulation.check_safety): agreement (one value per height across all
honest nodes), validity (decided values were proposed, are well-formed, carry a quorum
commit), identical randomness chains, and no honest double signature. Liveness: all
honest nodes reach the target height before a deadline in simulated time.
"""
from __future__ import annotations

import random

import pytest

from chain.types import PRECOMMIT, PREVOTE
from tools.sim.app import SimApp
from tools.sim.byzantine import (
    DoubleVoter, EquivocatingProposer, LockBreaker, StaleReplayer, Withholding, byzantine_slots,
)
from tools.sim.network import NetConfig, Partition
from tools.sim.runner import SimConfig, Simulation, sim_key

HEIGHTS = 5
DEADLINE_MS = 120_000
LOSSY = NetConfig(min_delay_ms=2, max_delay_ms=60, drop_prob=0.05, reorder_prob=0.2, reorder_extra_ms=200)
SEEDS = {4: range(25), 7: range(20)}


def run(config: SimConfig, height: int = HEIGHTS, deadline_ms: int = DEADLINE_MS) -> Simulation:
    sim = Simulation(config)
    live = sim.run_until_height(height, deadline_ms)
    sim.check_safety()
    assert live, f"seed {config.seed}: stuck at {[(n.idx, n.core.height, n.core.round) for n in sim.honest()]}"
    return sim


@pytest.mark.parametrize("n", [4, 7])
def test_honest_network_is_safe_and_live(n):
    for seed in SEEDS[n]:
        sim = run(SimConfig(n=n, seed=seed, net=LOSSY))
        assert len({n.app.randomness for n in sim.honest() if n.app.height == HEIGHTS}) == 1


@pytest.mark.parametrize("behaviour", [Withholding, EquivocatingProposer, DoubleVoter, StaleReplayer])
@pytest.mark.parametrize("n", [4, 7])
def test_f_byzantine_validators_of_each_kind(n, behaviour):
    for seed in SEEDS[n]:
        run(SimConfig(n=n, seed=seed, net=LOSSY, byzantine=byzantine_slots(n, seed, [behaviour])))


def test_mixed_byzantine_validators_on_a_lossy_network():
    for seed in range(15):
        byz = byzantine_slots(7, seed, [EquivocatingProposer, DoubleVoter])
        sim = run(SimConfig(n=7, seed=seed, net=LOSSY, byzantine=byz))
        rounds = [r for h in sim.heights.values() for r in h.rounds.values()]
        assert max(rounds) <= 6


@pytest.mark.parametrize("n", [4, 7])
def test_liveness_after_a_partition_heals(n):
    """No side of the split has a quorum, so nothing can be decided until it heals; then
    all honest nodes must reach the target height within the deadline."""
    half = frozenset(range(n // 2))
    for seed in range(12):
        rng = random.Random(seed)
        start, heal = rng.randrange(0, 300), rng.randrange(3_000, 10_000)
        split = Partition(start, heal, (half, frozenset(range(n)) - half))
        net = NetConfig(min_delay_ms=2, max_delay_ms=60, drop_prob=0.1, reorder_prob=0.2, partitions=(split,))
        byz = byzantine_slots(n, seed, [Withholding, DoubleVoter, EquivocatingProposer, StaleReplayer])
        sim = Simulation(SimConfig(n=n, seed=seed, net=net, byzantine=byz[:1]))
        sim.run_until(heal)
        stalled = min(node.app.height for node in sim.honest())
        assert sim.run_until_height(stalled + HEIGHTS, heal + 30_000), f"seed {seed} not live after heal"
        sim.check_safety()


def test_minority_cut_off_catches_up_through_commits():
    """Node 3 is isolated while the other three decide; after the heal it syncs the
    missed heights from commits and then takes part again."""
    for seed in range(8):
        cut = Partition(0, 3_000, (frozenset({0, 1, 2}), frozenset({3})))
        sim = Simulation(SimConfig(n=4, seed=seed, net=NetConfig(partitions=(cut,))))
        sim.run_until(3_000)
        assert sim.nodes[3].app.height == 0 and min(sim.nodes[i].app.height for i in range(3)) >= 5
        assert sim.run_until_height(sim.nodes[0].app.height + 3, 20_000)
        sim.check_safety()


def test_every_double_voter_is_convicted_on_chain():
    for seed in range(12):
        n = 7 if seed % 2 else 4
        byz = byzantine_slots(n, seed, [DoubleVoter])
        sim = run(SimConfig(n=n, seed=seed, net=LOSSY, byzantine=byz), height=10)
        decided = sim.decided_evidence()
        convicted = {key[0] for key in decided}
        assert convicted == {sim.validators[i] for i, _ in byz}
        # what honest nodes reported in all but the last few heights is on chain
        old = {k for k, h in sim.evidence_seen_at.items() if h <= 10 - 4}
        assert old and old <= set(decided)
        honest = {sim.validators[n.idx] for n in sim.honest()}
        assert not convicted & honest


def test_crashed_validators_restart_without_double_signing():
    """Honest validators crash at random moments (mid-round) and come back from their
    persisted SignState, next to an equivocating proposer and a replayer of stale messages."""
    for seed in range(12):
        rng = random.Random(seed)
        byz = ((0, EquivocatingProposer), (1, StaleReplayer))
        sim = Simulation(SimConfig(n=7, seed=seed, net=LOSSY, byzantine=byz))
        restarts = 0
        for _ in range(4):
            victim = rng.choice([2, 3, 4, 5, 6])
            sim.run_until(sim.now_ms + rng.randrange(20, 400))
            sim.crash(victim)
            sim.run_until(sim.now_ms + rng.randrange(0, 300))
            sim.restart(victim, sim.now_ms)
            restarts += 1
        assert restarts == 4
        assert sim.run_until_height(HEIGHTS + 3, DEADLINE_MS)
        sim.check_safety()
        assert not sim.double_signs


def test_observers_decide_the_same_chain_without_signing():
    for seed in range(6):
        sim = run(SimConfig(n=4, seed=seed, net=LOSSY, observers=2))
        watchers = sim.nodes[4:]
        for w in watchers:
            assert w.key is None and not w.persisted
            for h in range(1, HEIGHTS + 1):
                assert w.decisions[h].value_hash == sim.nodes[0].decisions[h].value_hash


def test_a_seed_fixes_the_whole_run():
    def trace(seed: int) -> list:
        sim = run(SimConfig(n=4, seed=seed, net=LOSSY, byzantine=((2, DoubleVoter),)))
        return [(h, s.decided_ms, s.rounds) for h, s in sorted(sim.heights.items())] + [
            sim.nodes[0].app.randomness, sim.network.sent]
    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_locks_stop_a_scheduled_attack_on_agreement():
    """n = 4, one byzantine B. Round 0: P proposes v; everyone prevotes v; the honest
    precommit v, B precommits nil. The scheduler delivers the honest precommits only to P,
    so only P decides v; the other two honest validators see {v, v, nil}, time out and go
    to round 1, locked on v. Round 1: B proposes a fresh w and votes for it. Their locks
    make them prevote nil, so w gets no polka and they later decide v too. (Without the
    lock rule they would prevote w, B's vote completes the polka, and they decide w.)"""
    validators = tuple(sim_key(i).public_key for i in range(4))
    app = SimApp(b"sim", validators, None)
    p0 = validators.index(app.proposer(1, 0))
    byz = validators.index(app.proposer(1, 1))
    others = {0, 1, 2, 3} - {p0, byz}

    def slot(message) -> tuple | None:
        m = getattr(message, "message", None)
        if hasattr(m, "vote"):
            return m.vote.height, m.vote.round, m.vote.kind
        if hasattr(m, "proposal"):
            return m.proposal.height, m.proposal.round, 0
        return None

    def adversary(src: int, dst: int, message, now_ms: int) -> bool:
        if now_ms >= 2_000:
            return False
        s = slot(message)
        if src == p0 and dst != p0:
            return s not in ((1, 0, 0), (1, 0, PREVOTE))   # only P's proposal and prevote get out
        return dst == byz and s == (1, 0, PRECOMMIT)         # B must not decide either

    net = NetConfig(min_delay_ms=5, max_delay_ms=10, adversary=adversary)
    sim = Simulation(SimConfig(n=4, seed=0, net=net, byzantine=((byz, LockBreaker),)))
    live = sim.run_until_height(3, 20_000)
    sim.check_safety()                                     # everyone decided v at height 1
    assert live
    rounds = sim.heights[1].rounds
    assert rounds[p0] == 0 and all(rounds[i] >= 2 for i in others)   # the others lived through round 1
    assert sim.heights[1].decided_ms[p0] < 2_000


def test_latency_benchmark_runs_on_the_simulator():
    from tools.bench.consensus_latency import measure_commit_latency, run_latency
    report = run_latency(4, 5)
    assert 3 <= report.network_ms < 50                 # about three 1-3 ms message delays
    assert 27 <= report.messages_per_height < 30       # 3 proposals + 12 prevotes + 12 precommits (+ the next height begun)
    assert 0 < measure_commit_latency(4, 3) < 200
