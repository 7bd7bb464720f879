"""The simulator over the real chain (SimConfig(app="chain"), tools/sim/chainapp.py).

Values are real blocks: built by chain.transition.build_block with the proposer's
signing and ECVRF keys and the simulated clock, checked by process_proposal, applied
with process_block and the decided commit; evidence of double votes goes on chain as
Evidence records. Every run also passes Simulation.check_safety. The checks here read the
chain itself: block hashes, header randomness and state roots, a replay from genesis, and
Evidence records decoded from finalized block bodies.
"""
from __future__ import annotations

import random

from chain.codec import decode, encode
from chain.constants import KIND_PRECOMMIT, KIND_PREVOTE, MAX_TIMESTAMP_STEP_MS
from chain.crypto import is_valid_signature
from chain.genesis import get_genesis_state
from chain.state import get_chain_info, get_height
from chain.transition import get_proposer, process_block, process_proposal
from chain.types import PREVOTE, Block, Evidence
from tools.sim.app import evidence_key
from tools.sim.byzantine import DoubleVoter, EquivocatingProposer, StaleReplayer, Withholding, byzantine_slots
from tools.sim.chainapp import ChainApp
from tools.sim.network import NetConfig, Partition
from tools.sim.runner import SimConfig, Simulation

HEIGHTS = 6
DEADLINE_MS = 120_000
LOSSY = NetConfig(min_delay_ms=2, max_delay_ms=60, drop_prob=0.05, reorder_prob=0.2, reorder_extra_ms=200)
SEEDS = {4: range(6), 7: range(5)}
NS = (4, 7)


def run(config: SimConfig, height: int = HEIGHTS, deadline_ms: int = DEADLINE_MS) -> Simulation:
    sim = Simulation(config)
    live = sim.run_until_height(height, deadline_ms)
    sim.check_safety()
    assert live, f"seed {config.seed}: stuck at {[(n.idx, n.core.height, n.core.round) for n in sim.honest()]}"
    check_chains(sim)
    return sim


def blocks_of(node) -> dict[int, Block]:
    return {h: decode(d.value, Block) for h, d in node.decisions.items()}


def check_chains(sim: Simulation) -> None:
    """Every honest node holds the same real chain up to the shortest one: same block hash,
    chain randomness and state root at each height, and those are the block headers'; a
    replay from genesis by process_block alone reproduces the head; timestamps follow the
    chain's rules."""
    honest = sim.honest()
    assert all(isinstance(n.app, ChainApp) for n in honest)
    shortest = min(n.app.height for n in honest)
    reference = honest[0]
    ref_blocks = blocks_of(reference)
    for h in range(1, shortest + 1):
        assert len({n.decisions[h].value_hash for n in honest}) == 1, f"disagreement at height {h}"
        assert len({n.app.randomness_at(h) for n in honest}) == 1, f"randomness diverged at {h}"
        assert len({n.app.state_root_at(h) for n in honest}) == 1, f"state roots diverged at {h}"
        header = ref_blocks[h].header
        assert ref_blocks[h].hash() == reference.decisions[h].value_hash
        assert reference.app.randomness_at(h) == header.randomness
        assert reference.app.state_root_at(h) == header.state_root
    for n in honest:
        assert get_height(n.app.state) == n.app.height == max(n.decisions, default=0)
        assert n.app.randomness == get_chain_info(n.app.state).randomness
    # replay the reference chain from genesis with its commits
    genesis = sim.chain_setup.genesis
    state = get_genesis_state(genesis)
    previous_ts = genesis.genesis_time_ms
    for h in sorted(ref_blocks):
        block = ref_blocks[h]
        state = process_block(state, block, reference.decisions[h].commit)
        assert previous_ts < block.header.timestamp_ms <= previous_ts + MAX_TIMESTAMP_STEP_MS
        assert block.header.timestamp_ms <= genesis.genesis_time_ms + sim.now_ms
        previous_ts = block.header.timestamp_ms
    assert state.root == reference.app.state.root


def on_chain_evidence(node) -> dict[tuple, Evidence]:
    """Evidence records decoded from the bodies of the node's finalized blocks."""
    found = {}
    for h, block in sorted(blocks_of(node).items()):
        for signed in block.body:
            if isinstance(signed.record, Evidence):
                assert signed.signature == b""
                key = evidence_key(signed.record)
                assert key not in found, "a double vote is on chain twice"
                assert key[1] <= h
                found[key] = signed.record
    return found


def test_honest_real_chain_agrees_with_identical_randomness_and_state():
    for n in NS:
        for seed in SEEDS[n]:
            sim = run(SimConfig(n=n, seed=seed, net=LOSSY, app="chain"))
            heads = {(node.app.randomness, node.app.state.root) for node in sim.honest() if node.app.height == HEIGHTS}
            assert len(heads) == 1
            # the proposer of every height is the one the chain names
            app = sim.nodes[0].app
            for h, block in blocks_of(sim.nodes[0]).items():
                expected = get_proposer(app.states[h - 1], h, block.header.round).public_key
                assert block.header.proposer == expected
                assert not block.body


def test_byzantine_validators_on_the_real_chain():
    for n in NS:
        for seed in SEEDS[n]:
            behaviours = [EquivocatingProposer, DoubleVoter, StaleReplayer, Withholding]
            byz = byzantine_slots(n, seed, behaviours[seed % 4:] + behaviours[:seed % 4])
            run(SimConfig(n=n, seed=seed, net=LOSSY, byzantine=byz, app="chain"))


def test_an_equivocating_proposer_builds_two_valid_blocks():
    """The twin is a second real block for the same (height, round): same proposer and
    parent, another timestamp; both pass process_proposal on the parent state."""
    twins = 0
    for n in NS:
        for seed in SEEDS[n]:
            byz_idx = seed % n
            sim = run(SimConfig(n=n, seed=seed, net=LOSSY, byzantine=((byz_idx, EquivocatingProposer),), app="chain"))
            liar = sim.nodes[byz_idx]
            honest = sim.honest()[0]
            for (h, r), twin in liar._twins.items():
                if h > honest.app.height:
                    continue
                block = decode(twin.value, Block)
                parent = honest.app.states[h - 1]
                process_proposal(parent, block)
                originals = [p for (ph, pr, p) in liar.app.proposed if (ph, pr) == (h, r) and p != block.hash()]
                assert originals and block.header.round == r
                twins += 1
    assert twins > 0


def test_liveness_after_a_partition_heals_on_the_real_chain():
    for n in NS:
        half = frozenset(range(n // 2))
        for seed in range(4):
            rng = random.Random(seed)
            start, heal = rng.randrange(0, 300), rng.randrange(3_000, 10_000)
            split = Partition(start, heal, (half, frozenset(range(n)) - half))
            net = NetConfig(min_delay_ms=2, max_delay_ms=60, drop_prob=0.1, reorder_prob=0.2, partitions=(split,))
            byz = byzantine_slots(n, seed, [DoubleVoter, EquivocatingProposer, Withholding])
            sim = Simulation(SimConfig(n=n, seed=seed, net=net, byzantine=byz[:1], app="chain"))
            sim.run_until(heal)
            stalled = min(node.app.height for node in sim.honest())
            assert sim.run_until_height(stalled + HEIGHTS, heal + 30_000), f"n={n} seed {seed} not live after heal"
            sim.check_safety()
            check_chains(sim)
            # blocks decided after the heal carry timestamps from after it
            late = blocks_of(sim.honest()[0])[stalled + HEIGHTS]
            assert late.header.timestamp_ms >= sim.chain_setup.genesis.genesis_time_ms + heal


def test_every_double_vote_ends_up_as_an_evidence_record_in_a_finalized_block():
    for n in NS:
        for seed in SEEDS[n]:
            byz = byzantine_slots(n, seed, [DoubleVoter])
            sim = run(SimConfig(n=n, seed=seed, net=LOSSY, byzantine=byz, app="chain"), height=10)
            node = max(sim.honest(), key=lambda x: x.app.height)
            on_chain = on_chain_evidence(node)
            convicted = {key[0] for key in on_chain}
            assert convicted == {sim.validators[i] for i, _ in byz}
            for ev in on_chain.values():
                a, b = ev.vote_a.vote, ev.vote_b.vote
                assert a.block_hash < b.block_hash
                domain = KIND_PREVOTE if a.kind == PREVOTE else KIND_PRECOMMIT
                assert all(is_valid_signature(sv.vote.validator, sv.signature, sim.chain_id, domain, encode(sv.vote))
                           for sv in (ev.vote_a, ev.vote_b))
            # what honest nodes reported in all but the last few heights is on chain
            old = {k for k, h in sim.evidence_seen_at.items() if h <= 10 - 4}
            assert old and old <= set(on_chain), f"n={n} seed {seed}: {len(old - set(on_chain))} missing"
            assert on_chain == node.app.decided_evidence


def test_crash_restart_and_observers_on_the_real_chain():
    for seed in range(2):
        rng = random.Random(seed)
        sim = Simulation(SimConfig(n=4, seed=seed, net=LOSSY, byzantine=((0, EquivocatingProposer),),
                                   observers=1, app="chain"))
        for _ in range(2):
            victim = rng.choice([1, 2, 3])
            sim.run_until(sim.now_ms + rng.randrange(20, 400))
            sim.crash(victim)
            sim.run_until(sim.now_ms + rng.randrange(0, 300))
            sim.restart(victim, sim.now_ms)
        assert sim.run_until_height(HEIGHTS, DEADLINE_MS)
        sim.check_safety()
        check_chains(sim)
        assert not sim.double_signs
        watcher = sim.nodes[4]
        assert watcher.key is None and watcher.app.state.root == sim.nodes[1].app.states[watcher.app.height].root


def test_a_seed_fixes_the_whole_real_chain_run():
    def trace(seed: int) -> list:
        sim = run(SimConfig(n=4, seed=seed, net=LOSSY, byzantine=((2, DoubleVoter),), app="chain"))
        return [(h, s.decided_ms, s.rounds) for h, s in sorted(sim.heights.items())] + [
            sim.nodes[0].app.randomness, sim.nodes[0].app.state.root, sim.network.sent]
    assert trace(3) == trace(3)
    assert trace(3) != trace(4)
