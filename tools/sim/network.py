"""The simulated network: an integer clock, a priority queue of events, and links with a
seeded delay distribution, drops, reordering and timed partitions.

Everything random is drawn from one `random.Random(seed)`, and ties in the queue are
broken by insertion order, so a run is a pure function of its seed and configuration.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class Partition:
    """From start_ms until end_ms, nodes in different groups cannot reach each other.

    A node in no group is cut off from everyone.
    """
    start_ms: int
    end_ms: int
    groups: tuple[frozenset[int], ...]

    def separates(self, a: int, b: int, now_ms: int) -> bool:
        if not self.start_ms <= now_ms < self.end_ms:
            return False
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True, slots=True)
class NetConfig:
    min_delay_ms: int = 5
    max_delay_ms: int = 40
    drop_prob: float = 0.0
    reorder_prob: float = 0.0           # this share of messages gets an extra delay...
    reorder_extra_ms: int = 150         # ...of up to this much, overtaken by later messages
    partitions: tuple[Partition, ...] = ()
    # A scheduling adversary (the asynchronous model lets it delay anything before GST):
    # called as adversary(src, dst, message, now_ms); True drops the message.
    adversary: Callable[[int, int, Any, int], bool] | None = None

    def healed_at(self) -> int:
        """The time after which no partition is in force."""
        return max((p.end_ms for p in self.partitions), default=0)


@dataclass(order=True, slots=True)
class _Entry:
    at_ms: int
    seq: int
    action: Callable[[int], Any] = field(compare=False)


class EventQueue:
    """A priority queue of callbacks keyed by integer time; the clock is the last event's time."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = 0
        self.now_ms = 0

    def at(self, at_ms: int, action: Callable[[int], Any]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Entry(max(at_ms, self.now_ms), self._seq, action))

    def run_one(self) -> bool:
        if not self._heap:
            return False
        entry = heapq.heappop(self._heap)
        self.now_ms = entry.at_ms
        entry.action(entry.at_ms)
        return True

    def next_time(self) -> int | None:
        return self._heap[0].at_ms if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


class SimNetwork:
    """Point-to-point delivery between node ids, as the links of a gossip mesh."""

    def __init__(self, config: NetConfig, rng: random.Random, queue: EventQueue,
                 deliver: Callable[[int, int, Any, int], None]) -> None:
        self.config = config
        self.rng = rng
        self.queue = queue
        self._deliver = deliver
        self.sent = 0
        self.dropped = 0

    def delay_ms(self) -> int:
        c = self.config
        d = self.rng.randint(c.min_delay_ms, c.max_delay_ms)
        if c.reorder_prob and self.rng.random() < c.reorder_prob:
            d += self.rng.randint(1, c.reorder_extra_ms)
        return d

    def send(self, src: int, dst: int, message: Any, now_ms: int) -> None:
        self.sent += 1
        if any(p.separates(src, dst, now_ms) for p in self.config.partitions):
            self.dropped += 1
            return
        if self.config.adversary is not None and self.config.adversary(src, dst, message, now_ms):
            self.dropped += 1
            return
        if self.config.drop_prob and self.rng.random() < self.config.drop_prob:
            self.dropped += 1
            return
        arrive = now_ms + self.delay_ms()
        if any(p.separates(src, dst, arrive) for p in self.config.partitions):
            self.dropped += 1      # the link went down while the message was in flight
            return
        self.queue.at(arrive, lambda t: self._deliver(src, dst, message, t))
