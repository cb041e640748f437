"""Stage evaluate: test-split metrics, confusion matrix and the MLflow record of the run.

Reads the whole params.yaml (every key is logged to MLflow) and the training curves of
train_head and finetune_full. Writes the test metrics, the per-image test predictions
(a DVC confusion plot) and a confusion-matrix PNG, and logs one MLflow run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import pandas as pd
import torch
import yaml

from imgpipe import distributed, stage
from imgpipe.data import forward_all, softmax
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import CLASSES_NAME, MANIFEST_NAME, read_classes, read_manifest
from imgpipe.metrics import classification_metrics, plot_confusion, plot_prediction_grid
from imgpipe.model import load_model
from imgpipe.params import TrackingParams, flatten, load_params
from imgpipe.tracking import RunRecord, log_run
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


def evaluate(*, prepared_dir: Path, model_path: Path, metrics_path: Path,
             predictions_path: Path, confusion_png: Path, batch_size: int,
             grid_png: Path | None = None, device: torch.device | None = None) -> dict:
    """Score the final model on the test split; returns the metrics written."""
    model, classes, info, _ = load_model(model_path)
    table = read_manifest(prepared_dir, "test")
    transform = eval_transform(info.input_size, info.mean, info.std)
    logits = forward_all(model, table["file"], transform, batch_size, "evaluate",
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
        plot_prediction_grid(grid_png, list(table["file"]), list(predictions["actual"]),
                             list(predictions["predicted"]))
    write_json(metrics_path, metrics)
    _logger.info("test accuracy %.4f, macro-F1 %.4f on %d images", metrics["accuracy"],
                 metrics["macro_f1"], metrics["images"])
    return metrics


def track(*, prepared_dir: Path, model_path: Path, metrics: dict, params_path: Path,
          sweep_path: Path, history_path: Path, artifacts: list[Path],
          tracking: TrackingParams, tags: dict[str, str]) -> str | None:
    """Record this pipeline execution as one MLflow run (see imgpipe.tracking)."""
    raw = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    manifest = (prepared_dir / MANIFEST_NAME).read_bytes()
    test_files = read_manifest(prepared_dir, "test")["file"]
    record = RunRecord(
        experiment=tracking.experiment,
        params=flatten(raw),
        metrics={f"test_{k}": v for k, v in flatten(metrics).items()},
        curves={**_curves(sweep_path, "probe_", step_column=None),
                **_curves(history_path, "finetune_", step_column="epoch")},
        artifacts=[*artifacts, sweep_path, history_path, prepared_dir / CLASSES_NAME,
                   Path("dvc.lock")],
        tags={**tags, "dataset_fingerprint": hashlib.sha256(manifest).hexdigest()[:16]},
        model_file=model_path,
        classes=read_classes(prepared_dir),
        example_image=Path(test_files[0]).read_bytes() if len(test_files) else None,
        register_as=tracking.register_model,
    )
    return log_run(record, required=tracking.required)


def _curves(path: Path, prefix: str, step_column: str | None) -> dict[str, list]:
    """Each numeric column of a history CSV as (step, value) points; step = row or column."""
    table = pd.read_csv(path)
    steps = table[step_column] if step_column else pd.Series(range(len(table)))
    return {f"{prefix}{column}": [(int(step), float(value)) for step, value in
                                  zip(steps, table[column]) if pd.notna(value)]
            for column in table.columns if column != step_column}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sweep", type=Path, required=True, help="train_head's C sweep")
    parser.add_argument("--history", type=Path, required=True, help="finetune_full's epochs")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--confusion-png", type=Path, required=True)
    parser.add_argument("--grid-png", type=Path, required=True)
    args = parser.parse_args()

    def body() -> None:
        params = load_params()
        metrics = evaluate(prepared_dir=args.prepared_dir, model_path=args.model,
                           metrics_path=args.metrics, predictions_path=args.predictions,
                           confusion_png=args.confusion_png, grid_png=args.grid_png,
                           batch_size=params.evaluate.batch_size,
                           device=distributed.resolve_device(params.device))
        track(prepared_dir=args.prepared_dir, model_path=args.model, metrics=metrics,
              params_path=Path("params.yaml"), sweep_path=args.sweep,
              history_path=args.history,
              artifacts=[args.metrics, args.predictions, args.confusion_png, args.grid_png],
              tracking=params.tracking,
              tags={"backbone": params.backbone.name, "freeze": params.freeze})

    stage.run("evaluate", body)


if __name__ == "__main__":
    main()
