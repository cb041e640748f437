from __future__ import annotations

from collections import Counter

import pytest

from imgpipe.errors import DataError
from imgpipe.splits import stratified_split


def _dataset(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    labels = [label for label, n in counts.items() for _ in range(n)]
    keys = [f"{label}-{i:03d}" for label, n in counts.items() for i in range(n)]
    return labels, keys


def test_every_class_is_split_in_proportion() -> None:
    labels, keys = _dataset({"cat": 20, "dog": 40})
    split = stratified_split(labels, keys, 0.2, 0.1, seed=0)
    counts = Counter(zip(labels, split))
    assert (counts["cat", "val"], counts["cat", "test"], counts["cat", "train"]) == (4, 2, 14)
    assert (counts["dog", "val"], counts["dog", "test"], counts["dog", "train"]) == (8, 4, 28)


def test_same_seed_same_split_whatever_the_listing_order() -> None:
    labels, keys = _dataset({"cat": 10, "dog": 10})
    forward = dict(zip(keys, stratified_split(labels, keys, 0.2, 0.2, seed=3)))
    backward = dict(zip(keys[::-1], stratified_split(labels[::-1], keys[::-1], 0.2, 0.2, 3)))
    assert forward == backward


def test_another_seed_gives_another_split() -> None:
    labels, keys = _dataset({"cat": 30, "dog": 30})
    assert stratified_split(labels, keys, 0.2, 0.2, 0) != stratified_split(labels, keys, 0.2,
                                                                            0.2, 1)


def test_adding_a_class_leaves_the_others_alone() -> None:
    labels, keys = _dataset({"cat": 10, "dog": 10})
    before = dict(zip(keys, stratified_split(labels, keys, 0.2, 0.2, seed=0)))
    more_labels, more_keys = _dataset({"cat": 10, "dog": 10, "eel": 10})
    after = dict(zip(more_keys, stratified_split(more_labels, more_keys, 0.2, 0.2, seed=0)))
    assert all(after[key] == split for key, split in before.items())


def test_tiny_class_names_itself_and_its_count() -> None:
    labels, keys = _dataset({"cat": 10, "dog": 2})
    with pytest.raises(DataError, match=r"class 'dog' has 2 image\(s\), too few"):
        stratified_split(labels, keys, 0.15, 0.15, seed=0)
