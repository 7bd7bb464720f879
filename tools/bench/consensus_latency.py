"""Commit latency of the consensus core on the simulator, with real Ed25519 signatures.

    python -m tools.bench.consensus_latency [n ...]

`measure_commit_latency(n, rounds)` runs `rounds` heights among n honest validators over
a loopback-like network (1-3 ms per message, no loss) with block_interval 0, and returns
the mean commit latency in milliseconds: for each height, simulated time from the first
validator starting the height to the median validator deciding it, plus the CPU time one
validator spends per height (signing, verifying, the state machine, measured on the
wall clock). In the simulator all validators share one CPU, so the measured wall time is
divided by n: real validators process their messages in parallel.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tools.sim.network import NetConfig
from tools.sim.runner import SimConfig, Simulation

LOOPBACK = NetConfig(min_delay_ms=1, max_delay_ms=3)


@dataclass(frozen=True, slots=True)
class LatencyReport:
    n: int
    heights: int
    network_ms: float          # mean simulated latency (message delays only)
    cpu_ms_per_node: float     # wall-clock processing per validator per height
    messages_per_height: float

    @property
    def commit_ms(self) -> float:
        return self.network_ms + self.cpu_ms_per_node


def run_latency(n: int, rounds: int, seed: int = 1, net: NetConfig = LOOPBACK) -> LatencyReport:
    sim = Simulation(SimConfig(n=n, seed=seed, net=net, relay=False))
    started = time.perf_counter()
    if not sim.run_until_height(rounds, deadline_ms=rounds * 10_000):
        raise RuntimeError(f"no progress to height {rounds} with n={n}")
    wall_ms = (time.perf_counter() - started) * 1000
    sim.check_safety()
    lat = sim.latencies_ms(range(1, rounds + 1))
    return LatencyReport(
        n=n,
        heights=rounds,
        network_ms=sum(lat) / len(lat),
        cpu_ms_per_node=wall_ms / rounds / n,
        messages_per_height=sim.network.sent / rounds,
    )


def measure_commit_latency(n: int, rounds: int) -> float:
    """Mean commit latency in ms over `rounds` heights of n validators (see module doc)."""
    return run_latency(n, rounds).commit_ms


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [4, 7, 10]
    print(f"{'n':>3} {'heights':>7} {'network ms':>10} {'cpu ms/node':>11} {'commit ms':>9} {'msgs/height':>11}")
    for n in sizes:
        r = run_latency(n, 50)
        print(f"{r.n:>3} {r.heights:>7} {r.network_ms:>10.2f} {r.cpu_ms_per_node:>11.2f} "
              f"{r.commit_ms:>9.2f} {r.messages_per_height:>11.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
