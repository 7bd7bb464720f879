"""`make demo` from a fresh clone: the demo network converges and exits cleanly.

Runs `python -m tools.demo --exit-when-converged` and the console script users run
(`.venv/bin/cairn demo --exit-when-converged`), from a directory outside the repo: exit code
0, the explorer and dashboard URLs and "converged" in the output, and afterwards no process
of the demo left running and none of the printed ports still accepting connections.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 150


def run_demo(cmd: list[str], root: Path, cwd: Path) -> tuple[int, str, dict[int, psutil.Process]]:
    """Run the demo to its end; returns (exit code, output, every descendant process seen)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONUNBUFFERED"] = "1"
    log = root.parent / f"{root.name}.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        me = psutil.Process(proc.pid)
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                for child in me.children(recursive=True):
                    seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
        if proc.poll() is None:
            proc.terminate()   # the demo stops its network on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            pytest.fail(f"demo did not exit within {TIMEOUT_S}s:\n{log.read_text(errors='replace')[-3000:]}")
    except psutil.NoSuchProcess:
        pass
    proc.wait()
    return proc.returncode, log.read_text(errors="replace"), seen


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_clean_run(code: int, out: str, seen: dict[int, psutil.Process], root: Path) -> None:
    assert code == 0, out[-3000:]
    explorer = re.findall(r"explorer:\s+(http://127\.0\.0\.1:(\d+)/)", out)
    dashboards = re.findall(r"dashboard:\s+(http://127\.0\.0\.1:(\d+)/)", out)
    assert len(explorer) == 1 and len(dashboards) == 6, out
    assert re.search(r"^converged", out, re.M), out
    assert "stopping the network" in out
    assert len(seen) >= 10, f"expected the 4 beacons and 6 peers as child processes, saw {len(seen)}"
    # nothing of the demo survives it: no descendant, no process using its data dir, no open port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in seen.values()):
        time.sleep(0.2)
    left = [f"{p.pid} {p.cmdline()}" for p in seen.values() if alive(p)]
    assert not left, left
    strays = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(str(root) in arg for arg in (p.info["cmdline"] or [])):
            strays.append(f"{p.pid} {p.info['cmdline']}")
    assert not strays, strays
    ports = [int(port) for _, port in explorer + dashboards]
    assert not [port for port in ports if accepts(port)], "ports still accepting connections"


def test_demo_module_converges_and_exits_cleanly(tmp_path):
    root = tmp_path / "demo-data"
    code, out, seen = run_demo([sys.executable, "-m", "tools.demo", "--root", str(root), "--exit-when-converged"],
                               root, REPO)
    check_clean_run(code, out, seen, root)


def test_cairn_demo_console_script_converges_and_exits_cleanly(tmp_path):
    cairn = Path(sys.executable).parent / "cairn"
    assert cairn.exists(), f"no console script at {cairn}: pip install -e . first"
    root = tmp_path / "demo-data"
    cwd = tmp_path / "elsewhere"   # users run it from anywhere, not only the repo root
    cwd.mkdir()
    code, out, seen = run_demo([str(cairn), "demo", "--exit-when-converged", "--root", str(root)], root, cwd)
    check_clean_run(code, out, seen, root)
    assert (root / "beacon0" / "genesis.json").exists() or (root / "genesis.json").exists()
