"""Node configuration: TOML in the data dir; flag > environment > file > default.

A data dir holds config.toml, the key files (node.key, vrf.key for beacons), genesis.json
and db/ (LevelDB). Environment variables are CAIRN_<KEY> in upper case.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class ConfigError(Exception):
    """The configuration is missing, malformed or inconsistent."""


def parse_size(text: str | int) -> int:
    """'20GiB' -> bytes; plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 500MiB, 20GiB)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"not a host:port address: {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    role: str = "beacon"                 # beacon | peer
    listen: str = "127.0.0.1:7000"       # aiohttp server: /, /api, /metrics, /p2p
    bt_listen: str = "127.0.0.1:6881"    # BitTorrent listener (peers)
    bootstrap: tuple[str, ...] = ()      # host:port of nodes to dial first
    capacity: int = 20 * (1 << 30)       # bytes offered (peers)
    log_level: str = "INFO"
    genesis: str = GENESIS_FILE          # relative to the data dir


def _coerce(name: str, value: Any) -> Any:
    if name == "bootstrap":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value)
    if name == "capacity":
        return parse_size(value)
    return str(value)


def load_config(datadir: Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    cfg = NodeConfig()
    path = datadir / CONFIG_FILE
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        names = {f.name for f in fields(NodeConfig)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        cfg = replace(cfg, **{k: _coerce(k, v) for k, v in data.items()})
    env = {f.name: os.environ[f"CAIRN_{f.name.upper()}"] for f in fields(NodeConfig)
           if f"CAIRN_{f.name.upper()}" in os.environ}
    cfg = replace(cfg, **{k: _coerce(k, v) for k, v in env.items()})
    flags = {k: _coerce(k, v) for k, v in (overrides or {}).items() if v is not None}
    cfg = replace(cfg, **flags)
    parse_address(cfg.listen)
    if cfg.role == "peer":
        parse_address(cfg.bt_listen)
    for addr in cfg.bootstrap:
        parse_address(addr)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def save_config(datadir: Path, cfg: NodeConfig) -> None:
    lines = [f"{f.name} = {_toml_value(getattr(cfg, f.name))}" for f in fields(NodeConfig)]
    tmp = datadir / (CONFIG_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, datadir / CONFIG_FILE)
