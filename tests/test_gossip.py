"""Gossip flooding over simulated topologies, the seen-cache, scores, and peer discovery."""
from __future__ import annotations

import random
from collections import Counter, deque

import pytest

from chain.types import SignedVote, Vote
from node.gossip import (
    Gossip,
    GossipConfig,
    GossipPeerBanned,
    PeerBook,
    PeerBookConfig,
    SeenCache,
    Verdict,
)
from node.messages import (
    ROLE_PEER,
    GossipEnvelope,
    PeerEntry,
    Peers,
    VoteMsg,
    decode_message,
    encode_message,
    flooded_id,
)


def node_id(i: int) -> bytes:
    return bytes([i + 1]) * 32


def vote(n: int) -> VoteMsg:
    return VoteMsg(SignedVote(Vote(1, n, 0, b"\x01" * 32, b"\x02" * 32), b"\x03" * 64))


class Network:
    """Many Gossip cores wired by an in-memory FIFO (or seeded-shuffled) queue of frames."""

    def __init__(self, edges: list[tuple[int, int]], n: int, config: GossipConfig,
                 shuffle_seed: int | None = None) -> None:
        self.nodes = {node_id(i): Gossip(config, seed=i) for i in range(n)}
        for a, b in edges:
            self.nodes[node_id(a)].add_neighbour(node_id(b))
            self.nodes[node_id(b)].add_neighbour(node_id(a))
        self.queue: deque[tuple[bytes, bytes, bytes]] = deque()
        self.delivered: Counter[tuple[bytes, bytes]] = Counter()   # (node, msg id) -> count
        self.hops: dict[tuple[bytes, bytes], int] = {}
        self.sent = 0
        self.rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
        self.now = 0

    def _send(self, sender: bytes, forwards: list[tuple[bytes, GossipEnvelope]]) -> None:
        for peer, envelope in forwards:
            self.queue.append((sender, peer, encode_message(envelope)))
            self.sent += 1

    def publish(self, origin: int, inner: object) -> None:
        self._send(node_id(origin), self.nodes[node_id(origin)].publish(inner, self.now))

    def run(self) -> None:
        while self.queue:
            if self.rng is not None:
                self.queue.rotate(-self.rng.randrange(len(self.queue)))
            sender, receiver, frame = self.queue.popleft()
            self.now += 1
            envelope = decode_message(frame)
            deliver, forwards = self.nodes[receiver].on_message(sender, envelope, self.now)
            if deliver:
                self.delivered[(receiver, flooded_id(envelope.inner))] += 1
            self._send(receiver, forwards)


RING_WITH_CHORDS = [(i, (i + 1) % 10) for i in range(10)] + [(0, 5), (2, 7), (3, 8)]


@pytest.mark.parametrize("shuffle_seed", [None, 1, 2, 3])
def test_every_node_delivers_each_message_exactly_once(shuffle_seed: int | None) -> None:
    net = Network(RING_WITH_CHORDS, 10, GossipConfig(ttl=8), shuffle_seed)
    messages = {origin: vote(origin) for origin in (0, 4, 7)}
    for origin, inner in messages.items():
        net.publish(origin, inner)
    net.run()
    for origin, inner in messages.items():
        msg_id = flooded_id(inner)
        for i in range(10):
            expected = 0 if i == origin else 1
            assert net.delivered[(node_id(i), msg_id)] == expected, (origin, i)
    # Flooding costs at most one send per directed edge per message (minus the inbound one).
    directed_edges = 2 * len(RING_WITH_CHORDS)
    assert net.sent <= len(messages) * directed_edges
    for core in net.nodes.values():
        assert len(core.seen) == len(messages)


def test_ttl_bounds_the_hops() -> None:
    line = [(i, i + 1) for i in range(9)]
    net = Network(line, 10, GossipConfig(ttl=3))
    inner = vote(1)
    net.publish(0, inner)
    net.run()
    reached = [i for i in range(10) if net.delivered[(node_id(i), flooded_id(inner))]]
    assert reached == [1, 2, 3]


def test_bounded_fanout_is_seeded_and_still_reaches_everyone() -> None:
    complete = [(a, b) for a in range(12) for b in range(a + 1, 12)]

    def run() -> tuple[Network, list[tuple[bytes, bytes]]]:
        net = Network(complete, 12, GossipConfig(ttl=6, fanout=3))
        net.publish(0, vote(9))
        log = [(s, r) for s, r, _ in net.queue]
        net.run()
        return net, log

    net, first_sends = run()
    assert len(first_sends) == 3
    msg_id = flooded_id(vote(9))
    assert all(net.delivered[(node_id(i), msg_id)] == 1 for i in range(1, 12))
    assert net.sent <= 3 * 12
    assert run()[1] == first_sends          # same seeds, same choices


def test_seen_cache_bounds_count_and_expires_by_time() -> None:
    cache = SeenCache(max_entries=5, expiry_ms=1000)
    for i in range(20):
        assert cache.add(bytes([i]) * 32, now_ms=i)
        assert len(cache) <= 5
    assert bytes([19]) * 32 in cache and bytes([14]) * 32 not in cache

    core = Gossip(GossipConfig(seen_max=5, seen_expiry_ms=1000))
    core.add_neighbour(node_id(1))
    envelope = GossipEnvelope(vote(1), 2)
    assert core.on_message(node_id(1), envelope, 0).deliver
    assert not core.on_message(node_id(1), envelope, 500).deliver     # duplicate, refreshes expiry
    assert not core.on_message(node_id(1), envelope, 1400).deliver
    assert core.on_message(node_id(1), envelope, 2500).deliver        # forgotten after expiry
    for i in range(2, 30):
        core.on_message(node_id(1), GossipEnvelope(vote(i), 2), 2600)
        assert len(core.seen) <= 5


def test_published_messages_are_not_delivered_back() -> None:
    core = Gossip()
    core.add_neighbour(node_id(1))
    core.add_neighbour(node_id(2))
    forwards = core.publish(vote(3), 0)
    assert [peer for peer, _ in forwards] == [node_id(1), node_id(2)]
    assert all(env.ttl == GossipConfig().ttl for _, env in forwards)
    assert core.on_message(node_id(1), forwards[0][1], 1) == (False, [])


def test_forwarding_decrements_ttl_and_skips_the_sender() -> None:
    core = Gossip()
    for i in (1, 2, 3):
        core.add_neighbour(node_id(i))
    deliver, forwards = core.on_message(node_id(2), GossipEnvelope(vote(1), 4), 0)
    assert deliver
    assert forwards == [(node_id(1), GossipEnvelope(vote(1), 3)), (node_id(3), GossipEnvelope(vote(1), 3))]
    deliver, forwards = core.on_message(node_id(2), GossipEnvelope(vote(2), 1), 0)
    assert deliver and forwards == []


def test_invalid_messages_are_not_forwarded_and_ban_their_sender() -> None:
    def validate(inner: object) -> Verdict:
        number = inner.vote.vote.height
        return Verdict.REJECT if number >= 1000 else Verdict.IGNORE if number >= 500 else Verdict.ACCEPT

    core = Gossip(GossipConfig(reject_penalty=10, ban_score=50, decay_per_s=1), validate=validate)
    bad, other = node_id(1), node_id(2)
    core.add_neighbour(bad)
    core.add_neighbour(other)
    assert core.on_message(bad, GossipEnvelope(vote(500), 5), 0) == (False, [])
    assert core.score(bad, 0) == 0                       # ignored messages carry no blame
    for i in range(4):
        assert core.on_message(bad, GossipEnvelope(vote(1000 + i), 5), 0) == (False, [])
    assert core.score(bad, 0) == 40
    assert core.score(bad, 20_000) == 20                  # decays, one point a second
    assert core.score(bad, 100_000) == 0
    for i in range(4):
        core.on_message(bad, GossipEnvelope(vote(2000 + i), 5), 100_000)
    with pytest.raises(GossipPeerBanned) as caught:
        core.on_message(bad, GossipEnvelope(vote(3000), 5), 100_000)
    assert caught.value.peer == bad
    assert bad not in core.neighbours and other in core.neighbours
    # The honest neighbour's valid message still floods (not back to it, not to the banned one).
    assert core.on_message(other, GossipEnvelope(vote(7), 5), 100_001) == (True, [])


# ---------------------------------------------------------------------------- discovery

def address(i: int) -> str:
    return f"n{i}.test:{7000 + i}"


def test_discovery_from_one_bootstrap_reaches_everyone() -> None:
    n = 10
    books = {i: PeerBook(own_address=address(i), own_key=node_id(i),
                         bootstrap=[address(0)] if i else []) for i in range(n)}
    books[5] = PeerBook(own_address=address(5), own_key=node_id(5),
                        bootstrap=[address(0), "dead.test:1"])
    by_address = {address(i): i for i in range(n)}
    links: set[frozenset[int]] = set()
    dead_dials: list[int] = []
    now = 0
    for _ in range(8):
        for i in range(n):
            outbound = sum(1 for link in links if i in link)
            for target in books[i].to_dial(now, want=3 - outbound):
                j = by_address.get(target)
                if j is None:
                    dead_dials.append(now)
                    books[i].on_dial_failed(target, now)
                    continue
                links.add(frozenset((i, j)))
                books[i].on_connected(target, node_id(j), ROLE_PEER, now)
                books[j].on_connected(address(i), node_id(i), ROLE_PEER, now)   # from i's Hello
        for link in sorted(links, key=sorted):
            a, b = sorted(link)
            for me, them in ((a, b), (b, a)):
                reply = decode_message(encode_message(books[them].advertise()))
                books[me].on_peers(node_id(them), reply, now)
        now += 1000
    for i in range(n):
        known = {a for a in books[i].addresses() if a in by_address}
        assert known == {address(j) for j in range(n) if j != i}, i
        for j in range(n):
            if j != i:
                assert books[i].get(address(j)).public_key == node_id(j)
    # The dead bootstrap address was tried, failed, and is kept (bootstrap entries are pinned).
    assert dead_dials and "dead.test:1" in books[5]


def test_peer_book_backoff_forgetting_and_bounds() -> None:
    config = PeerBookConfig(max_entries=4, max_per_source=3, max_failures=3,
                            backoff_base_ms=100, backoff_max_ms=250, dial_timeout_ms=50)
    book = PeerBook(own_address="me.test:1", own_key=node_id(0), config=config)
    entries = tuple(PeerEntry(node_id(i), address(i), ROLE_PEER) for i in range(1, 6))
    own = PeerEntry(node_id(0), "me.test:1", ROLE_PEER)
    assert book.on_peers(node_id(9), Peers(entries + (own,)), 0) == 3     # per-source cap
    # When full, a new address replaces the least promising unverified one: the book stays bounded.
    assert book.on_peers(node_id(8), Peers(entries), 0) == 2
    assert len(book) == 4 and "me.test:1" not in book

    first = book.to_dial(0, want=1)
    assert len(first) == 1
    assert first[0] not in book.to_dial(10, want=10)          # held while its dial is in flight
    target = first[0]
    book.on_dial_failed(target, 0)
    assert target not in book.to_dial(99, want=10)
    assert target in book.to_dial(100, want=10)
    book.on_dial_failed(target, 100)                          # second failure: 200 ms
    assert target not in book.to_dial(299, want=10)
    assert target in book.to_dial(300, want=10)
    book.on_dial_failed(target, 300)                          # third failure: forgotten
    assert target not in book

    # Unverified entries are never advertised; connected ones are.
    assert book.advertise().entries == ()
    other = book.addresses()[0]
    book.on_connected(other, node_id(42), ROLE_PEER, 400)
    assert book.advertise().entries == (PeerEntry(node_id(42), other, ROLE_PEER),)
    # A verified key is not overwritten by someone else's claim.
    book.on_peers(node_id(7), Peers((PeerEntry(node_id(43), other, ROLE_PEER),)), 500)
    assert book.get(other).public_key == node_id(42)
    book.on_disconnected(other, 600)
    assert other not in book.to_dial(600, want=10)

    with pytest.raises(ValueError):
        PeerBook(bootstrap=["not an address"])


def test_bootstrap_addresses_back_off_but_are_never_forgotten() -> None:
    config = PeerBookConfig(max_failures=2, backoff_base_ms=100, backoff_max_ms=400)
    book = PeerBook(bootstrap=["boot.test:9"], config=config)
    now, dials = 0, []
    while len(dials) < 6:
        if book.to_dial(now, want=1):
            dials.append(now)
            book.on_dial_failed("boot.test:9", now)
        now += 50
    assert [b - a for a, b in zip(dials, dials[1:])] == [100, 200, 400, 400, 400]
    assert "boot.test:9" in book
