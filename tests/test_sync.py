"""Block sync: pipelined download from several peers, misbehaving peers, resume, serving."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import pytest

from chain.codec import encode
from chain.types import Block, BlockHeader, Commit, CommitSig, CommittedBlock, SignedRecord, PeerLeave
from node.messages import MAX_BLOCKS_BYTES, Blocks, GetBlocks, decode_message, encode_message
from node.sync import BadBlocksReply, Syncer, serve_get_blocks

GOOD_SIG = b"\x01" * 64
FORGED_SIG = b"\xee" * 64


def make_chain(n: int, *, sig: bytes = GOOD_SIG, salt: bytes = b"\x00" * 32,
               records: int = 0) -> list[CommittedBlock]:
    """n linked committed blocks; `sig` stands in for the commit's signatures."""
    chain: list[CommittedBlock] = []
    parent = b"\x00" * 32
    for height in range(1, n + 1):
        header = BlockHeader("cairn-test", height, 0, 1000 * height, parent, b"\x02" * 32,
                             b"\x03" * 80, b"\x04" * 32, salt, b"\x05" * 32)
        body = tuple(SignedRecord(PeerLeave(b"\x06" * 32, i), b"") for i in range(records))
        block = Block(header, b"\x07" * 64, body)
        chain.append(CommittedBlock(block, Commit(height, 0, block.hash(), (CommitSig(0, sig),))))
        parent = block.hash()
    return chain


class InvalidBlock(Exception):
    pass


@dataclass
class Ledger:
    """The shell's chain: verifies the (stand-in) commit and the parent link, like
    chain.transition would, and records every height it applied."""
    applied: list[CommittedBlock] = field(default_factory=list)

    @property
    def height(self) -> int:
        return len(self.applied)

    def apply(self, committed: CommittedBlock) -> None:
        header = committed.block.header
        parent = self.applied[-1].block.hash() if self.applied else b"\x00" * 32
        if header.height != self.height + 1 or header.parent_hash != parent:
            raise InvalidBlock(f"out of order at {header.height}")
        if any(s.signature != GOOD_SIG for s in committed.commit.signatures):
            raise InvalidBlock(f"bad commit at {header.height}")
        self.applied.append(committed)


Behaviour = Callable[[GetBlocks], Blocks | None]


def honest(chain: list[CommittedBlock], max_bytes: int = 1 << 20) -> Behaviour:
    def get(start: int, count: int) -> list[CommittedBlock]:
        return chain[start - 1:start - 1 + count]
    return lambda req: serve_get_blocks(get, req, max_bytes)


def silent(req: GetBlocks) -> None:
    return None


def wrong_range(chain: list[CommittedBlock]) -> Behaviour:
    return lambda req: Blocks(req.start_height, tuple(chain[req.start_height:req.start_height + req.count]))


def forged(chain: list[CommittedBlock]) -> Behaviour:
    """Structurally perfect blocks whose commits do not verify."""
    fake = make_chain(len(chain), sig=FORGED_SIG, salt=b"\x66" * 32)
    return honest(fake)


def tampered(chain: list[CommittedBlock]) -> Behaviour:
    """A block edited after the fact: its commit no longer names it."""
    def reply(req: GetBlocks) -> Blocks:
        blocks = list(chain[req.start_height - 1:req.start_height - 1 + req.count])
        victim = blocks[0]
        edited = Block(replace(victim.block.header, state_root=b"\x99" * 32),
                       victim.block.signature, victim.block.body)
        blocks[0] = CommittedBlock(edited, victim.commit)
        return Blocks(req.start_height, tuple(blocks))
    return reply


def peer(i: int) -> bytes:
    return bytes([i]) * 32


@dataclass
class Run:
    ledger: Ledger
    syncer: Syncer
    closed: set[bytes]
    max_inflight_seen: int
    peers_asked: set[bytes]
    now: int


def drive(syncer: Syncer, behaviours: dict[bytes, Behaviour], heads: dict[bytes, int],
          ledger: Ledger, *, stop_at: int | None = None, latency: dict[bytes, int] | None = None,
          now: int = 0, limit_ms: int = 120_000) -> Run:
    """The shell: sends requests, delivers replies after each peer's latency (through the
    wire codec), applies what the syncer hands out, closes links the syncer blames."""
    latency = latency or {}
    for p, head in heads.items():
        syncer.on_status(p, head, now)
    pending: list[tuple[int, bytes, bytes]] = []
    closed: set[bytes] = set()
    max_inflight, asked = 0, set()
    target = stop_at if stop_at is not None else max(heads.values())
    while ledger.height < target and now < limit_ms:
        for p, req in syncer.next_requests(now):
            assert p not in closed
            asked.add(p)
            reply = behaviours[p](decode_message(encode_message(req)))
            if reply is not None:
                pending.append((now + latency.get(p, 10), p, encode_message(reply)))
        max_inflight = max(max_inflight, len(syncer.inflight))
        due = sorted(x for x in pending if x[0] <= now)
        pending = [x for x in pending if x[0] > now]
        for _, p, frame in due:
            if p in closed:
                continue        # the link is gone; so is whatever was on it
            try:
                ready = syncer.on_blocks(p, decode_message(frame), now)
            except BadBlocksReply as exc:
                closed.add(exc.peer)
                continue
            for committed in ready:
                try:
                    ledger.apply(committed)
                except InvalidBlock:
                    blamed = syncer.on_apply_failed(committed.block.header.height)
                    if blamed is not None:
                        closed.add(blamed)
                    break
                syncer.on_applied(committed.block.header.height)
                if stop_at is not None and ledger.height >= stop_at:
                    break
            if stop_at is not None and ledger.height >= stop_at:
                break
        now += 5
    return Run(ledger, syncer, closed, max_inflight, asked, now)


def assert_in_order(ledger: Ledger, chain: list[CommittedBlock]) -> None:
    assert [c.block.header.height for c in ledger.applied] == list(range(1, len(ledger.applied) + 1))
    assert ledger.applied == chain[:len(ledger.applied)]


N = 150


def test_pipelined_sync_over_three_honest_peers() -> None:
    chain = make_chain(N)
    peers = {peer(i): honest(chain) for i in (1, 2, 3)}
    run = drive(Syncer(0, batch=8, max_inflight=4), peers, {p: N for p in peers}, Ledger(),
                latency={peer(1): 30, peer(2): 10, peer(3): 20})
    assert_in_order(run.ledger, chain)
    assert run.ledger.height == N and run.syncer.height == N
    assert not run.syncer.is_syncing and not run.closed
    assert run.max_inflight_seen == 4 and run.peers_asked == set(peers)


@pytest.mark.parametrize("bad_kind", ["silent", "wrong_range", "forged", "tampered"])
def test_sync_completes_in_order_despite_a_bad_peer(bad_kind: str) -> None:
    chain = make_chain(N)
    bad = peer(9)
    make_bad = {"silent": lambda c: silent, "wrong_range": wrong_range, "forged": forged,
                "tampered": tampered}[bad_kind]
    behaviours = {peer(1): honest(chain), peer(2): honest(chain), bad: make_bad(chain)}
    syncer = Syncer(0, batch=10, max_inflight=3, request_timeout_ms=200)
    run = drive(syncer, behaviours, {p: N for p in behaviours}, Ledger())
    assert_in_order(run.ledger, chain)
    assert run.ledger.height == N
    assert bad in run.peers_asked
    if bad_kind == "silent":
        assert not syncer.is_banned(bad) and not run.closed     # slow is not malicious
    else:
        assert syncer.is_banned(bad) and run.closed == {bad}
    assert not (run.closed - {bad})


def test_sync_completes_when_only_one_peer_is_honest() -> None:
    chain = make_chain(60)
    behaviours = {peer(1): forged(chain), peer(2): wrong_range(chain), peer(3): honest(chain)}
    run = drive(Syncer(0, batch=7, max_inflight=3), behaviours, {p: 60 for p in behaviours}, Ledger())
    assert_in_order(run.ledger, chain)
    assert run.ledger.height == 60 and run.closed == {peer(1), peer(2)}


def test_resume_after_crash_continues_from_the_store_head() -> None:
    chain = make_chain(N)
    behaviours = {peer(i): honest(chain) for i in (1, 2, 3)}
    heads = {p: N for p in behaviours}
    ledger = Ledger()
    first = drive(Syncer(0, batch=8), behaviours, heads, ledger, stop_at=57)
    assert ledger.height == 57
    # "Crash": the syncer and everything in flight are lost; the store (ledger) survives.
    second = drive(Syncer(ledger.height, batch=8), behaviours, heads, ledger, now=first.now)
    assert_in_order(ledger, chain)
    assert ledger.height == N and second.syncer.height == N


def test_timed_out_range_is_retried_elsewhere_and_the_slow_peer_cools_down() -> None:
    syncer = Syncer(0, batch=10, max_inflight=1, request_timeout_ms=100, cooldown_ms=1000)
    syncer.on_status(peer(1), 50, 0)
    assert syncer.next_requests(0) == [(peer(1), GetBlocks(1, 10))]
    assert syncer.next_deadline() == 100
    assert syncer.next_requests(99) == []
    syncer.on_status(peer(2), 50, 99)
    assert syncer.next_requests(100) == [(peer(2), GetBlocks(1, 10))]
    # The late answer from the slow peer is ignored without blame.
    chain = make_chain(10)
    assert syncer.on_blocks(peer(1), Blocks(1, tuple(chain)), 150) == []
    assert not syncer.is_banned(peer(1))
    assert syncer.on_blocks(peer(2), Blocks(1, tuple(chain)), 160) == chain


def test_reorder_buffer_releases_blocks_only_in_order() -> None:
    chain = make_chain(30)
    syncer = Syncer(0, batch=10, max_inflight=3, per_peer_inflight=1)
    for i in (1, 2, 3):
        syncer.on_status(peer(i), 30, 0)
    requests = dict((req.start_height, p) for p, req in syncer.next_requests(0))
    assert sorted(requests) == [1, 11, 21]
    assert syncer.on_blocks(requests[21], Blocks(21, tuple(chain[20:30])), 1) == []
    assert syncer.on_blocks(requests[11], Blocks(11, tuple(chain[10:20])), 2) == []
    assert syncer.on_blocks(requests[1], Blocks(1, tuple(chain[0:10])), 3) == chain


def test_short_and_empty_replies() -> None:
    chain = make_chain(20)
    syncer = Syncer(0, batch=10, max_inflight=1)
    syncer.on_status(peer(1), 20, 0)
    assert syncer.next_requests(0) == [(peer(1), GetBlocks(1, 10))]
    assert syncer.on_blocks(peer(1), Blocks(1, tuple(chain[:4])), 1) == chain[:4]   # size-bounded reply
    syncer.on_applied(4)
    assert syncer.next_requests(2) == [(peer(1), GetBlocks(5, 10))]
    # It claimed 20 but holds nothing from 5: it is not asked for 5 again until it says more.
    assert syncer.on_blocks(peer(1), Blocks(5, ()), 3) == []
    assert syncer.next_requests(4) == []
    assert not syncer.is_syncing and syncer.best_height == 4
    syncer.on_status(peer(1), 20, 5)
    assert syncer.next_requests(6) == [(peer(1), GetBlocks(5, 10))]


def test_unsolicited_and_oversized_replies_ban_the_sender() -> None:
    chain = make_chain(20)
    syncer = Syncer(0, batch=5, max_inflight=2)
    syncer.on_status(peer(1), 20, 0)
    syncer.on_status(peer(2), 20, 0)
    sent = syncer.next_requests(0)
    assert len(sent) == 2
    with pytest.raises(BadBlocksReply, match="unsolicited"):
        syncer.on_blocks(peer(3), Blocks(1, tuple(chain[:5])), 1)
    p, req = sent[0]
    with pytest.raises(BadBlocksReply, match="blocks for a request"):
        syncer.on_blocks(p, Blocks(req.start_height, tuple(chain[:6])), 1)
    assert syncer.is_banned(p) and syncer.is_banned(peer(3))
    syncer.on_status(p, 99, 2)          # a banned peer's claims are ignored
    assert syncer.best_height == 20
    other = peer(2) if p == peer(1) else peer(1)
    again = syncer.next_requests(2)
    assert again and all(q == other for q, _ in again)
    assert req in [r for _, r in again]    # the banned peer's range went to the other peer


def test_apply_failure_bans_sender_and_refetches_from_another_peer() -> None:
    chain = make_chain(20)
    fake = make_chain(20, sig=FORGED_SIG, salt=b"\x66" * 32)
    syncer = Syncer(0, batch=5, max_inflight=2, per_peer_inflight=1)
    syncer.on_status(peer(1), 20, 0)
    syncer.on_status(peer(2), 20, 0)
    sent = dict((req.start_height, p) for p, req in syncer.next_requests(0))
    liar, honest_peer = sent[1], sent[6]
    assert syncer.on_blocks(honest_peer, Blocks(6, tuple(chain[5:10])), 1) == []
    ready = syncer.on_blocks(liar, Blocks(1, tuple(fake[:5])), 2)
    assert ready == fake[:5] + chain[5:10]
    assert syncer.on_apply_failed(1) == liar
    assert syncer.is_banned(liar)
    assert syncer.next_requests(3) == [(honest_peer, GetBlocks(1, 5))]
    # The honest blocks after the failure were kept and come out right after the refetch.
    assert syncer.on_blocks(honest_peer, Blocks(1, tuple(chain[:5])), 4) == chain[:10]


def test_blocks_applied_from_consensus_free_the_pipeline() -> None:
    chain = make_chain(40)
    syncer = Syncer(0, batch=10, max_inflight=2)
    syncer.on_status(peer(1), 40, 0)
    assert [r.start_height for _, r in syncer.next_requests(0)] == [1, 11]
    syncer.on_applied(25)              # consensus decided up to 25 meanwhile
    assert syncer.height == 25
    assert syncer.next_requests(1) == [(peer(1), GetBlocks(26, 10)), (peer(1), GetBlocks(36, 5))]
    assert syncer.on_blocks(peer(1), Blocks(1, tuple(chain[:10])), 2) == []     # late, no blame
    assert not syncer.is_banned(peer(1))


def test_is_syncing_and_window() -> None:
    syncer = Syncer(10, batch=4, max_inflight=8, window=12)
    assert not syncer.is_syncing
    syncer.on_status(peer(1), 11, 0)
    assert not syncer.is_syncing                   # one behind is what consensus catches up
    for i in (1, 2, 3):
        syncer.on_status(peer(i), 1000, 0)
    assert syncer.is_syncing and syncer.best_height == 1000
    requested = [r for _, r in syncer.next_requests(0)]
    assert max(r.start_height + r.count - 1 for r in requested) == 22   # never past the window


def test_serve_get_blocks_bounds_the_reply() -> None:
    chain = make_chain(30, records=20)
    size = len(encode(chain[0]))

    def get(start: int, count: int) -> list[CommittedBlock]:
        return chain[start - 1:start - 1 + count]

    budget = 4 * (size + 5) + 32        # per-block array growth and the reply's own header
    reply = serve_get_blocks(get, GetBlocks(3, 10), max_bytes=budget)
    assert reply.start_height == 3 and reply.blocks == tuple(chain[2:6])
    assert len(encode_message(reply)) <= budget
    assert len(serve_get_blocks(get, GetBlocks(3, 10), max_bytes=budget - 1).blocks) == 3
    # One block always goes out, however small the budget.
    assert serve_get_blocks(get, GetBlocks(3, 10), max_bytes=10).blocks == (chain[2],)
    assert serve_get_blocks(get, GetBlocks(29, 10)).blocks == tuple(chain[28:30])
    assert serve_get_blocks(get, GetBlocks(31, 10)).blocks == ()
    # A store that skips a height yields only the consecutive prefix.
    gappy = lambda start, count: [chain[0], chain[2]]
    assert serve_get_blocks(gappy, GetBlocks(1, 3)).blocks == (chain[0],)
    big = serve_get_blocks(get, GetBlocks(1, 30), max_bytes=10 * MAX_BLOCKS_BYTES)
    assert len(big.blocks) == 30 and decode_message(encode_message(big)) == big
