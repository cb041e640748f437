"""Stage evaluate: test-split metrics, confusion matrix and the MLflow record of the run.

Reads the whole params.yaml (every key is logged to MLflow), and the metrics and training
curves of train_head and finetune_full. Writes the overall test metrics, the per-class
table, the per-image test predictions (a DVC confusion plot), a confusion-matrix PNG and a
grid of test images, and logs one MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd
import torch
import yaml

from imgpipe import distributed, stage
from imgpipe.data import forward_all, softmax
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import MANIFEST_NAME, read_manifest
from imgpipe.metrics import (
    classification_metrics,
    per_class_table,
    plot_confusion,
    plot_prediction_grid,
)
from imgpipe.model import load_model
from imgpipe.params import RunParams, load_section
from imgpipe.params_evaluate import EvaluateParams, TrackingParams
from imgpipe.run_names import committed_params
from imgpipe.run_record import (
    ResultPaths,
    add_arguments,
    build_record,
    file_md5,
    from_namespace,
    result_key,
)
from imgpipe.tracking import log_run
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


def evaluate(*, prepared_dir: Path, model_path: Path, metrics_path: Path,
             predictions_path: Path, confusion_png: Path, batch_size: int,
             per_class_path: Path | None = None, grid_png: Path | None = None,
             device: torch.device | None = None) -> dict:
    """Score the final model on the test split; returns the metrics, per class included.

    `metrics_path` gets the overall figures only, so that `dvc exp show` stays readable;
    the per-class precision, recall, F1 and support go to `per_class_path`.
    """
    model, record = load_model(model_path)
    classes, info = record.classes, record.backbone
    table = read_manifest(prepared_dir, "test")
    transform = eval_transform(info.input_size, info.mean, info.std)
    logits = forward_all(model, table["image"], transform, batch_size, "evaluate",
                         device=device)
    probabilities = softmax(logits)
    y_true = table["label_index"].to_numpy()
    y_pred = probabilities.argmax(axis=1)
    metrics = classification_metrics(y_true, y_pred, classes)
    # Probabilities to 4 decimals: at 6, last-bit differences between CPUs' float kernels
    # changed the file; the metrics are ratios of counts, the same bytes for the same
    # predictions, and need no rounding.
    predictions = pd.DataFrame({
        "image_id": table["image_id"], "source": table["source"],
        "actual": [classes[i] for i in y_true], "predicted": [classes[i] for i in y_pred],
        "probability": probabilities.max(axis=1).round(4)})
    with atomic_path(predictions_path) as temporary:
        predictions.to_csv(temporary, index=False)
    plot_confusion(confusion_png, y_true, y_pred, classes)
    if grid_png is not None:
        plot_prediction_grid(grid_png, list(table["image"]), list(predictions["actual"]),
                             list(predictions["predicted"]))
    if per_class_path is not None:
        with atomic_path(per_class_path) as temporary:
            per_class_table(metrics).to_csv(temporary, index=False)
    write_json(metrics_path, {k: v for k, v in metrics.items() if k != "per_class"})
    _logger.info("test accuracy %.4f, macro-F1 %.4f, balanced accuracy %.4f on %d images",
                 metrics["accuracy"], metrics["macro_f1"], metrics["balanced_accuracy"],
                 metrics["images"])
    return metrics


def track(paths: ResultPaths, *, params_path: Path, tracking: TrackingParams,
          root: Path = Path()) -> str | None:
    """Record this pipeline execution as one MLflow run (see imgpipe.run_record).

    Named after the DVC experiment (`DVC_EXP_NAME`, set by `dvc exp run`), else after the
    params that differ from the commit it runs on; tagged with the result's key, so that
    `python -m imgpipe sync-mlflow` later finds it instead of logging the result again.
    """
    params = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    files = paths.under(root)
    baseline_rev = os.environ.get("DVC_EXP_BASELINE_REV") or None
    test_images = read_manifest(files.prepared_dir, "test")["image"]
    key = result_key(params, file_md5(files.model),
                     file_md5(files.prepared_dir / MANIFEST_NAME))
    record = build_record(
        paths, root, params=params, experiment=tracking.experiment, key=key,
        baseline=committed_params(root.resolve(), baseline_rev or "HEAD"),
        baseline_rev=baseline_rev, exp_name=os.environ.get("DVC_EXP_NAME") or None,
        register_as=tracking.register_model,
        example_image=test_images[0].read_bytes() if len(test_images) else None)
    return log_run(record, required=tracking.required)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    paths = from_namespace(args)

    def body() -> None:
        evaluate(prepared_dir=paths.prepared_dir, model_path=paths.model,
                 metrics_path=paths.metrics, per_class_path=paths.per_class,
                 predictions_path=paths.predictions, confusion_png=paths.confusion_png,
                 grid_png=paths.grid_png,
                 batch_size=load_section(EvaluateParams, "evaluate").batch_size,
                 device=distributed.resolve_device(load_section(RunParams, None).device))
        track(paths, params_path=Path("params.yaml"),
              tracking=load_section(TrackingParams, "tracking"))

    stage.run("evaluate", body)


if __name__ == "__main__":
    main()
