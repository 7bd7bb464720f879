"""A deterministic, seeded simulator that drives the real consensus cores in one process.

network.py: the event queue, integer clock and lossy, reordering, partitionable network.
app.py:     the simulated application (values, chained fake randomness, evidence pool).
chainapp.py: the real chain as the application (build_block, process_proposal,
            process_block, ECVRF randomness, Evidence records): SimConfig(app="chain").
nodes.py:   the honest node shell (the same duties as the beacon's asyncio shell).
byzantine.py: misbehaving validators, each its own class (the honest core is untouched).
runner.py:  Simulation: builds a network of nodes, runs it, checks the invariants.
"""
from tools.sim.network import EventQueue, NetConfig, Partition, SimNetwork
from tools.sim.runner import Simulation, SimConfig

__all__ = ["EventQueue", "NetConfig", "Partition", "SimNetwork", "Simulation", "SimConfig"]
