"""Byzantine storage peers against a real network (docs/adversaries.md).

4 beacons, 5 honest peers and the 5 adversaries of tools/adversary (claimer, corrupter,
replayer, wrongleaf, silent), each a real process; the sample collection is published
with target 3 (the honest peers alone have room for it). A background monitor polls
beacon0's explorer API twice a block for the whole run and records, by head height,
every peer's status and reputation and every shard's verified holders.

Asserted, with bounds in blocks computed from DEMO_PARAMS (see docs/adversaries.md):
  * every adversary ends EXCLUDED, the liars with a signed INVALID (corrupter,
    replayer, wrongleaf) or through suspension and the grace period (claimer, silent),
    each within its bound; the claimer never counts as a holder;
  * no honest peer is ever anything but ACTIVE at full reputation (never one MISS);
  * after a shard first reaches 3 verified holders it is never below 3 for longer than
    the repair bound, and at the end every shard has 3 verified holders, all honest.
"""
from __future__ import annotations

import threading
import time
import urllib.error

import pytest

from chain.reputation import compute_misses_to_suspend, get_silent_suspension_bound_blocks
from chain.types import Params
from tools.adversary import ADVERSARIES, program
from tools.demo import DEMO_PARAMS, make_sample_collection
from tools.testnet import Network, http_json, wait_for

TARGET = 3
PARAMS = Params(**DEMO_PARAMS)
assert compute_misses_to_suspend(PARAMS) == 1, "the bounds below assume one MISS suspends (alpha 0.5)"
E = DEMO_PARAMS["epoch_blocks"]                      # 4
D = DEMO_PARAMS["proof_deadline_blocks"]             # 4
R = DEMO_PARAMS["proof_retries"]                     # 1
G = DEMO_PARAMS["grace_period_blocks"]               # 10
A = D * (R + 1)                                      # 8: a challenge's whole answer window
POLL = 2           # the monitor sees a height up to ~2 blocks late (polls every 0.5 s, API lag)
INCLUDE = 2        # an answer or record sent at once is in a block within 2 blocks
FETCH = 6          # fetch a 1 MiB shard from the other holders on loopback, claim it on chain
START_REPUTATION = 1_000_000

# Detection bounds, in blocks (docs/adversaries.md, "Bounds"), each plus the monitor's lag.
CLAIM_MISS_BOUND = 1 + A + POLL                # first claim on chain -> suspended: claim challenge, retry, MISS
SILENT_MISS_BOUND = get_silent_suspension_bound_blocks(PARAMS, 1) + POLL   # first verified -> suspended (E + A)
INVALID_BOUND = 2 * E + INCLUDE + POLL         # first verified -> excluded: a lie at the next epoch challenge
REPLAY_BOUND = 1 + D + POLL                    # first claim on chain -> excluded: replay to the claim challenge
GRACE_SLACK = POLL                             # suspended -> excluded is exactly G blocks on chain
# A counted copy lost after convergence is re-assigned in the same block, fetched,
# claimed and its claim challenge answered (HONEST_REPAIR). If the new assignee is an
# adversary not caught yet, its slot is held until it is: at most E + A blocks (silent),
# 1 + A (claimer), 1 + D (replayer).
HONEST_REPAIR = FETCH + 1 + INCLUDE + POLL
REPAIR_BOUND = (E + A) + HONEST_REPAIR

RUN_TIMEOUT = 150
SETTLED_WATCH = E + A      # keep watching after it settled: every honest holding challenged again


class Monitor(threading.Thread):
    """Polls beacon0 and keeps, by head height, what the tests assert on."""

    def __init__(self, net: Network, honest: dict[str, str], adversaries: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.api = net.beacons[0].api
        self.honest = honest                 # id -> name
        self.adversaries = adversaries       # id -> name
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.polls = 0
        self.head = 0
        self.first_head: int | None = None
        self.settled_head: int | None = None
        self.timeout: str | None = None
        self.head_time: dict[int, float] = {}                      # head -> monotonic time first seen
        self.status_first: dict[str, dict[str, int]] = {}         # id -> status -> first head seen
        self.honest_violations: list[tuple] = []
        self.first_claim: dict[str, int] = {}
        self.first_verified: dict[str, int] = {}
        self.shard_converged: dict[int, int] = {}
        self.below_since: dict[int, int] = {}
        self.below_spans: list[tuple[int, int, int]] = []         # (shard, from head, blocks)
        self.last_rows: list[dict] = []
        self.last_peers: dict[str, dict] = {}

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                self.poll()
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                continue

    def poll(self) -> None:
        head = http_json(self.api + "/api/status")["head_height"]
        peers = {p["id"]: p for p in http_json(self.api + "/api/peers?limit=100")["peers"]}
        try:
            rows = http_json(self.api + "/api/collections/sample")["shards"]
        except urllib.error.HTTPError:
            rows = []                        # not published yet
        with self.lock:
            self.polls += 1
            self.head = head
            self.first_head = head if self.first_head is None else self.first_head
            self.head_time.setdefault(head, time.monotonic())
            self.last_peers, self.last_rows = peers, rows
            for pid, p in peers.items():
                self.status_first.setdefault(pid, {}).setdefault(p["status"], head)
                if pid in self.honest and (p["status"] != "active" or p["reputation_ppm"] != START_REPUTATION
                                           or p["proofs_failed"] or p["proofs_missed"]):
                    self.honest_violations.append((head, self.honest[pid], p["status"], p["reputation_ppm"],
                                                   p["proofs_missed"], p["proofs_failed"]))
            for r in rows:
                for pid in r["claimed"]:
                    self.first_claim.setdefault(pid, head)
                for pid in r["verified_holders"]:
                    self.first_claim.setdefault(pid, head)
                    self.first_verified.setdefault(pid, head)
                i, n = r["index"], len(r["verified_holders"])
                if n >= TARGET:
                    self.shard_converged.setdefault(i, head)
                    if i in self.below_since:
                        start = self.below_since.pop(i)
                        self.below_spans.append((i, start, head - start))
                elif i in self.shard_converged and i not in self.below_since:
                    self.below_since[i] = head

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        with self.lock:                      # a shard still short at the end counts up to now
            for i, start in self.below_since.items():
                self.below_spans.append((i, start, self.head - start))

    def seconds(self, h0: int, h1: int) -> float:
        """Wall time between the monitor first seeing heads h0 and h1."""
        t = self.head_time
        return t.get(h1, max(t.values())) - t.get(h0, min(t.values()))

    def status_height(self, pid: str, status: str) -> int | None:
        with self.lock:
            return self.status_first.get(pid, {}).get(status)


def is_settled(mon: Monitor) -> bool:
    """Every adversary excluded, every shard at >= 3 verified holders, all of them honest."""
    with mon.lock:
        peers, rows = mon.last_peers, mon.last_rows
        if not rows or any(peers.get(pid, {}).get("status") != "excluded" for pid in mon.adversaries):
            return False
        return all(len(r["verified_holders"]) >= TARGET and set(r["verified_holders"]) <= set(mon.honest)
                   for r in rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole scenario, once: returns (network, monitor, names by id) after it settled."""
    root = tmp_path_factory.mktemp("adversary-net")
    net = Network(root, chain_id="cairn-adversary-test")
    mon = None
    try:
        net.create(4, DEMO_PARAMS)
        honest_nodes = [net.add_peer("64MiB") for _ in range(5)]
        adv_nodes = {name: net.add_peer("64MiB", program=program(name), name=name) for name in ADVERSARIES}
        net.start_all()
        wait_for(lambda: all(h is not None and h >= 1 for h in net.heights()), 60, what="first block")
        ids = {}
        for node in honest_nodes + list(adv_nodes.values()):
            ids[node.name] = wait_for(lambda n=node: http_json(n.api + "/api/status")["node_id"], 30,
                                      what=f"{node.name}'s API")
        by_id = {v: k for k, v in ids.items()}
        honest = {ids[n.name]: n.name for n in honest_nodes}
        adversaries = {ids[name]: name for name in ADVERSARIES}
        mon = Monitor(net, honest, adversaries)
        mon.start()
        wait_for(lambda: mon.first_head is not None, 30, what="the monitor's first poll")
        sample = make_sample_collection(root / "sample")
        started = time.monotonic()
        net.publish(sample, "sample", target=TARGET)
        try:
            try:
                wait_for(lambda: is_settled(mon), RUN_TIMEOUT, interval=0.5,
                         what="every adversary excluded and every shard at 3 honest verified holders")
            except TimeoutError as exc:      # each test below then says what did not happen
                mon.timeout = str(exc)
            else:
                mon.settled_head = mon.head
                wait_for(lambda: mon.head >= mon.settled_head + SETTLED_WATCH, 60, interval=0.5,
                         what=f"{SETTLED_WATCH} more blocks")
        finally:
            mon.finish()
            mon.elapsed = time.monotonic() - started
            print(f"\nsettled or gave up after {mon.elapsed:.0f} s at head {mon.head} ({mon.polls} polls)")
            for pid, name in sorted(by_id.items(), key=lambda kv: kv[1]):
                start = mon.first_verified.get(pid) or mon.first_claim.get(pid)
                st = mon.status_first.get(pid, {})
                took = {k: f"+{h - start} blocks/{mon.seconds(start, h):.1f}s" for k, h in st.items()
                        if k != "active" and start is not None}
                print(f"  {name:10s} claim {mon.first_claim.get(pid)} verified {mon.first_verified.get(pid)} "
                      f"statuses {st} {took}")
            print(f"  shards converged at {sorted(mon.shard_converged.items())}")
            print(f"  below-target spans (shard, from, blocks, seconds) "
                  f"{[(i, h, n, round(mon.seconds(h, h + n), 1)) for i, h, n in mon.below_spans]}")
            if mon.honest_violations:
                print(f"  honest violations {mon.honest_violations[:10]}")
        yield net, mon, by_id
    finally:
        if mon is not None and mon.is_alive():
            mon.finish()
        net.stop_all()
        for node in net.all_nodes():
            if node.proc is not None and node.proc.returncode not in (0, None, -9):
                print(f"--- {node.name} exited {node.proc.returncode}\n{node.log_tail(30)}")


def adversary_id(mon: Monitor, name: str) -> str:
    return next(pid for pid, n in mon.adversaries.items() if n == name)


def peer_detail(net: Network, pid: str) -> dict:
    return http_json(f"{net.beacons[1].api}/api/peers/{pid}", timeout=5.0)


def test_every_adversary_is_excluded_and_the_collection_is_whole(run):
    net, mon, _ = run
    assert mon.timeout is None, mon.timeout
    for pid, name in mon.adversaries.items():
        assert peer_detail(net, pid)["status"] == "excluded", name
    rows = http_json(net.beacons[2].api + "/api/collections/sample")["shards"]
    for r in rows:
        assert len(r["verified_holders"]) >= TARGET, r
        assert set(r["verified_holders"]) <= set(mon.honest), f"an adversary still counts on shard {r['index']}"
        assert not set(r["claimed"]) & set(mon.adversaries), f"an adversary still claims shard {r['index']}"


def test_liars_are_excluded_by_an_invalid_verdict(run):
    net, mon, _ = run
    for name in ("corrupter", "wrongleaf", "replayer"):
        pid = adversary_id(mon, name)
        detail = peer_detail(net, pid)
        invalid = [p["height"] for p in detail["proofs"] if p["verdict"] == "failed"]
        assert len(invalid) == 1, f"{name}: one INVALID verdict, then no more challenges: {detail['proofs']}"
        excluded = mon.status_height(pid, "excluded")
        assert mon.status_height(pid, "suspended") is None, f"{name} was excluded at once, never suspended"
        assert invalid[0] <= excluded <= invalid[0] + POLL, (name, invalid, excluded)
        if name == "replayer":
            start = mon.first_claim[pid]
            assert excluded - start <= REPLAY_BOUND, f"replayer excluded {excluded - start} blocks after its claim"
        else:
            start = mon.first_verified[pid]   # it proved honestly first, so the copy counted, then lied
            assert excluded - start <= INVALID_BOUND, f"{name} excluded {excluded - start} blocks after verification"


def test_claimer_is_suspended_then_excluded_and_never_counts(run):
    net, mon, _ = run
    pid = adversary_id(mon, "claimer")
    assert pid not in mon.first_verified, "a claim without data never verified"
    suspended, excluded = mon.status_height(pid, "suspended"), mon.status_height(pid, "excluded")
    assert suspended is not None and excluded is not None
    assert suspended - mon.first_claim[pid] <= CLAIM_MISS_BOUND, (mon.first_claim[pid], suspended)
    assert abs(excluded - suspended - G) <= GRACE_SLACK, (suspended, excluded)
    detail = peer_detail(net, pid)
    assert not [p for p in detail["proofs"] if p["verdict"] == "passed"]


def test_silent_is_suspended_then_excluded(run):
    net, mon, _ = run
    pid = adversary_id(mon, "silent")
    assert pid in mon.first_verified, "silent proves its copy once, so it counts before going silent"
    suspended, excluded = mon.status_height(pid, "suspended"), mon.status_height(pid, "excluded")
    assert suspended is not None and excluded is not None
    assert suspended - mon.first_verified[pid] <= SILENT_MISS_BOUND, (mon.first_verified[pid], suspended)
    assert abs(excluded - suspended - G) <= GRACE_SLACK, (suspended, excluded)
    assert not [p for p in peer_detail(net, pid)["proofs"] if p["verdict"] == "failed"], "a miss is not INVALID"


def test_no_honest_peer_is_ever_suspended_or_excluded(run):
    net, mon, _ = run
    published = http_json(net.beacons[0].api + "/api/collections")
    published = published["collections"] if isinstance(published, dict) else published
    assert mon.first_head < published[0]["published_height"], "the monitor watched from before the publish"
    assert mon.settled_head is None or mon.head >= mon.settled_head + SETTLED_WATCH, "and after it settled"
    # it polls twice a block; a loaded machine may slow it, but it must not go blind
    assert mon.polls >= (mon.head - mon.first_head) // 3, "at least one poll every three blocks"
    assert not mon.honest_violations, mon.honest_violations[:10]
    for pid, name in mon.honest.items():
        assert set(mon.status_first[pid]) == {"active"}, (name, mon.status_first[pid])
        detail = peer_detail(net, pid)
        assert detail["status"] == "active" and detail["reputation_ppm"] == START_REPUTATION, (name, detail)
        assert not [p for p in detail["proofs"] if p["verdict"] != "passed"], name


def test_no_shard_stays_below_target_longer_than_the_repair_bound(run):
    _, mon, _ = run
    assert len(mon.last_rows) >= 8
    assert len(mon.shard_converged) == len(mon.last_rows), "every shard reached 3 verified holders"
    worst = max((blocks for _, _, blocks in mon.below_spans), default=0)
    print(f"worst time below target after convergence: {worst} blocks (bound {REPAIR_BOUND})")
    assert worst <= REPAIR_BOUND, sorted(mon.below_spans, key=lambda s: -s[2])[:5]


def test_reputation_history_survives_a_beacon_restart(run):
    """Last in this file: it restarts beacon3.  The peer page's reputation over time is
    kept with the blocks, so a restarted beacon shows the same history as one that ran
    throughout (and both derive it from the chain alone)."""
    net, mon, _ = run
    pid = adversary_id(mon, "silent")
    before = peer_detail(net, pid)["reputation_history"]
    assert len(before) >= 2 and before[0]["reputation_ppm"] == START_REPUTATION
    assert before[-1]["reputation_ppm"] < START_REPUTATION, "the silent peer missed proofs"
    beacon = net.beacons[3]
    assert beacon.stop() == 0
    beacon.start()
    wait_for(lambda: beacon.status()["head_height"] >= mon.head, 60, what="beacon3 back at the head")
    after = http_json(f"{beacon.api}/api/peers/{pid}", timeout=5.0)["reputation_history"]
    assert after[:len(before)] == before
    assert after == peer_detail(net, pid)["reputation_history"][:len(after)]
