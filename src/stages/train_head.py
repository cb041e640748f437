"""Stage train_head: the linear probe on cached features, L2 strength chosen on val.

Reads `train_head.*`. Writes the head file (loaded by finetune_full as the backbone's
new classifier), its metrics, and the val curve over the C grid as a DVC plot.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from imgpipe import stage
from imgpipe.features import load_backbone_info, open_split
from imgpipe.head import save_head
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import read_classes
from imgpipe.params import ClassBalance, RunParams, SelectBy, load_section
from imgpipe.params_head import TrainHeadParams
from imgpipe.probe import fit_linear_probe

_logger = logging.getLogger(__name__)


def train_head(*, features_dir: Path, head_path: Path, metrics_path: Path,
               sweep_path: Path, c_grid: list[float], max_iter: int,
               select_by: SelectBy = "accuracy", class_balance: ClassBalance = "none") -> dict:
    """Fit and save the probe; returns the metrics written to `metrics_path`."""
    classes = read_classes(features_dir)
    # Features stay on disk and are read a chunk of rows at a time (imgpipe.probe).
    train, val = open_split(features_dir, "train"), open_split(features_dir, "val")
    _logger.info("linear probe: %d parameters (%d classes x %d features + biases), fitted on "
                 "%d cached train features", len(classes) * (train.dim + 1),
                 len(classes), train.dim, len(train.labels))
    probe = fit_linear_probe(train, val, len(classes), c_grid, max_iter, select_by,
                             class_balance)
    save_head(head_path, probe, classes, load_backbone_info(features_dir))
    with atomic_path(sweep_path) as temporary:
        pd.DataFrame([asdict(point) for point in probe.sweep]).to_csv(temporary, index=False)
    metrics = {"best_c": probe.best_c, "start_c": probe.start_c, **asdict(probe.best)}
    del metrics["c"]
    write_json(metrics_path, metrics)
    _logger.info("chose C=%g by val %s: val accuracy %.4f, balanced accuracy %.4f, "
                 "macro-F1 %.4f", probe.best_c, select_by, probe.best.val_accuracy,
                 probe.best.val_balanced_accuracy, probe.best.val_macro_f1)
    if probe.start_c != probe.best_c:
        _logger.info("fine-tuning (freeze partial or none, head_init probe) starts from "
                     "C=%g, the lowest val loss", probe.start_c)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features-dir", type=Path, required=True)
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--sweep", type=Path, required=True)
    args = parser.parse_args()

    def body() -> None:
        params, run = load_section(TrainHeadParams, "train_head"), load_section(RunParams, None)
        train_head(features_dir=args.features_dir, head_path=args.head,
                   metrics_path=args.metrics, sweep_path=args.sweep,
                   c_grid=params.c_grid, max_iter=params.max_iter,
                   select_by=run.select_by, class_balance=run.class_balance)

    stage.run("train_head", body)


if __name__ == "__main__":
    main()
