"""The linear probe over re-drawn splits: how far its test scores move with the split.

With a few images of a rare class in val and test, one split's macro-F1 moves by
several hundredths, more than most recipe changes. This script pools extract's three
feature splits, re-draws the split with prepare's own `stratified_split` for
`prepare.seed` 0 .. N-1 (draw 0 with the committed params is the split `dvc repro` made),
and fits train_head's probe (`fit_linear_probe`, the committed C grid) for each
`class_balance` x `select_by` variant on each draw; test is scored, never used to choose.
The features are fixed, so a draw takes seconds (the README's faint-variant table):

    python scripts/probe_splits.py --features /tmp/study/faint/features --draws 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgpipe.features import FeatureSet, load_split  # noqa: E402
from imgpipe.manifest import CLASSES_NAME  # noqa: E402
from imgpipe.params import load_section  # noqa: E402
from imgpipe.params_head import TrainHeadParams  # noqa: E402
from imgpipe.params_prepare import PrepareParams  # noqa: E402
from imgpipe.probe import fit_linear_probe  # noqa: E402
from imgpipe.scores import confusion, scores  # noqa: E402
from imgpipe.splits import SPLITS, stratified_split  # noqa: E402

_logger = logging.getLogger("probe_splits")
# (class_balance, select_by); the first is the default the others are compared with.
VARIANTS = (("none", "accuracy"), ("none", "macro_f1"), ("weights", "accuracy"),
            ("weights", "macro_f1"))


def pooled(features_dir: Path) -> tuple[FeatureSet, list[str]]:
    """Every image of the three splits in one set, and the class names."""
    parts = [load_split(features_dir, split) for split in SPLITS]
    classes = json.loads((features_dir / CLASSES_NAME).read_text())
    return FeatureSet(np.concatenate([part.features for part in parts]),
                      np.concatenate([part.labels for part in parts]),
                      np.concatenate([part.image_ids for part in parts])), classes


def redraw(images: FeatureSet, classes: list[str], prepare: PrepareParams,
           seed: int) -> dict[str, FeatureSet]:
    """The train/val/test split prepare makes with `seed` (and the other prepare params)."""
    split = np.array(stratified_split([classes[label] for label in images.labels],
                                      list(images.image_ids), prepare.val_fraction,
                                      prepare.test_fraction, seed))
    return {name: FeatureSet(images.features[split == name], images.labels[split == name],
                             images.image_ids[split == name]) for name in SPLITS}


def probe_scores(sets: dict[str, FeatureSet], num_classes: int, fitting: TrainHeadParams,
                 class_balance: str, select_by: str) -> dict:
    """The chosen C and the probe's test accuracy, balanced accuracy and macro-F1."""
    probe = fit_linear_probe(sets["train"], sets["val"], num_classes, fitting.c_grid,
                             fitting.max_iter, select_by, class_balance)
    logits = sets["test"].features @ probe.weight.T + probe.bias
    return {"C": probe.best_c, **scores(confusion(sets["test"].labels, logits.argmax(1),
                                                  num_classes))}


def summary(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per variant: each score's mean and std, macro-F1's range, the draws above
    `threshold`, and macro-F1's mean gain over the first variant with its wins."""
    baseline = rows[rows.variant == rows.variant.iloc[0]].set_index("draw")["macro_f1"]
    table = {}
    for variant, group in rows.groupby("variant", sort=False):
        gain = group.set_index("draw")["macro_f1"] - baseline
        table[variant] = {
            **{f"{score} mean": group[score].mean() for score in
               ("accuracy", "balanced_accuracy", "macro_f1")},
            "macro_f1 std": group["macro_f1"].std(), "macro_f1 min": group["macro_f1"].min(),
            "macro_f1 max": group["macro_f1"].max(),
            f"draws above {threshold:g}": int((group["macro_f1"] > threshold).sum()),
            "gain mean": gain.mean(), "wins": int((gain > 0).sum())}
    return pd.DataFrame(table).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True,
                        help="extract's output folder (train/val/test.npz, classes.json)")
    parser.add_argument("--draws", type=int, default=20, help="prepare.seed 0 .. draws-1")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="params file for prepare's fractions and train_head's grid")
    parser.add_argument("--out", type=Path, default=None, help="CSV of every fit")
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="macro-F1 to count draws above")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _logger.setLevel(logging.INFO)
    images, classes = pooled(args.features)
    prepare = load_section(PrepareParams, "prepare", args.params)
    fitting = load_section(TrainHeadParams, "train_head", args.params)
    rows = []
    for draw in range(args.draws):
        sets = redraw(images, classes, prepare, draw)
        for class_balance, select_by in VARIANTS:
            rows.append({"draw": draw, "variant": f"{class_balance}/{select_by}",
                         **probe_scores(sets, len(classes), fitting, class_balance,
                                        select_by)})
        _logger.info("draw %d: %s", draw, " ".join(
            f"{row['variant']} {row['macro_f1']:.3f}" for row in rows[-len(VARIANTS):]))
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    _logger.info("test scores over %d draws:\n%s", args.draws,
                 summary(table, args.threshold).round(3).to_string())


if __name__ == "__main__":
    main()
