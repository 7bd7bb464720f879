"""One live local network shared by the live API and browser tests (tests/test_*_live.py).

`live_net`: 4 beacons and 6 storage peers as real `cairn` processes on loopback, the
sample collection of `cairn demo` published with target 3, converged (every shard at 3
verified holders, the publisher gone) before the first test runs. The tests that use it
are run one after the other and the network is stopped right after the last of them, so
it does not load the machine while the rest of the suite runs.
"""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import settings

# Property tests: `make test` runs a fixed, reproducible set of examples (derandomized:
# the same run on every machine, so a red CI is a change's fault, not the dice's), and
# no per-example deadline (the suite shares two cores with live networks).
# HYPOTHESIS_PROFILE=explore draws fresh examples each run (ten times as many where a
# test does not set its own count): run it to hunt for new counterexamples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True,
                          max_examples=10 * settings.default.max_examples)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LIVE = "live_net"
TARGET = 3


def pytest_collection_modifyitems(session, config, items):
    """Run the tests that use the live network together (at the place of the first one)."""
    live = [it for it in items if LIVE in getattr(it, "fixturenames", ())]
    if not live or len(live) == len(items):
        return
    first = items.index(live[0])
    rest = [it for it in items if LIVE not in getattr(it, "fixturenames", ())]
    items[:] = rest[:first] + live + rest[first:]


_running: list = []


def pytest_runtest_teardown(item, nextitem):
    if LIVE in getattr(item, "fixturenames", ()) and (
            nextitem is not None and LIVE not in getattr(nextitem, "fixturenames", ())):
        while _running:
            _running.pop().stop_all()


@pytest.fixture(scope="session")
def live_net(tmp_path_factory):
    from tools.demo import DEMO_PARAMS, make_sample_collection
    from tools.testnet import Network, http_json, wait_for

    root = tmp_path_factory.mktemp("live-net")
    net = Network(root, chain_id="cairn-live-test")
    _running.append(net)
    try:
        net.create(4, DEMO_PARAMS)
        for _ in range(6):
            net.add_peer("64MiB")
        net.start_all()
        wait_for(lambda: all(h is not None and h >= 1 for h in net.heights()), 60, what="first block")
        net.sample = make_sample_collection(root / "sample")
        net.publisher = net.publish(net.sample, "sample", target=TARGET)
        api = net.beacons[0].api
        t0 = time.monotonic()
        wait_for(lambda: (rows := http_json(api + "/api/collections/sample")["shards"])
                 and all(len(r["verified_holders"]) == TARGET for r in rows), 120,
                 what="every shard of the sample at 3 verified holders")
        assert net.publisher.wait(timeout=60) == 0, net.publisher_log()
        net.converged_after_s = time.monotonic() - t0
        net.peer_ids = {wait_for(lambda: http_json(p.api + "/api/status")["node_id"], 30): p
                        for p in net.peers}
        yield net
    finally:
        net.stop_all()
        if net in _running:
            _running.remove(net)
        for node in net.all_nodes():
            if node.proc is not None and node.proc.returncode not in (0, None, -9):
                print(f"--- {node.name} exited {node.proc.returncode}\n{node.log_tail(30)}")
