"""Stratified, seeded train/val/test split that stays put when classes are added."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from imgpipe.errors import DataError

SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[str], keys: Sequence[str], val_fraction: float,
                     test_fraction: float, seed: int) -> list[str]:
    """Assign each item to train, val or test, class by class.

    Each class is ordered by `keys` (content ids, so the listing order does not matter)
    and shuffled with its own generator seeded by `seed` and the class name, so adding a
    class leaves the other classes' splits unchanged. Every class gets at least one
    val and one test item.

    Raises:
        DataError: a class has too few items to give each split one.
    """
    split = [""] * len(labels)
    for label in sorted(set(labels)):
        members = sorted((i for i, lab in enumerate(labels) if lab == label),
                         key=lambda i: keys[i])
        count = len(members)
        n_test = max(1, round(count * test_fraction))
        n_val = max(1, round(count * val_fraction))
        if count - n_test - n_val < 1:
            raise DataError(
                f"class {label!r} has {count} image(s), too few for a train/val/test split "
                f"(val_fraction={val_fraction:g}, test_fraction={test_fraction:g} need at "
                f"least {n_test + n_val + 1}); add images to it or remove it")
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = [members[i] for i in rng.permutation(count)]
        for rank, index in enumerate(order):
            split[index] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split
