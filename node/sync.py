"""Sans-IO block sync: fetch committed blocks from neighbours, hand them out in order.

The shell feeds in neighbours' heads (`on_status`), sends what `next_requests` returns,
feeds replies to `on_blocks`, verifies each returned block's commit and replays it
(chain.transition), and reports `on_applied` / `on_apply_failed`. It calls
`next_requests` again whenever something changed and at `next_deadline()`.

Several ranges are in flight at once, over several peers (pipelining); replies land in a
reorder buffer and leave it only in height order. A range whose request times out is
re-requested elsewhere and the slow peer cools down (exponentially); a reply that breaks
the protocol (wrong range, inconsistent blocks) or a block that fails to apply bans its
sender, and its ranges go to other peers. The syncer holds nothing durable: after a crash
a new `Syncer(store.head_height())` carries on.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from chain.codec import encode
from chain.types import CommittedBlock
from node.messages import MAX_BLOCKS_BYTES, MAX_GET_BLOCKS, Blocks, GetBlocks, ProtocolError

PeerId = bytes

DEFAULT_REPLY_BYTES = 4 << 20        # soft size of one Blocks reply a node serves
_REPLY_OVERHEAD = 32                 # Blocks' tag, array headers and start height
_ITEM_OVERHEAD = 5                   # bound on the array-header growth per block


class SyncError(ProtocolError):
    """Base of sync errors caused by a remote."""


class BadBlocksReply(SyncError):
    """A peer's Blocks reply was unsolicited or broke its range; the peer is banned."""

    def __init__(self, peer: PeerId, reason: str) -> None:
        super().__init__(f"peer {peer.hex()[:16]}: {reason}")
        self.peer = peer
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Peer:
    head: int
    strikes: int = 0              # consecutive timeouts
    cooldown_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Request:
    peer: PeerId
    start: int
    count: int
    deadline_ms: int

    @property
    def end(self) -> int:         # last height asked for
        return self.start + self.count - 1


class Syncer:
    """Pipelined, resumable block download with a reorder buffer."""

    def __init__(self, local_height: int, *, batch: int = 32, max_inflight: int = 4,
                 per_peer_inflight: int = 2, window: int | None = None,
                 request_timeout_ms: int = 5_000, cooldown_ms: int = 1_000,
                 max_cooldown_ms: int = 60_000) -> None:
        if local_height < 0 or not 1 <= batch <= MAX_GET_BLOCKS or max_inflight < 1 or per_peer_inflight < 1:
            raise ValueError("bad syncer parameters")
        self.batch = batch
        self.max_inflight = max_inflight
        self.per_peer_inflight = per_peer_inflight
        # How far past the applied height we fetch: bounds the reorder buffer's memory.
        self.window = window if window is not None else 2 * batch * max_inflight
        if self.window < batch:
            raise ValueError("window must hold at least one batch")
        self.request_timeout_ms = request_timeout_ms
        self.cooldown_ms = cooldown_ms
        self.max_cooldown_ms = max_cooldown_ms
        self._applied = local_height          # highest height the shell applied
        self._delivered = local_height        # highest height handed to the shell
        self._peers: dict[PeerId, _Peer] = {}
        self._banned: set[PeerId] = set()
        self._inflight: dict[int, _Request] = {}               # by start height
        self._buffer: dict[int, tuple[CommittedBlock, PeerId]] = {}   # received, not handed out
        self._handed: dict[int, tuple[CommittedBlock, PeerId]] = {}   # handed out, not applied
        self._expired: OrderedDict[tuple[PeerId, int], None] = OrderedDict()  # late replies to ignore

    # -- views

    @property
    def height(self) -> int:
        """The highest height applied."""
        return self._applied

    @property
    def best_height(self) -> int:
        """The highest head any usable peer claims (at least our own)."""
        return max([self._applied, *(p.head for p in self._peers.values())])

    @property
    def is_syncing(self) -> bool:
        return self.best_height > self._applied + 1

    @property
    def inflight(self) -> list[tuple[PeerId, GetBlocks]]:
        return [(r.peer, GetBlocks(r.start, r.count)) for r in self._inflight.values()]

    def is_banned(self, peer: PeerId) -> bool:
        return peer in self._banned

    def next_deadline(self) -> int | None:
        """When to call next_requests again at the latest (earliest request timeout or
        end of a cooldown), or None if nothing is pending."""
        times = [r.deadline_ms for r in self._inflight.values()]
        times += [p.cooldown_until_ms for p in self._peers.values() if p.cooldown_until_ms > 0]
        return min(times) if times else None

    # -- peers

    def on_status(self, peer: PeerId, head_height: int, now_ms: int) -> None:
        """A neighbour's head (from Hello or Status). Banned peers are not listened to."""
        if peer in self._banned:
            return
        known = self._peers.get(peer)
        self._peers[peer] = _Peer(head_height) if known is None else replace(known, head=head_height)

    def remove_peer(self, peer: PeerId) -> None:
        """The link closed: its ranges go back to be requested from others."""
        self._peers.pop(peer, None)
        self._drop_requests_of(peer)

    def _drop_requests_of(self, peer: PeerId) -> None:
        for start in [s for s, r in self._inflight.items() if r.peer == peer]:
            del self._inflight[start]

    def _ban(self, peer: PeerId) -> None:
        self._banned.add(peer)
        self.remove_peer(peer)
        for height in [h for h, (_, p) in self._buffer.items() if p == peer]:
            del self._buffer[height]

    # -- requests

    def next_requests(self, now_ms: int) -> list[tuple[PeerId, GetBlocks]]:
        """Expire timed-out requests, then fill the pipeline with new ranges."""
        self._expire(now_ms)
        out: list[tuple[PeerId, GetBlocks]] = []
        limit = min(self.best_height, self._applied + self.window)
        height = self._delivered + 1
        while height <= limit and len(self._inflight) < self.max_inflight:
            covering = self._covering_request(height)
            if covering is not None:
                height = covering.end + 1
                continue
            if height in self._buffer:
                height += 1
                continue
            peer = self._pick_peer(height, now_ms)
            if peer is None:
                break   # any peer holding a later height also holds this one
            count = self._gap_length(height, min(limit, self._peers[peer].head))
            request = _Request(peer, height, count, now_ms + self.request_timeout_ms)
            self._inflight[height] = request
            out.append((peer, GetBlocks(height, count)))
            height = request.end + 1
        return out

    def _expire(self, now_ms: int) -> None:
        for request in [r for r in self._inflight.values() if r.deadline_ms <= now_ms]:
            del self._inflight[request.start]
            self._remember_expired(request.peer, request.start)
            peer = self._peers.get(request.peer)
            if peer is not None:
                strikes = peer.strikes + 1
                delay = min(self.max_cooldown_ms, self.cooldown_ms << min(strikes - 1, 30))
                self._peers[request.peer] = replace(peer, strikes=strikes,
                                                    cooldown_until_ms=now_ms + delay)

    def _remember_expired(self, peer: PeerId, start: int) -> None:
        self._expired[(peer, start)] = None
        while len(self._expired) > max(64, 4 * self.max_inflight):
            self._expired.popitem(last=False)

    def _covering_request(self, height: int) -> _Request | None:
        for request in self._inflight.values():
            if request.start <= height <= request.end:
                return request
        return None

    def _pick_peer(self, height: int, now_ms: int) -> PeerId | None:
        load: dict[PeerId, int] = {}
        for request in self._inflight.values():
            load[request.peer] = load.get(request.peer, 0) + 1
        usable = [(load.get(pid, 0), p.strikes, -p.head, pid) for pid, p in self._peers.items()
                  if p.head >= height and p.cooldown_until_ms <= now_ms
                  and load.get(pid, 0) < self.per_peer_inflight]
        return min(usable)[3] if usable else None

    def _gap_length(self, start: int, last: int) -> int:
        """Heights from start that are neither buffered nor requested, up to a batch."""
        count = 0
        height = start
        while height <= last and count < self.batch:
            if height in self._buffer or height in self._inflight:
                break
            count += 1
            height += 1
        return count

    # -- replies

    def on_blocks(self, peer: PeerId, reply: Blocks, now_ms: int) -> list[CommittedBlock]:
        """Take a reply; return the blocks now ready to apply, in height order.

        Raises BadBlocksReply (after banning the peer and freeing its ranges) for an
        unsolicited reply or one whose blocks do not fit the range asked for."""
        request = self._inflight.get(reply.start_height)
        if request is None or request.peer != peer:
            if (peer, reply.start_height) in self._expired:
                return []   # a late answer to a request already given to someone else
            self._ban(peer)
            raise BadBlocksReply(peer, f"unsolicited blocks from height {reply.start_height}")
        del self._inflight[reply.start_height]
        problem = _check_reply(request, reply)
        if problem is not None:
            self._ban(peer)
            raise BadBlocksReply(peer, problem)
        known = self._peers.get(peer)
        if known is not None:
            if not reply.blocks:
                # It does not have the start height after all: stop asking it for that.
                known = replace(known, head=min(known.head, request.start - 1))
            self._peers[peer] = replace(known, strikes=0, cooldown_until_ms=0)
        for committed in reply.blocks:
            height = committed.block.header.height
            if height > self._delivered and height not in self._buffer:
                self._buffer[height] = (committed, peer)
        return self._drain()

    def _drain(self) -> list[CommittedBlock]:
        ready: list[CommittedBlock] = []
        while self._delivered + 1 in self._buffer:
            self._delivered += 1
            entry = self._buffer.pop(self._delivered)
            self._handed[self._delivered] = entry
            ready.append(entry[0])
        return ready

    # -- application results

    def on_applied(self, height: int) -> None:
        """The shell applied (and stored) the block at `height`, from sync or from consensus."""
        if height <= self._applied:
            return
        previous = self._applied
        self._applied = height
        if height - previous <= len(self._handed):
            for h in range(previous + 1, height + 1):     # the usual case: the next block
                self._handed.pop(h, None)
        else:
            for h in [h for h in self._handed if h <= height]:
                del self._handed[h]
        if height <= self._delivered:
            return      # the buffer and the requests all lie past the delivered height
        self._delivered = height
        for h in [h for h in self._buffer if h <= self._delivered]:
            del self._buffer[h]
        # Requests made useless by a jump (blocks applied from consensus): free their slots,
        # and let their replies arrive without blame.
        for request in [r for r in self._inflight.values() if r.end <= self._delivered]:
            del self._inflight[request.start]
            self._remember_expired(request.peer, request.start)

    def on_apply_failed(self, height: int) -> PeerId | None:
        """The block handed out at `height` failed commit verification or replay: ban its
        sender (returned, so the shell can close that link) and fetch it again elsewhere.
        Blocks handed out after it go back to the reorder buffer (unless from that sender)."""
        entry = self._handed.pop(height, None)
        sender = entry[1] if entry is not None else None
        if sender is not None:
            self._ban(sender)
        for h in sorted(h for h in self._handed if h > height):
            committed, from_peer = self._handed.pop(h)
            if from_peer != sender:
                self._buffer[h] = (committed, from_peer)
        self._delivered = max(self._applied, height - 1)
        return sender


def _check_reply(request: _Request, reply: Blocks) -> str | None:
    """What is wrong with a reply to `request`, or None. Structural checks only: the
    commit signatures are the shell's (chain.transition.verify_commit)."""
    if len(reply.blocks) > request.count:
        return f"{len(reply.blocks)} blocks for a request of {request.count}"
    previous_hash: bytes | None = None
    for offset, committed in enumerate(reply.blocks):
        header = committed.block.header
        expected = request.start + offset
        if header.height != expected:
            return f"block at height {header.height} where {expected} was due"
        block_hash = committed.block.hash()
        commit = committed.commit
        if commit.height != header.height or commit.block_hash != block_hash:
            return f"commit does not match the block at height {expected}"
        if previous_hash is not None and header.parent_hash != previous_hash:
            return f"block {expected} does not extend block {expected - 1}"
        previous_hash = block_hash
    return None


# ---------------------------------------------------------------------------- serving

GetBlocksFn = Callable[[int, int], Sequence[CommittedBlock]]


def serve_get_blocks(get_blocks: GetBlocksFn, request: GetBlocks,
                     max_bytes: int = DEFAULT_REPLY_BYTES) -> Blocks:
    """Answer GetBlocks from the store (`get_blocks(start, count)`, e.g. ChainStore.get_blocks),
    stopping before the reply would pass max_bytes. The first block is always sent if it
    fits the protocol's hard limit, so one large block cannot stall a syncing peer."""
    budget = min(max_bytes, MAX_BLOCKS_BYTES) - _REPLY_OVERHEAD
    hard_budget = MAX_BLOCKS_BYTES - _REPLY_OVERHEAD
    chosen: list[CommittedBlock] = []
    used = 0
    for offset, committed in enumerate(get_blocks(request.start_height, min(request.count, MAX_GET_BLOCKS))):
        if committed.block.header.height != request.start_height + offset:
            break   # the store ran out or skipped: send only the consecutive prefix
        size = len(encode(committed)) + _ITEM_OVERHEAD
        if used + size > (hard_budget if not chosen else budget):
            break
        chosen.append(committed)
        used += size
    return Blocks(request.start_height, tuple(chosen))
