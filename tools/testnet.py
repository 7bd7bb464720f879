"""A local network of real `cairn` processes on loopback: beacons, peers, a client.

Used by `cairn demo` and by the integration tests. Every process is a real
`python -m node.cli ...` subprocess with its own data dir; nothing is simulated.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cairn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", *args]


def run_cairn(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cairn_cmd(*args), capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise RuntimeError(f"cairn {' '.join(args)} exited {res.returncode}:\n{res.stderr[-2000:]}")
    return res


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class Node:
    name: str
    role: str
    datadir: Path
    api_port: int
    bt_port: int | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    program: str | None = None      # run `python -m <program> run ...` instead of `cairn <role> run ...`

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.api_port}"

    def start(self, extra: tuple[str, ...] = ()) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.log_path = self.datadir.parent / f"{self.name}.log"
        log = open(self.log_path, "ab")
        cmd = ([sys.executable, "-m", self.program, "run"] if self.program else cairn_cmd(self.role, "run"))
        self.proc = subprocess.Popen(
            [*cmd, "--datadir", str(self.datadir), *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait for a clean exit."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def status(self) -> dict:
        return http_json(self.api + "/api/status")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Network:
    root: Path
    chain_id: str = "cairn-local"
    beacons: list[Node] = field(default_factory=list)
    peers: list[Node] = field(default_factory=list)
    publishers: list[subprocess.Popen] = field(default_factory=list)
    observers: list[Node] = field(default_factory=list)   # beacons not in the genesis validator set

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    def create(self, n_beacons: int, params: dict | None = None) -> None:
        """Keys, configs and one shared genesis for n beacons."""
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(n_beacons):
            node = Node(f"beacon{i}", "beacon", self.root / f"beacon{i}", free_port())
            run_cairn("init", "beacon", "--datadir", str(node.datadir), "--listen", node.address)
            self.beacons.append(node)
        args = ["genesis", "--chain-id", self.chain_id, "--out", str(self.genesis_path)]
        for node in self.beacons:
            args += ["--validator", str(node.datadir)]
        for key, value in (params or {}).items():
            args += ["--param", f"{key}={value}"]
        run_cairn(*args)
        for node in self.beacons:
            run_cairn("genesis", "install", str(self.genesis_path), "--datadir", str(node.datadir))
        bootstrap = ",".join(b.address for b in self.beacons)
        for node in self.beacons:
            run_cairn("init", "set", "--datadir", str(node.datadir), f"bootstrap={bootstrap}")

    def add_peer(self, capacity: str = "1GiB", program: str | None = None, name: str | None = None) -> Node:
        """A storage peer data dir (`cairn init peer`). `program`: a module run as
        `python -m <program> run --datadir D` instead of `cairn peer run` (same data dir
        and config), e.g. a byzantine peer from tools.adversary."""
        i = len(self.peers)
        name = name or f"peer{i}"
        node = Node(name, "peer", self.root / name, free_port(), free_port(), program=program)
        run_cairn("init", "peer", "--datadir", str(node.datadir), "--listen", node.address,
                  "--bt-listen", f"{HOST}:{node.bt_port}", "--capacity", capacity,
                  "--bootstrap", ",".join(b.address for b in self.beacons))
        run_cairn("genesis", "install", str(self.genesis_path), "--datadir", str(node.datadir))
        self.peers.append(node)
        return node

    def publish(self, directory: Path, name: str, target: int = 3) -> subprocess.Popen:
        """`cairn publish` in the background: registers the collection and seeds it until
        every shard has its target number of verified holders, then exits 0."""
        log = open(self.root / "publisher.log", "ab")
        proc = subprocess.Popen(
            cairn_cmd("publish", str(directory), "--name", name, "--target", str(target),
                      "--beacon", self.beacons[0].address, "--datadir", str(self.root / "publisher")),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self.publishers.append(proc)
        return proc

    def publisher_log(self) -> str:
        path = self.root / "publisher.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def all_nodes(self) -> list[Node]:
        return self.beacons + self.observers + self.peers

    def add_observer(self, bootstrap: list[str] | None = None) -> Node:
        """A fresh beacon data dir (`cairn init beacon`) whose key is not in the genesis: it
        runs as an observer that only syncs. Gets the genesis and `bootstrap` (default: the
        first beacon's address) as its only bootstrap addresses."""
        i = len(self.observers)
        node = Node(f"observer{i}", "beacon", self.root / f"observer{i}", free_port())
        addrs = bootstrap if bootstrap is not None else [self.beacons[0].address]
        run_cairn("init", "beacon", "--datadir", str(node.datadir), "--listen", node.address,
                  "--bootstrap", ",".join(addrs))
        run_cairn("genesis", "install", str(self.genesis_path), "--datadir", str(node.datadir))
        self.observers.append(node)
        return node

    def start_all(self) -> None:
        for node in self.all_nodes():
            node.start()

    def stop_all(self) -> None:
        for proc in self.publishers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for node in reversed(self.all_nodes()):
            try:
                node.stop()
            except subprocess.TimeoutExpired:
                pass

    def heights(self) -> list[int | None]:
        out = []
        for b in self.beacons:
            try:
                out.append(b.status()["head_height"] if b.running() else None)
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                out.append(None)
        return out


# ---------------------------------------------------------------------------- chain views over the API

def head_height(node: Node) -> int | None:
    """The node's head height, or None if it is down or not answering."""
    if not node.running():
        return None
    try:
        return node.status()["head_height"]
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None


def block_hash_at(node: Node, height: int) -> str | None:
    """The hash of the node's block at `height` (GET /api/blocks/{height}), None if absent."""
    try:
        return http_json(f"{node.api}/api/blocks/{height}")["hash"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def block_summaries(node: Node, lo: int = 1, hi: int | None = None) -> dict[int, dict]:
    """height -> block summary (hash, records count, time_ms...) for lo..hi, read by pages
    of GET /api/blocks (newest first)."""
    out: dict[int, dict] = {}
    before = None if hi is None else hi + 1
    while True:
        url = f"{node.api}/api/blocks?limit=100" + (f"&before={before}" if before is not None else "")
        page = http_json(url, timeout=5.0)
        for b in page["blocks"]:
            if b["height"] >= lo:
                out[b["height"]] = b
        nxt = page.get("next_before")
        if not page["blocks"] or nxt is None or nxt <= lo:
            return out
        before = nxt


def block_hashes(node: Node, lo: int = 1, hi: int | None = None) -> dict[int, str]:
    return {h: b["hash"] for h, b in block_summaries(node, lo, hi).items()}


def hash_disagreements(nodes: list[Node]) -> tuple[int, dict[int, dict[str, str]]]:
    """Compare every node's block hashes at every height they all hold.

    Returns (highest common height, {height: {node name: hash}} for the heights where they
    differ). Empty differences = no fork among `nodes`."""
    views = {n.name: block_hashes(n) for n in nodes}
    common = min((max(v) if v else 0) for v in views.values())
    bad: dict[int, dict[str, str]] = {}
    for h in range(1, common + 1):
        seen = {name: v.get(h) for name, v in views.items()}
        if len(set(seen.values())) != 1 or None in seen.values():
            bad[h] = seen
    return common, bad


def wait_height(nodes: list[Node], height: int, timeout: float) -> list[int]:
    """Wait until every node's head is at least `height`; returns their heads."""
    def reached():
        hs = [head_height(n) for n in nodes]
        return hs if all(h is not None and h >= height for h in hs) else None
    names = ",".join(n.name for n in nodes)
    return wait_for(reached, timeout, what=f"{names} to reach height {height}")


def read_stored_chain(datadir: Path) -> tuple[dict[int, str], object | None]:
    """({height: block hash hex}, last signed consensus record or None) read straight from a
    stopped node's LevelDB (the node must not be running: LevelDB allows one opener)."""
    from chain.codec import decode
    from chain.consensus import SignState
    from chain.genesis import load_genesis
    from chain.store import ChainStore
    from storage.kv import LevelDBKV

    kv = LevelDBKV(datadir / "db", sync=False)
    try:
        store = ChainStore(kv, load_genesis(datadir / "genesis.json"))
        head = store.head_height()
        hashes = {}
        for h in range(1, head + 1):
            block = store.get_block(h)
            hashes[h] = block.hash().hex()
        raw = store.get_meta(b"consensus/last_signed")
        return hashes, (decode(raw, SignState) if raw else None)
    finally:
        kv.close()
