"""Sans-IO flooding and peer discovery.

`Gossip` floods `GossipEnvelope`s: a message id is sha256 of the inner's canonical bytes,
a bounded seen-cache (LRU by count, expiring by time) drops duplicates, the TTL counts
the hops a message may still take, and each new message is validated (by a callback the
shell supplies) *before* it is delivered or forwarded, so invalid messages die at the
first honest node. A neighbour whose messages keep failing validation accumulates a
decaying score and is reported with `GossipPeerBanned` (the shell closes the link).

`PeerBook` keeps the addresses this node knows, learns more from PEERS messages, says
which to dial next (with exponential backoff on failures) and what to advertise, so a
node given one bootstrap address finds the rest.

Neither reads the clock nor draws randomness: the time comes in as `now_ms` and the
fan-out subset is drawn from a `random.Random` seeded by the caller.
"""
from __future__ import annotations

import enum
import random
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Iterable, NamedTuple

from node.messages import (
    MAX_PEERS_PER_MSG,
    MAX_TTL,
    ROLE_BEACON,
    ROLE_PEER,
    FloodedMsg,
    GossipEnvelope,
    PeerEntry,
    Peers,
    ProtocolError,
    flooded_id,
    is_valid_address,
)

PeerId = bytes   # a neighbour's public key (whatever the shell keys its links by)


class GossipPeerBanned(ProtocolError):
    """A neighbour sent too many invalid flooded messages; close its link."""

    def __init__(self, peer: PeerId, score: int) -> None:
        super().__init__(f"peer {peer.hex()[:16]} banned: gossip score {score}")
        self.peer = peer
        self.score = score


class Verdict(enum.Enum):
    ACCEPT = "accept"    # deliver and forward
    IGNORE = "ignore"    # neither, no blame (stale, or cannot be checked yet)
    REJECT = "reject"    # neither, and the sender is penalised


Validator = Callable[[FloodedMsg], Verdict]


def accept_all(inner: FloodedMsg) -> Verdict:
    return Verdict.ACCEPT


# ---------------------------------------------------------------------------- seen-cache

class SeenCache:
    """Message ids seen recently: at most `max_entries`, each forgotten `expiry_ms` after
    it was last seen. Entries are kept in last-seen order, so both bounds prune from the
    front (assuming `now_ms` never goes backwards, which the shell guarantees)."""

    __slots__ = ("max_entries", "expiry_ms", "_expires")

    def __init__(self, max_entries: int, expiry_ms: int) -> None:
        if max_entries < 1 or expiry_ms < 1:
            raise ValueError("seen-cache bounds must be positive")
        self.max_entries = max_entries
        self.expiry_ms = expiry_ms
        self._expires: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._expires

    def add(self, msg_id: bytes, now_ms: int) -> bool:
        """Record msg_id as seen now; True if it was not already (unexpired) in the cache."""
        self.prune(now_ms)
        new = msg_id not in self._expires
        self._expires[msg_id] = now_ms + self.expiry_ms
        self._expires.move_to_end(msg_id)
        while len(self._expires) > self.max_entries:
            self._expires.popitem(last=False)
        return new

    def prune(self, now_ms: int) -> None:
        while self._expires:
            msg_id, expires = next(iter(self._expires.items()))
            if expires > now_ms:
                break
            del self._expires[msg_id]


# ---------------------------------------------------------------------------- flooding

@dataclass(frozen=True, slots=True)
class GossipConfig:
    ttl: int = 8                       # hops a published message may take
    fanout: int | None = None          # None: forward to every neighbour; else at most this many
    seen_max: int = 65_536
    seen_expiry_ms: int = 120_000      # well beyond how long a message can circulate
    reject_penalty: int = 10           # score points per rejected message
    ban_score: int = 100               # at or above: the neighbour is banned
    decay_per_s: int = 1               # score points forgiven per second

    def __post_init__(self) -> None:
        if not 1 <= self.ttl <= MAX_TTL:
            raise ValueError(f"ttl must be in 1..{MAX_TTL}")
        if self.fanout is not None and self.fanout < 1:
            raise ValueError("fanout must be positive")


class Delivery(NamedTuple):
    deliver: bool                                   # hand the inner message to the node
    forwards: list[tuple[PeerId, GossipEnvelope]]   # send these


@dataclass(frozen=True, slots=True)
class _Score:
    milli: int         # score in thousandths of a point, so decay is exact in integers
    at_ms: int


class Gossip:
    """Flooding with dedupe, TTL, validation before forwarding, and per-neighbour scores."""

    def __init__(self, config: GossipConfig = GossipConfig(), *, seed: int = 0,
                 validate: Validator = accept_all) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self._validate = validate
        self._seen = SeenCache(config.seen_max, config.seen_expiry_ms)
        self._neighbours: set[PeerId] = set()
        self._scores: dict[PeerId, _Score] = {}

    # -- neighbours

    @property
    def neighbours(self) -> frozenset[PeerId]:
        return frozenset(self._neighbours)

    @property
    def seen(self) -> SeenCache:
        return self._seen

    def add_neighbour(self, peer: PeerId) -> None:
        self._neighbours.add(peer)

    def remove_neighbour(self, peer: PeerId) -> None:
        """Forget a closed link (its score is kept, so reconnecting does not launder it)."""
        self._neighbours.discard(peer)

    # -- flooding

    def publish(self, inner: FloodedMsg, now_ms: int) -> list[tuple[PeerId, GossipEnvelope]]:
        """Flood a message this node originates; it will not be delivered back to us."""
        self._seen.add(flooded_id(inner), now_ms)
        return self._fan_out(GossipEnvelope(inner, self.config.ttl), exclude=None)

    def on_message(self, from_peer: PeerId, envelope: GossipEnvelope, now_ms: int) -> Delivery:
        """A neighbour's envelope: deliver and forward it if new and valid.

        Raises GossipPeerBanned when this message pushes the sender's score to the ban
        threshold (the sender is dropped from the neighbours first)."""
        if not self._seen.add(flooded_id(envelope.inner), now_ms):
            return Delivery(False, [])
        verdict = self._validate(envelope.inner)
        if verdict is Verdict.REJECT:
            self._penalise(from_peer, now_ms)
            return Delivery(False, [])
        if verdict is Verdict.IGNORE:
            return Delivery(False, [])
        if envelope.ttl <= 1:
            return Delivery(True, [])
        onward = GossipEnvelope(envelope.inner, envelope.ttl - 1)
        return Delivery(True, self._fan_out(onward, exclude=from_peer))

    def _fan_out(self, envelope: GossipEnvelope, exclude: PeerId | None) -> list[tuple[PeerId, GossipEnvelope]]:
        targets = sorted(p for p in self._neighbours if p != exclude)
        fanout = self.config.fanout
        if fanout is not None and len(targets) > fanout:
            targets = sorted(self._rng.sample(targets, fanout))
        return [(p, envelope) for p in targets]

    # -- scores

    def score(self, peer: PeerId, now_ms: int) -> int:
        """The peer's current score in whole points (0 for a well-behaved peer)."""
        return self._decayed(peer, now_ms) // 1000

    def _decayed(self, peer: PeerId, now_ms: int) -> int:
        entry = self._scores.get(peer)
        if entry is None:
            return 0
        elapsed = max(0, now_ms - entry.at_ms)
        return max(0, entry.milli - elapsed * self.config.decay_per_s)

    def _penalise(self, peer: PeerId, now_ms: int) -> None:
        milli = self._decayed(peer, now_ms) + self.config.reject_penalty * 1000
        self._scores[peer] = _Score(milli, now_ms)
        if milli >= self.config.ban_score * 1000:
            self._neighbours.discard(peer)
            raise GossipPeerBanned(peer, milli // 1000)


# ---------------------------------------------------------------------------- peer book

@dataclass(frozen=True, slots=True)
class PeerBookConfig:
    max_entries: int = 1024
    max_per_source: int = 256          # one neighbour cannot fill the whole book
    max_failures: int = 8              # consecutive failed dials before an entry is forgotten
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 300_000
    dial_timeout_ms: int = 10_000      # a dial with no reported outcome may be retried after this


@dataclass(frozen=True, slots=True)
class BookEntry:
    address: str
    public_key: bytes | None     # None until known (bootstrap addresses)
    role: int
    verified: bool               # we have been connected to it (key proven by handshake)
    last_seen_ms: int            # last connection or advertisement; -1 if never
    failures: int                # consecutive failed dials
    next_dial_ms: int            # not dialled again before this
    connected: bool
    pinned: bool                 # bootstrap: never evicted or forgotten
    source: PeerId | None        # the neighbour that told us, None if local


class PeerBook:
    """Known addresses: bounded, deduplicated by address, with last-seen and failures."""

    def __init__(self, *, own_address: str | None = None, own_key: bytes | None = None,
                 bootstrap: Iterable[str] = (), config: PeerBookConfig = PeerBookConfig()) -> None:
        self.config = config
        self._own_address = own_address
        self._own_key = own_key
        self._entries: dict[str, BookEntry] = {}
        for address in bootstrap:
            if not is_valid_address(address):
                raise ValueError(f"bad bootstrap address {address!r}")
            if address != own_address:
                self._entries[address] = BookEntry(address, None, ROLE_BEACON, False, -1, 0, 0,
                                                   False, True, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: str) -> bool:
        return address in self._entries

    def get(self, address: str) -> BookEntry | None:
        return self._entries.get(address)

    def addresses(self) -> list[str]:
        return sorted(self._entries)

    # -- learning

    def on_peers(self, from_peer: PeerId | None, peers: Peers, now_ms: int) -> int:
        """Take in advertised addresses; returns how many were new. Entries already known
        keep what a handshake proved; unverified ones just get their last-seen refreshed."""
        added = 0
        for entry in peers.entries:
            added += self._learn(entry, from_peer, now_ms)
        return added

    def _learn(self, entry: PeerEntry, source: PeerId | None, now_ms: int) -> int:
        if entry.address == self._own_address or entry.public_key == self._own_key:
            return 0
        if not is_valid_address(entry.address):   # PeerEntry checks too; the book never trusts callers
            return 0
        known = self._entries.get(entry.address)
        if known is not None:
            if not known.verified:
                self._entries[entry.address] = replace(
                    known, public_key=entry.public_key, role=entry.role,
                    last_seen_ms=max(known.last_seen_ms, now_ms))
            return 0
        if source is not None and self._count_from(source) >= self.config.max_per_source:
            return 0
        if len(self._entries) >= self.config.max_entries and not self._evict_one():
            return 0
        self._entries[entry.address] = BookEntry(entry.address, entry.public_key, entry.role,
                                                 False, now_ms, 0, 0, False, False, source)
        return 1

    def _count_from(self, source: PeerId) -> int:
        return sum(1 for e in self._entries.values() if e.source == source)

    def _evict_one(self) -> bool:
        """Drop the least promising evictable entry: most failures, then least recently seen."""
        candidates = [e for e in self._entries.values() if not e.pinned and not e.connected]
        if not candidates:
            return False
        worst = max(candidates, key=lambda e: (e.failures, not e.verified, -e.last_seen_ms, e.address))
        del self._entries[worst.address]
        return True

    # -- dialling

    def to_dial(self, now_ms: int, want: int) -> list[str]:
        """Up to `want` addresses to dial now, best first; each is held back for the dial
        timeout so it is not handed out twice while its dial is in flight."""
        ready = [e for e in self._entries.values()
                 if not e.connected and e.next_dial_ms <= now_ms]
        ready.sort(key=lambda e: (e.failures, not e.verified, -e.last_seen_ms, e.address))
        chosen = ready[:max(0, want)]
        for e in chosen:
            self._entries[e.address] = replace(e, next_dial_ms=now_ms + self.config.dial_timeout_ms)
        return [e.address for e in chosen]

    def on_connected(self, address: str, public_key: bytes, role: int, now_ms: int) -> None:
        """A link is up (dialled, or inbound with the listen address from its Hello)."""
        if not is_valid_address(address) or address == self._own_address:
            return
        known = self._entries.get(address)
        if known is None:
            if len(self._entries) >= self.config.max_entries and not self._evict_one():
                return
            known = BookEntry(address, public_key, role, True, now_ms, 0, 0, True, False, None)
        self._entries[address] = replace(known, public_key=public_key, role=role, verified=True,
                                         last_seen_ms=now_ms, failures=0, next_dial_ms=0,
                                         connected=True)

    def on_disconnected(self, address: str, now_ms: int) -> None:
        known = self._entries.get(address)
        if known is not None:
            self._entries[address] = replace(known, connected=False, last_seen_ms=now_ms,
                                             next_dial_ms=now_ms + self.config.backoff_base_ms)

    def on_dial_failed(self, address: str, now_ms: int) -> None:
        """Back off exponentially; forget a non-bootstrap address after max_failures."""
        known = self._entries.get(address)
        if known is None:
            return
        failures = known.failures + 1
        if failures >= self.config.max_failures and not known.pinned:
            del self._entries[address]
            return
        delay = min(self.config.backoff_max_ms, self.config.backoff_base_ms << min(failures - 1, 30))
        self._entries[address] = replace(known, failures=failures, connected=False,
                                         next_dial_ms=now_ms + delay)

    # -- advertising

    def advertise(self, limit: int = MAX_PEERS_PER_MSG) -> Peers:
        """Addresses we have verified by connecting, most recently seen first."""
        good = [e for e in self._entries.values()
                if e.verified and e.public_key is not None and e.role in (ROLE_BEACON, ROLE_PEER)
                and e.failures == 0]
        good.sort(key=lambda e: (not e.connected, -e.last_seen_ms, e.address))
        n = max(0, min(limit, MAX_PEERS_PER_MSG))
        return Peers(tuple(PeerEntry(e.public_key, e.address, e.role) for e in good[:n]))
