"""Small real filesystems for tests: a tmpfs mounted, grown and unmounted (needs root).

Tests that use these never skip: if the mount fails they fail, saying why. This machine
and CI run the suite as root, where `mount -t tmpfs` works.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str) -> None:
    """Mount a tmpfs of `size` (e.g. "2m") at `path`, private to its owner."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (these tests need root): "
                    f"{res.stderr.strip() or f'mount exited {res.returncode}'}")


def resize_tmpfs(path: Path, size: str) -> None:
    """Grow (or shrink) a mounted tmpfs in place; its files stay."""
    res = subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"cannot resize the tmpfs at {path} to {size}: {res.stderr.strip()}")


def unmount(path: Path) -> None:
    res = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        # Still busy (a process of a failed test holds a file): detach it so nothing
        # leaks past the test, and say so.
        subprocess.run(["umount", "-l", str(path)], check=True)
        raise AssertionError(f"tmpfs at {path} was busy at unmount: {res.stderr.strip()}")
