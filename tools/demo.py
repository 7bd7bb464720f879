"""`cairn demo` / `make demo`: a real local network on loopback.

4 beacons and 6 storage peers as separate processes under ./demo-data, a generated
sample collection published with target 3, progress printed until every shard has its
verified holders; then it keeps running until Ctrl-C (or exits with
--exit-when-converged), stopping every process cleanly.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from tools.testnet import Network, wait_for
DEMO_PARAMS = {"block_interval_ms": 1000, "epoch_blocks": 4, "proof_deadline_blocks": 4, "proof_retries": 1,
               "reputation_alpha_ppm": 500_000, "grace_period_blocks": 10, "max_shard_bytes": 1 << 20}


def make_sample_collection(path: Path, seed: int = 7) -> Path:
    """A few files of mixed sizes, deterministic bytes, ~6 MiB in all."""
    import hashlib

    path.mkdir(parents=True, exist_ok=True)
    sizes = {"readme.txt": 2_000, "photos/a.jpg": 700_000, "photos/b.jpg": 1_300_000,
             "data/table.csv": 90_000, "video/clip.bin": 4 * 1024 * 1024 + 12_345}
    for name, size in sizes.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}/{name}".encode()).digest() * 2048
        with open(f, "wb") as out:
            left = size
            while left > 0:
                out.write(block[:left])
                left -= len(block)
    return path


def print_progress(net: Network) -> dict | None:
    try:
        st = net.beacons[0].status()
    except Exception as exc:  # the demo keeps going while a beacon restarts
        print(f"  waiting for beacon0: {exc}")
        return None
    print(f"  height {st.get('head_height')}  peers {st.get('peers_active')}  "
          f"shards at target {st.get('shards_at_target')}/{st.get('shards_total')}  "
          f"deficit {st.get('replication_deficit')}")
    return st


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cairn demo")
    ap.add_argument("--root", default="demo-data")
    ap.add_argument("--exit-when-converged", action="store_true")
    ap.add_argument("--beacons", type=int, default=4)
    ap.add_argument("--peers", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)

    root = Path(args.root).resolve()
    if root.exists():
        shutil.rmtree(root)
    net = Network(root, chain_id="cairn-demo")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        print(f"setting up {args.beacons} beacons and {args.peers} peers under {root}")
        net.create(args.beacons, DEMO_PARAMS)
        for _ in range(args.peers):
            net.add_peer("256MiB")
        net.start_all()
        wait_for(lambda: all(h is not None and h >= 1 for h in net.heights()), 60, what="first block")
        sample = make_sample_collection(root / "sample")
        print("publishing the sample collection with target 3")
        publisher = net.publish(sample, "sample", target=3)
        b = net.beacons[0]
        print(f"explorer:  {b.api}/")
        for p in net.peers:
            print(f"dashboard: {p.api}/   ({p.name})")
        deadline = time.monotonic() + args.timeout
        converged = False
        while not stop["now"]:
            st = print_progress(net)
            if st and st.get("shards_total") and st.get("replication_deficit") == 0 and not converged:
                converged = True
                print("converged: every shard has its target number of verified holders")
                if args.exit_when_converged:
                    break
                print("running; press Ctrl-C to stop")
            if publisher.poll() not in (None, 0):
                print(f"publisher failed:\n{net.publisher_log()}", file=sys.stderr)
                return 1
            if not converged and time.monotonic() > deadline:
                print("did not converge in time", file=sys.stderr)
                return 1
            time.sleep(2)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping the network")
        net.stop_all()


if __name__ == "__main__":
    sys.exit(main())
