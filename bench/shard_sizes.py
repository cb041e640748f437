"""How `prepare.shard_size` trades files DVC tracks against what `dvc push` re-uploads.

Simulates prepare's sharding (imgpipe.shards' grouping, stages.prepare's order) on
content ids alone: N images in 10 class folders named img_NNNNNN, then 1% more with later
numbers, one new image in ten per class folder. Reports, per shard size, the shards at N
and the share of the grown dataset's images in shards whose content changed (what
`dvc push` uploads: DVC stores files by content hash), for prepare's order (file name,
then path) and for plain path order. Images are taken as equal in size.

Example: python bench/shard_sizes.py --n 100000
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src")]

from imgpipe.shards import _group  # noqa: E402

CLASSES = 10


def _paths(n: int) -> list[str]:
    return [f"class_{i % CLASSES:02d}/img_{i:06d}.jpg" for i in range(n)]


def _changed_share(before: list[str], after: list[str], shard_size: int, order) -> tuple:
    def shards(paths: list[str]) -> list[tuple[str, ...]]:
        ids = [hashlib.sha256(path.encode()).hexdigest()[:16] for path in sorted(paths, key=order)]
        return [tuple(i for i, _ in shard) for shard in _group(((i, b"") for i in ids),
                                                                shard_size)]

    old, new = set(shards(before)), shards(after)
    changed = sum(len(shard) for shard in new if shard not in old)
    return len(old), changed / len(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    args = parser.parse_args()
    before, after = _paths(args.n), _paths(args.n + args.n // 100)
    orders = {"file name, then path": lambda p: (PurePosixPath(p).name, p),
              "path": lambda p: p}
    print(f"| shard_size | shards at N = {args.n:,} | "
          + " | ".join(f"pushed after +1%, {name} order" for name in orders) + " |")
    print("| --- | --- |" + " --- |" * len(orders))
    for size in args.sizes:
        figures = [_changed_share(before, after, size, order) for order in orders.values()]
        print(f"| {size:,} | {figures[0][0]:,} | "
              + " | ".join(f"{share:.1%}" for _, share in figures) + " |")


if __name__ == "__main__":
    main()
