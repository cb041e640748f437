"""scripts/probe_splits.py: the probe over re-drawn splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import probe_splits
import pytest

from imgpipe.features import load_split
from imgpipe.params_head import TrainHeadParams
from imgpipe.params_prepare import PrepareParams
from imgpipe.splits import SPLITS

# The `probed` fixture's prepare and train_head arguments (tests/conftest.py).
FIXTURE_PREPARE = PrepareParams(seed=0, val_fraction=0.2, test_fraction=0.2, image_size=64,
                                shard_size=1000, on_error="skip")
FIXTURE_FIT = TrainHeadParams(c_grid=[0.1, 1.0], max_iter=500)


def test_draw_0_is_the_split_prepare_made_and_the_probe_train_head_fitted(
        probed: dict[str, Path]) -> None:
    """Re-drawn with prepare's seed, the pooled features fall back into extract's three
    splits row for row, and the probe chooses the C train_head chose."""
    images, classes = probe_splits.pooled(probed["features"])
    sets = probe_splits.redraw(images, classes, FIXTURE_PREPARE, seed=0)
    for split in SPLITS:
        written = load_split(probed["features"], split)
        order = np.argsort(sets[split].image_ids)
        written_order = np.argsort(written.image_ids)
        assert list(sets[split].image_ids[order]) == list(written.image_ids[written_order])
        np.testing.assert_array_equal(sets[split].features[order],
                                      written.features[written_order])
        np.testing.assert_array_equal(sets[split].labels[order], written.labels[written_order])
    chosen = probe_splits.probe_scores(sets, len(classes), FIXTURE_FIT, "none", "accuracy")
    fitted = json.loads((probed["root"] / "train_head.json").read_text())
    assert chosen["C"] == fitted["best_c"]


def test_another_seed_moves_images_but_keeps_each_class_share(probed: dict[str, Path]) -> None:
    images, classes = probe_splits.pooled(probed["features"])
    first = probe_splits.redraw(images, classes, FIXTURE_PREPARE, seed=0)
    other = probe_splits.redraw(images, classes, FIXTURE_PREPARE, seed=1)
    assert set(first["test"].image_ids) != set(other["test"].image_ids)
    for split in SPLITS:
        assert np.array_equal(np.bincount(first[split].labels), np.bincount(other[split].labels))


def test_the_summary_compares_every_variant_with_the_first() -> None:
    rows = pd.DataFrame([
        {"draw": 0, "variant": "none/accuracy", "accuracy": 0.9, "balanced_accuracy": 0.5,
         "macro_f1": 0.50},
        {"draw": 1, "variant": "none/accuracy", "accuracy": 0.8, "balanced_accuracy": 0.5,
         "macro_f1": 0.70},
        {"draw": 0, "variant": "weights/accuracy", "accuracy": 0.7, "balanced_accuracy": 0.6,
         "macro_f1": 0.55},
        {"draw": 1, "variant": "weights/accuracy", "accuracy": 0.6, "balanced_accuracy": 0.7,
         "macro_f1": 0.65}])
    table = probe_splits.summary(rows, threshold=0.6)
    assert list(table.index) == ["none/accuracy", "weights/accuracy"]
    weighted = table.loc["weights/accuracy"]
    assert weighted["accuracy mean"] == pytest.approx(0.65)
    assert weighted["macro_f1 min"] == 0.55 and weighted["macro_f1 max"] == 0.65
    assert weighted["draws above 0.6"] == 1
    assert weighted["gain mean"] == pytest.approx(0.0)  # +0.05 and -0.05
    assert weighted["wins"] == 1
    assert table.loc["none/accuracy", "wins"] == 0
