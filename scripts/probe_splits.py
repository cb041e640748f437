"""The linear probe over re-drawn splits: how far its test scores move with the split.

With a few images of a rare class in val and test, one split's macro-F1 moves by
several hundredths, more than most recipe changes. This script pools extract's three
feature splits, re-draws the split with prepare's own `stratified_split` for
`prepare.seed` 0 .. N-1 (draw 0 with the committed params is the split `dvc repro` made),
and fits train_head's probe (`fit_linear_probe`, the committed C grid) for each
`class_balance` x `select_by` variant on each draw; test is scored, never used to choose.
The features are fixed, so a draw takes seconds. The README's table of 20 draws on the
faint scratches variant:

    python scripts/probe_splits.py --features /tmp/study/faint/features --draws 20

`--params` must be the file the features were split with (it checks that prepare.seed's
draw gives back their three splits).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgpipe.errors import DataError, PipelineError  # noqa: E402
from imgpipe.features import FeatureSet, load_split  # noqa: E402
from imgpipe.io import read_json  # noqa: E402
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


def pooled(features_dir: Path) -> tuple[FeatureSet, list[str], dict[str, set[str]]]:
    """Every image of the three splits in one set, the class names, and each split's ids."""
    names = features_dir / CLASSES_NAME
    if not names.is_file():
        raise DataError(f"{names} not found: --features must be extract's output folder "
                        "(data/features, or a finetune_study work folder's features)")
    parts = {split: load_split(features_dir, split) for split in SPLITS}
    return (FeatureSet(np.concatenate([part.features for part in parts.values()]),
                       np.concatenate([part.labels for part in parts.values()]),
                       np.concatenate([part.image_ids for part in parts.values()])),
            read_json(names), {split: set(part.image_ids) for split, part in parts.items()})


def check_made_with(images: FeatureSet, classes: list[str], prepare: PrepareParams,
                    made: dict[str, set[str]], params_file: Path) -> None:
    """Refuse params whose prepare.seed draw is not the split the features were made with
    (another seed or other fractions): the draws would not be prepare's splits."""
    sets = redraw(images, classes, prepare, prepare.seed)
    if any(set(sets[split].image_ids) != made[split] for split in SPLITS):
        raise DataError(f"the features were not split with {params_file}'s prepare section "
                        f"(seed {prepare.seed}, val_fraction {prepare.val_fraction:g}, "
                        f"test_fraction {prepare.test_fraction:g}): pass the --params file "
                        "they were made with")


def redraw(images: FeatureSet, classes: list[str], prepare: PrepareParams,
           seed: int) -> dict[str, FeatureSet]:
    """The train/val/test split prepare makes with `seed` (and the other prepare params),
    each split's rows in extract's order (class, then image id), so that a draw of the
    features' own seed fits exactly the probe train_head fitted (the fit's sums follow
    row order; two C values can tie on val to the last digits)."""
    split = np.array(stratified_split([classes[label] for label in images.labels],
                                      list(images.image_ids), prepare.val_fraction,
                                      prepare.test_fraction, seed))
    sets = {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        rows = rows[np.lexsort((images.image_ids[rows], images.labels[rows]))]
        sets[name] = FeatureSet(images.features[rows], images.labels[rows],
                                images.image_ids[rows])
    return sets


def probe_scores(sets: dict[str, FeatureSet], num_classes: int, fitting: TrainHeadParams,
                 class_balance: str, select_by: str) -> dict:
    """The chosen C and the probe's test accuracy, balanced accuracy and macro-F1."""
    probe = fit_linear_probe(sets["train"], sets["val"], num_classes, fitting.c_grid,
                             fitting.max_iter, select_by, class_balance)
    logits = sets["test"].features @ probe.weight.T + probe.bias
    return {"C": probe.best_c, **scores(confusion(sets["test"].labels, logits.argmax(1),
                                                  num_classes))}


def summary(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per variant: each score's mean, macro-F1's sample std (ddof=1) and range, the draws
    above `threshold`, and macro-F1's mean gain over the first variant with its wins."""
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
    return pd.DataFrame.from_dict(table, orient="index")


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
    if args.draws < 2:
        parser.error(f"--draws {args.draws}: use 2 or more (a spread needs two draws)")
    if args.out and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist; create it first")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _logger.setLevel(logging.INFO)
    try:
        run(args)
    except PipelineError as error:
        sys.exit(f"probe_splits: {error}")


def run(args: argparse.Namespace) -> None:
    """Every draw's fits, the CSV (with --out) and the logged summary."""
    images, classes, made = pooled(args.features)
    prepare = load_section(PrepareParams, "prepare", args.params)
    fitting = load_section(TrainHeadParams, "train_head", args.params)
    check_made_with(images, classes, prepare, made, args.params)
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
