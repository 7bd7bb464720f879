"""What the web layer needs from a node: two provider protocols and their errors.

The web layer (node/web/api.py) never touches chain state, stores or sessions directly:
a beacon service implements `ExplorerProvider`, a storage-peer service implements
`DashboardProvider`, and `make_web_app(provider, role=...)` serves them. Every method
returns plain JSON-ready values (dicts, lists, str, int, float, bool, None); bytes are
given as lowercase hex strings, times as integer milliseconds since the Unix epoch.
The field contract of every value is in docs/api.md and docs/openapi.json.

Arguments reach a provider already validated and normalized by the web layer:
- a block `ref` is either a decimal height ("12", no sign, no leading "+") or 64
  lowercase hex characters (a block hash);
- a peer id is 64 lowercase hex characters (its Ed25519 public key);
- a collection `ref` is a collection name (1..255 chars) or a lowercase hex info hash
  (64 chars for the v2 info hash, 40 for the v1 one);
- `limit` is 1..100, `offset` >= 0, `before` >= 0 or None;
- a peer `status` filter is None or one of PEER_STATUSES;
- a search query is stripped, 1..256 chars.
Anything the provider cannot find raises `NotFound(what)` (HTTP 404); anything it finds
invalid (a record that does not decode or verify, say) raises `BadRequest(msg)` (HTTP 400).
Any other exception is a bug and is answered with a 500.

Live updates: `head_changed` is an `asyncio.Condition` on the node's event loop; the node
calls `notify_all()` (holding it: `async with cond: cond.notify_all()`) after every new head
(beacon) or whenever its dashboard status moves on (peer). The web layer also re-reads
`status()` every couple of seconds on its own, so a missed notification only delays.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Json = dict[str, Any]
Health = Literal["ready", "syncing", "not_ready"]
MetricKind = Literal["gauge", "counter"]

PEER_STATUSES = ("active", "suspended", "excluded")
DASHBOARD_STATUSES = ("active", "suspended", "excluded", "unregistered")
HEALTH_STATES = ("ready", "syncing", "not_ready")
SEARCH_KINDS = ("block", "peer", "collection")
# A storage peer's shard, as its dashboard shows it: the targets assign it, it downloads,
# holds it complete (claim on chain), sees the claim verified by a passed proof, and may
# be releasing it (over target, dropping after the release is final).
SHARD_STATES = ("assigned", "downloading", "held", "verified", "releasing")


class WebError(Exception):
    """Base of the errors a provider raises to give the client a 4xx answer."""


class NotFound(WebError):
    """Nothing matches: answered with 404 {"error": "not found", "detail": what}."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class BadRequest(WebError):
    """The client sent something invalid: answered with 400 {"error": "bad request", "detail": msg}."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


@dataclass(frozen=True, slots=True)
class Metric:
    """One Prometheus sample. Counters should be named *_total."""
    name: str
    kind: MetricKind
    help: str
    value: int | float
    labels: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ExplorerProvider(Protocol):
    """Implemented by the beacon service: everything the block explorer shows."""

    head_changed: asyncio.Condition

    def status(self) -> Json:
        """{chain_id, role: "beacon", node_id, version, head_height, head_hash, head_time_ms,
        finalized_height, randomness, syncing, validators_total, validators_online,
        peers_active, peers_suspended, peers_excluded, collections, shards_total,
        shards_at_target, replication_deficit, stored_bytes, target_bytes}"""
        ...

    def blocks(self, before: int | None, limit: int) -> Json:
        """Newest first, heights < before (all when None): {"blocks": [summary...],
        "next_before": lowest height returned, or None when it reached height 0}."""
        ...

    def block(self, ref: str) -> Json:
        """Block detail by decimal height or 64-hex hash; NotFound if unknown."""
        ...

    def validators(self) -> list[Json]:
        ...

    def peers(self, status: str | None, offset: int, limit: int) -> Json:
        """{"peers": [peer summary...], "total": number matching the filter}."""
        ...

    def peer(self, peer_id_hex: str) -> Json:
        ...

    def collections(self) -> list[Json]:
        ...

    def collection(self, ref: str) -> Json:
        ...

    def search(self, q: str) -> Json:
        """{"matches": [{"kind": "block"|"peer"|"collection", "label": str, "ref": str}]}.
        ref is the height (decimal str), the peer id hex, or the collection info hash hex;
        the web layer adds "url". A provider may give "url" itself instead of "ref"."""
        ...

    def charts(self) -> Json:
        """{"redundancy": {"<copies>": shard_count}, "proofs_per_epoch": [{epoch, passed,
        missed, failed}], "block_intervals": [{height, interval_ms}]}"""
        ...

    def submit_record(self, data: bytes) -> Json:
        """Canonical bytes of a SignedRecord -> {"accepted": bool, "id": hex}.
        accepted is False when the record was already known. BadRequest when invalid."""
        ...

    def health(self) -> Health:
        ...

    def metrics(self) -> list[Metric]:
        """Samples beyond those the web layer derives from status() (see metrics.py),
        e.g. beacon_finalized_epoch, cairn_proofs_total{verdict}. Same name+labels win."""
        ...


@runtime_checkable
class DashboardProvider(Protocol):
    """Implemented by the storage-peer service: everything the peer dashboard shows."""

    head_changed: asyncio.Condition

    def status(self) -> Json:
        """{role: "peer", node_id, chain_id, head_height, syncing, disk: {allocated, used, free},
        shards: [{collection, name, shard, state, bytes, progress, down_rate, up_rate, eta_s}],
        challenges: {answered, passed, missed, failed}, reputation_ppm,
        thresholds: {suspend_below_ppm}, status, system: {cpu_percent, ram_used, ram_total,
        net_sent, net_recv}, connected_peers: [{id, address, role}]}
        (node/web/metrics.py:system_snapshot() fills "system" with psutil.)"""
        ...

    def health(self) -> Health:
        ...

    def metrics(self) -> list[Metric]:
        ...


AnyProvider = ExplorerProvider | DashboardProvider
