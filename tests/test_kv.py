"""One contract suite run against every KV backend."""
import pytest

from storage.kv import BatchOps, LevelDBKV, MemoryKV


@pytest.fixture(params=["memory", "leveldb"])
def kv(request, tmp_path):
    store = MemoryKV() if request.param == "memory" else LevelDBKV(tmp_path / "db")
    yield store
    store.close()


def test_put_get_delete(kv):
    assert kv.get(b"a") is None
    kv.put(b"a", b"1")
    assert kv.get(b"a") == b"1"
    kv.put(b"a", b"2")
    assert kv.get(b"a") == b"2"
    kv.delete(b"a")
    assert kv.get(b"a") is None
    kv.delete(b"missing")


def test_iterate_prefix_in_key_order(kv):
    for k in [b"b/2", b"a/1", b"b/10", b"b/1", b"c"]:
        kv.put(k, k.upper())
    assert [k for k, _ in kv.iterate(b"b/")] == [b"b/1", b"b/10", b"b/2"]
    assert [k for k, _ in kv.iterate(b"b/", reverse=True)] == [b"b/2", b"b/10", b"b/1"]
    assert dict(kv.iterate())[b"a/1"] == b"A/1"


def test_batch_applies_all_ops_in_order(kv):
    kv.put(b"gone", b"x")
    ops = BatchOps()
    ops.put(b"k1", b"v1")
    ops.put(b"k2", b"v2")
    ops.delete(b"gone")
    ops.put(b"k1", b"v1b")
    kv.write_batch(ops)
    assert kv.get(b"k1") == b"v1b"
    assert kv.get(b"k2") == b"v2"
    assert kv.get(b"gone") is None


def test_leveldb_survives_reopen(tmp_path):
    db = LevelDBKV(tmp_path / "db")
    ops = BatchOps()
    ops.put(b"x", b"y")
    db.write_batch(ops)
    db.close()
    db = LevelDBKV(tmp_path / "db")
    assert db.get(b"x") == b"y"
    db.close()
