"""scripts/probe_splits.py: the probe over re-drawn splits."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import probe_splits
import pytest

from conftest import PROBED_FIT, PROBED_PREPARE
from imgpipe.errors import DataError
from imgpipe.features import FeatureSet, load_split
from imgpipe.manifest import read_manifest
from imgpipe.params_prepare import PrepareParams
from imgpipe.splits import SPLITS


def test_draw_0_is_the_split_prepare_made_and_the_probe_train_head_fitted(
        probed: dict[str, Path]) -> None:
    """Re-drawn with prepare's seed, the pooled features fall back into extract's three
    splits row for row, in extract's order, and the probe chooses the C train_head chose."""
    images, classes, _ = probe_splits.pooled(probed["features"])
    sets = probe_splits.redraw(images, classes, PROBED_PREPARE, seed=0)
    for split in SPLITS:
        written = load_split(probed["features"], split)
        assert list(sets[split].image_ids) == list(written.image_ids)
        np.testing.assert_array_equal(sets[split].features, written.features)
        np.testing.assert_array_equal(sets[split].labels, written.labels)
    chosen = probe_splits.probe_scores(sets, len(classes), PROBED_FIT, "none", "accuracy")
    fitted = json.loads((probed["root"] / "train_head.json").read_text())
    assert chosen["C"] == fitted["best_c"]


def test_another_seed_moves_images_but_keeps_each_class_share(probed: dict[str, Path]) -> None:
    images, classes, _ = probe_splits.pooled(probed["features"])
    first = probe_splits.redraw(images, classes, PROBED_PREPARE, seed=0)
    other = probe_splits.redraw(images, classes, PROBED_PREPARE, seed=1)
    assert set(first["test"].image_ids) != set(other["test"].image_ids)
    for split in SPLITS:
        assert np.array_equal(np.bincount(first[split].labels), np.bincount(other[split].labels))
        # extract's row order (the manifest's: class, then image id), which the fit follows
        rows = list(zip(other[split].labels, other[split].image_ids))
        assert rows == sorted(rows)


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
    assert weighted["macro_f1 std"] == pytest.approx(0.0707107)  # sample std of 0.55, 0.65
    assert weighted["draws above 0.6"] == 1
    assert weighted["gain mean"] == pytest.approx(0.0)  # +0.05 and -0.05
    assert weighted["wins"] == 1
    assert table.loc["none/accuracy", "wins"] == 0


def test_draws_follow_prepare_with_unequal_fractions_chosen_classes_and_skipped_files(
        digits_dir: Path, tmp_path: Path) -> None:
    """prepare with val 0.1 / test 0.3, data.classes in an unsorted order, a broken file
    and a duplicate: redraw(seed=k) puts every kept image where prepare(seed=k) did."""
    from stages.prepare import prepare

    source = tmp_path / "images"
    shutil.copytree(digits_dir, source)
    first = sorted((source / "seven").iterdir())[0]
    shutil.copy(first, source / "seven" / "copy.png")  # the same bytes twice: one is dropped
    (source / "one" / "broken.png").write_bytes(b"not an image")
    classes = ["seven", "zero", "one"]
    params = PrepareParams(seed=0, val_fraction=0.1, test_fraction=0.3, image_size=32,
                           shard_size=1000, on_error="skip")
    for seed in (0, 1):
        prepared = tmp_path / f"prepared{seed}"
        prepare(source=source, out_dir=prepared, metrics_path=tmp_path / f"{seed}.json",
                report_path=tmp_path / f"{seed}.csv", seed=seed, val_fraction=0.1,
                test_fraction=0.3, image_size=32, shard_size=1000, classes=classes)
        table = read_manifest(prepared)
        images = FeatureSet(np.zeros((len(table), 1), np.float32),
                            table["label_index"].to_numpy(), table["image_id"].to_numpy())
        sets = probe_splits.redraw(images, classes, params, seed)
        for split in SPLITS:
            assert set(sets[split].image_ids) == set(table[table.split == split].image_id)


def test_params_that_did_not_make_the_split_are_refused(probed: dict[str, Path]) -> None:
    images, classes, made = probe_splits.pooled(probed["features"])
    probe_splits.check_made_with(images, classes, PROBED_PREPARE, made, Path("ok.yaml"))
    other = dataclasses.replace(PROBED_PREPARE, seed=1)
    with pytest.raises(DataError, match="pass the --params file they were made with"):
        probe_splits.check_made_with(images, classes, other, made, Path("other.yaml"))


def test_a_folder_without_features_names_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="extract's output folder"):
        probe_splits.pooled(tmp_path)
