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
    return subprocess.run(cairn_cmd(*args), check=check, capture_output=True, text=True, timeout=120)


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
        self.proc = subprocess.Popen(
            cairn_cmd(self.role, "run", "--datadir", str(self.datadir), *extra),
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

    def add_peer(self, capacity: str = "1GiB") -> Node:
        i = len(self.peers)
        node = Node(f"peer{i}", "peer", self.root / f"peer{i}", free_port(), free_port())
        run_cairn("init", "peer", "--datadir", str(node.datadir), "--listen", node.address,
                  "--bt-listen", f"{HOST}:{node.bt_port}", "--capacity", capacity,
                  "--bootstrap", ",".join(b.address for b in self.beacons))
        run_cairn("genesis", "install", str(self.genesis_path), "--datadir", str(node.datadir))
        self.peers.append(node)
        return node

    def all_nodes(self) -> list[Node]:
        return self.beacons + self.peers

    def start_all(self) -> None:
        for node in self.all_nodes():
            node.start()

    def stop_all(self) -> None:
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
