"""Prometheus text exposition (format 0.0.4) for /metrics, and the samples derived from status.

Operators get the names they know from beacon-chain clients (`beacon_head_slot`,
`beacon_finalized_slot`; the provider adds `beacon_finalized_epoch`, which needs the epoch
length) plus `cairn_*`. Derived samples come from the provider's status(); the provider's
own metrics() are added after them and win on the same name and labels.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import psutil

from node.web.provider import PEER_STATUSES, SHARD_STATES, Metric

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _num(v: Any) -> int | float:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    return 0


def _g(name: str, help: str, value: Any, **labels: str) -> Metric:
    return Metric(name, "gauge", help, _num(value), dict(labels))


def _c(name: str, help: str, value: Any, **labels: str) -> Metric:
    return Metric(name, "counter", help, _num(value), dict(labels))


def beacon_metrics(st: dict[str, Any]) -> list[Metric]:
    """Samples derived from an explorer status() dict."""
    out = [
        _g("cairn_info", "Node identity (always 1).", 1, chain_id=str(st.get("chain_id", "")),
           role=str(st.get("role", "beacon")), node_id=str(st.get("node_id", "")),
           version=str(st.get("version", ""))),
        _g("beacon_head_slot", "Height of the head block (slot-style name).", st.get("head_height")),
        _g("beacon_finalized_slot", "Height of the last finalized block.", st.get("finalized_height")),
        _g("cairn_head_height", "Height of the head block.", st.get("head_height")),
        _g("cairn_head_time_seconds", "Timestamp of the head block, Unix seconds.",
           _num(st.get("head_time_ms")) / 1000),
        _g("cairn_finalized_height", "Height of the last finalized block.", st.get("finalized_height")),
        _g("cairn_syncing", "1 while the node is catching up with the network.", st.get("syncing")),
        _g("cairn_validators_total", "Validators in the set.", st.get("validators_total")),
        _g("cairn_validators_online", "Validators seen recently.", st.get("validators_online")),
    ]
    for s in PEER_STATUSES:
        out.append(_g("cairn_peers", "Registered storage peers by status.", st.get(f"peers_{s}"), status=s))
    out += [
        _g("cairn_collections", "Published collections.", st.get("collections")),
        _g("cairn_shards_total", "Shards over all collections.", st.get("shards_total")),
        _g("cairn_shards_at_target", "Shards with at least target verified copies.", st.get("shards_at_target")),
        _g("cairn_replication_deficit", "Verified copies missing to reach every shard's target.",
           st.get("replication_deficit")),
        _g("cairn_stored_bytes", "Bytes held in verified copies over all peers.", st.get("stored_bytes")),
        _g("cairn_target_bytes", "Bytes the targets ask for (shard size x target).", st.get("target_bytes")),
    ]
    return out


def peer_metrics(st: dict[str, Any]) -> list[Metric]:
    """Samples derived from a dashboard status() dict."""
    disk = st.get("disk") or {}
    ch = st.get("challenges") or {}
    sysm = st.get("system") or {}
    shards = st.get("shards") or []
    th = st.get("thresholds") or {}
    out = [
        _g("cairn_info", "Node identity (always 1).", 1, chain_id=str(st.get("chain_id", "")),
           role="peer", node_id=str(st.get("node_id", ""))),
        _g("beacon_head_slot", "Height of the head block (slot-style name).", st.get("head_height")),
        _g("cairn_head_height", "Height of the head block.", st.get("head_height")),
        _g("cairn_syncing", "1 while the node is catching up with the network.", st.get("syncing")),
        _g("cairn_peer_disk_allocated_bytes", "Disk space offered to the network.", disk.get("allocated")),
        _g("cairn_peer_disk_used_bytes", "Disk space used by shards.", disk.get("used")),
        _g("cairn_peer_disk_free_bytes", "Allocated disk space still free.", disk.get("free")),
    ]
    for state in SHARD_STATES:
        n = sum(1 for s in shards if s.get("state") == state)
        out.append(_g("cairn_peer_shards", "Shards of this peer by state.", n, state=state))
    out += [
        _g("cairn_peer_shard_bytes", "Bytes of all shards assigned to or held by this peer.",
           sum(_num(s.get("bytes")) for s in shards)),
        _g("cairn_peer_download_bytes_per_second", "Current BitTorrent download rate.",
           sum(_num(s.get("down_rate")) for s in shards)),
        _g("cairn_peer_upload_bytes_per_second", "Current BitTorrent upload rate.",
           sum(_num(s.get("up_rate")) for s in shards)),
        _c("cairn_peer_challenges_answered_total", "Storage challenges answered.", ch.get("answered")),
    ]
    for verdict in ("passed", "missed", "failed"):
        out.append(_c("cairn_peer_challenges_total", "Storage challenges by verdict.", ch.get(verdict),
                      verdict=verdict))
    out += [
        _g("cairn_peer_reputation_ppm", "Reputation score, parts per million.", st.get("reputation_ppm")),
        _g("cairn_peer_suspend_below_ppm", "Reputation under which a peer is suspended.",
           th.get("suspend_below_ppm")),
    ]
    status = st.get("status")
    for s in (*PEER_STATUSES, "unregistered"):
        out.append(_g("cairn_peer_status", "1 for this peer's current status.", status == s, status=s))
    out += [
        _g("cairn_peer_connected_peers", "Open peer-protocol connections.", len(st.get("connected_peers") or [])),
        _g("cairn_system_cpu_percent", "Host CPU utilisation, percent.", sysm.get("cpu_percent")),
        _g("cairn_system_ram_used_bytes", "Host memory in use.", sysm.get("ram_used")),
        _g("cairn_system_ram_total_bytes", "Host memory.", sysm.get("ram_total")),
        _c("cairn_system_network_sent_bytes_total", "Host network bytes sent.", sysm.get("net_sent")),
        _c("cairn_system_network_received_bytes_total", "Host network bytes received.", sysm.get("net_recv")),
    ]
    return out


def system_snapshot() -> dict[str, int | float]:
    """The dashboard's "system" block, from psutil (non-blocking)."""
    vm = psutil.virtual_memory()
    net = psutil.net_io_counters()
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "ram_used": int(vm.total - vm.available),
        "ram_total": int(vm.total),
        "net_sent": int(net.bytes_sent) if net else 0,
        "net_recv": int(net.bytes_recv) if net else 0,
    }


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(v: int | float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _valid(m: Metric) -> bool:
    return (bool(_NAME_RE.match(m.name)) and m.kind in ("gauge", "counter")
            and isinstance(m.value, (int, float))
            and all(isinstance(k, str) and _LABEL_RE.match(k) and not k.startswith("__")
                    for k in m.labels))


def merge(*groups: Iterable[Metric]) -> list[Metric]:
    """Later groups win on the same (name, labels); order of first appearance is kept."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], Metric] = {}
    for group in groups:
        for m in group:
            if not _valid(m):
                log.warning("dropping invalid metric %r", m)
                continue
            merged[(m.name, tuple(sorted((k, str(v)) for k, v in m.labels.items())))] = m
    return list(merged.values())


def render(metrics: Iterable[Metric]) -> str:
    """Prometheus text format: HELP and TYPE once per family, then its samples."""
    families: dict[str, list[Metric]] = {}
    for m in metrics:
        families.setdefault(m.name, []).append(m)
    lines: list[str] = []
    for name, ms in families.items():
        lines.append(f"# HELP {name} {_escape_help(ms[0].help)}")
        lines.append(f"# TYPE {name} {ms[0].kind}")
        for m in ms:
            if m.labels:
                lbl = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(m.labels.items()))
                lines.append(f"{name}{{{lbl}}} {_format_value(m.value)}")
            else:
                lines.append(f"{name} {_format_value(m.value)}")
    return "\n".join(lines) + "\n"
