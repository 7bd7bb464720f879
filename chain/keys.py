"""Key files: 0600 files in a 0700 data dir; a node refuses looser permissions.

A key file is one line of JSON: {"kind": "ed25519" | "vrf", "seed": hex, "public_key": hex}.
Validators have two keys: the signing key (node.key) and a separate VRF key (vrf.key),
because the ECVRF nonce is derived like an Ed25519 nonce and sharing a key could leak it.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from chain.crypto import SigningKey
from chain.errors import KeyFileError

NODE_KEY_FILE = "node.key"
VRF_KEY_FILE = "vrf.key"


def ensure_private_dir(path: Path) -> None:
    """Create the data dir 0700, or refuse an existing one that others can read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"data dir {path} has mode {mode:o}; it must be 0700 (chmod 700 {path})")


def write_key(path: Path, kind: str, seed: bytes) -> None:
    ensure_private_dir(path.parent)
    key = SigningKey(seed)
    text = json.dumps({"kind": kind, "seed": seed.hex(), "public_key": key.public_key.hex()})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_key(path: Path, kind: str) -> SigningKey:
    ensure_private_dir(path.parent)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist") from exc
    if mode & 0o077:
        raise KeyFileError(f"key file {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")
    try:
        data = json.loads(path.read_text())
        seed = bytes.fromhex(data["seed"])
        key = SigningKey(seed)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from exc
    if data.get("kind") != kind:
        raise KeyFileError(f"key file {path} holds a {data.get('kind')!r} key, expected {kind!r}")
    if data.get("public_key") not in (None, key.public_key.hex()):
        raise KeyFileError(f"key file {path}: public key does not match the seed")
    return key


def new_keys(datadir: Path, *, vrf: bool) -> tuple[SigningKey, SigningKey | None]:
    """Generate node.key (and vrf.key for validators); never overwrite existing keys."""
    ensure_private_dir(datadir)
    node = datadir / NODE_KEY_FILE
    if node.exists():
        raise KeyFileError(f"{node} already exists; refusing to overwrite a key")
    write_key(node, "ed25519", SigningKey.generate().seed)
    if vrf:
        write_key(datadir / VRF_KEY_FILE, "vrf", SigningKey.generate().seed)
    return load_keys(datadir, vrf=vrf)


def load_keys(datadir: Path, *, vrf: bool) -> tuple[SigningKey, SigningKey | None]:
    node = read_key(datadir / NODE_KEY_FILE, "ed25519")
    vrf_key = read_key(datadir / VRF_KEY_FILE, "vrf") if vrf else None
    return node, vrf_key
