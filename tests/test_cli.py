"""The `cairn` command as a user runs it: versions, keys, init, errors, status."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

from tools.testnet import run_cairn


def cairn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60)


def test_version():
    res = cairn("--version")
    assert res.returncode == 0 and res.stdout.startswith("cairn ")


def test_keys_new_writes_private_files_and_refuses_to_overwrite(tmp_path):
    d = tmp_path / "node"
    res = cairn("keys", "new", "--datadir", str(d), "--validator")
    assert res.returncode == 0, res.stderr
    assert "node key" in res.stdout and "vrf key" in res.stdout
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("node.key", "vrf.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    again = cairn("keys", "new", "--datadir", str(d))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_node_refuses_a_data_dir_others_can_read(tmp_path):
    d = tmp_path / "b"
    assert cairn("init", "beacon", "--datadir", str(d), "--listen", "127.0.0.1:1").returncode == 0
    os.chmod(d, 0o755)
    res = cairn("beacon", "run", "--datadir", str(d))
    assert res.returncode == 2 and "must be 0700" in res.stderr
    assert "Traceback" not in res.stderr


def test_init_twice_is_refused(tmp_path):
    d = tmp_path / "p"
    assert cairn("init", "peer", "--datadir", str(d), "--capacity", "1GiB").returncode == 0
    res = cairn("init", "peer", "--datadir", str(d))
    assert res.returncode == 2 and "already initialised" in res.stderr


def test_bad_input_gets_a_clear_error_not_a_traceback(tmp_path):
    cases = [
        ("publish", str(tmp_path / "missing"), "--beacon", "127.0.0.1:1"),
        ("fetch", "nothing", str(tmp_path / "out"), "--beacon", "127.0.0.1:1"),
        ("status", "--beacon", "127.0.0.1:1"),
        ("init", "peer", "--datadir", str(tmp_path / "x"), "--capacity", "lots"),
    ]
    for args in cases:
        res = cairn(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert res.stderr.startswith("cairn: error:") and "Traceback" not in res.stderr, res.stderr


def test_status_prints_the_network_summary(live_net):
    res = run_cairn("status", "--beacon", live_net.beacons[0].address)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "chain        cairn-" in out
    assert "validators   4/4 online" in out
    assert "at target, deficit 0" in out
