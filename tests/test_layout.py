"""The rules of the house that a grep can check (DESIGN.md, "Rules of the house").

Imports go one way: storage/ <- chain/ <- node/ <- tools/; chain/ uses only the pure parts of
storage/ (chain/store.py also the KV interface), and never reads the clock or draws
randomness: every import anywhere in a module counts, function-local ones included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("storage", "chain", "node", "tools")

# What each package may import from the project's own packages.
ALLOWED = {
    "storage": {"storage"},
    "chain": {"chain", "storage"},
    "node": {"node", "chain", "storage"},
    "tools": {"tools", "node", "chain", "storage"},
}
PURE_STORAGE = {"storage.collection", "storage.errors", "storage.proof", "storage.merkle", "storage.bencode"}
# Nondeterminism and I/O that chain/ must not reach (keys, genesis and the store read files).
IMPURE = {"time", "random", "secrets", "datetime", "socket", "asyncio", "subprocess", "uuid"}
FILE_IO = {"os", "shutil", "tempfile"}
CHAIN_FILE_MODULES = {"store.py", "keys.py", "genesis.py"}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append(f"<relative import in {path.name}>")
    return out


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package):
    bad = []
    for path in modules(package):
        for name in imports_of(path):
            top = name.split(".")[0]
            if name.startswith("<relative"):
                bad.append((path.relative_to(ROOT), name))
            elif top in PACKAGES and top not in ALLOWED[package]:
                bad.append((path.relative_to(ROOT), name))
            elif package == "chain" and top == "storage" and name not in PURE_STORAGE and not (
                    path.name == "store.py" and name == "storage.kv"):
                bad.append((path.relative_to(ROOT), name))
    assert not bad, bad


def test_chain_reads_no_clock_and_draws_no_randomness():
    bad = []
    for path in modules("chain"):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in IMPURE or (top in FILE_IO and path.name not in CHAIN_FILE_MODULES):
                bad.append((path.relative_to(ROOT), name))
    assert not bad, bad


def test_the_checks_see_a_violation(tmp_path):
    """The walker finds imports hidden inside functions (so the checks above can fail)."""
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import time\n    from node.peer import PeerNode\n")
    assert imports_of(sample) == ["time", "node.peer"]
