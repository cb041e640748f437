"""One pipeline result as an MLflow run, built from its files.

evaluate builds it from the workspace as it runs; `python -m imgpipe sync-mlflow` builds
it from the files of a DVC experiment's commit. Both go through `build_record`, so the
two kinds of run look alike. The file paths are evaluate's command-line arguments
(`ResultPaths`), which sync reads back from the `cmd` recorded in each commit's dvc.lock.

Metric names say what a number is, since MLflow's tables show a step metric's last value:
`summary.*` are single figures of the kept model (read these); `tally.*` are counts;
`vs_c.*` (step: position in the C grid) and `vs_epoch.*` are curves, whose last value is
not the result. MLflow's compare page lists metrics alphabetically in a box of about
seven rows, so the prefixes are chosen to sort `summary.*` first. Per-class test figures
are a table artifact, not metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from imgpipe.errors import DataError
from imgpipe.manifest import CLASSES_NAME, MANIFEST_NAME, dataset_digest, read_manifest
from imgpipe.params import flatten
from imgpipe.run_names import changed_params, describe, run_name
from imgpipe.tracking import DatasetInput, RunRecord

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultPaths:
    """Where evaluate reads and writes one result's files (its command-line arguments)."""

    prepared_dir: Path  # prepare's output folder (manifest, classes, images)
    model: Path  # finetune_full's model file
    sweep: Path  # train_head's val curve over the C grid
    history: Path  # finetune_full's per-epoch history
    probe_metrics: Path | None  # train_head's metrics (chosen C); None in older commits
    finetune_metrics: Path | None  # finetune_full's metrics (kept epoch); None in older commits
    metrics: Path  # evaluate's overall test metrics
    per_class: Path | None  # evaluate's per-class table; None in older commits
    predictions: Path  # evaluate's per-image test predictions
    confusion_png: Path
    grid_png: Path

    def under(self, root: Path) -> ResultPaths:
        """The same files under another folder (a commit's files written out by sync)."""
        return ResultPaths(**{f.name: None if getattr(self, f.name) is None
                              else root / getattr(self, f.name) for f in fields(self)})


_HELP = {
    "prepared_dir": "prepare's output folder",
    "model": "the fine-tuned model file",
    "sweep": "train_head's C sweep (CSV)",
    "history": "finetune_full's epochs (CSV)",
    "probe_metrics": "train_head's metrics (JSON): the chosen C",
    "finetune_metrics": "finetune_full's metrics (JSON): the kept epoch",
    "metrics": "test metrics to write (JSON)",
    "per_class": "per-class test precision, recall, F1 and support to write (CSV)",
    "predictions": "per-image test predictions to write (CSV, a DVC confusion plot)",
    "confusion_png": "confusion matrix to write (PNG)",
    "grid_png": "test images with true and predicted labels to write (PNG)",
}
_NEW_ARGUMENTS = {"probe_metrics", "finetune_metrics", "per_class"}  # absent before 2026-11-29


def add_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """evaluate's path arguments, `--prepared-dir` ... `--grid-png`."""
    for name, help_text in _HELP.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, help=help_text,
                            required=required and name not in _NEW_ARGUMENTS)


def from_namespace(args: argparse.Namespace) -> ResultPaths:
    return ResultPaths(**{name: getattr(args, name) for name in _HELP})


def from_command(command: str) -> ResultPaths:
    """The paths in evaluate's `cmd`, as dvc.lock records it."""
    words = shlex.split(command)
    script = next((i for i, word in enumerate(words) if word.endswith("evaluate.py")), None)
    if script is None:
        raise ValueError(f"not an evaluate command: {command!r}")
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, required=False)
    known, _ = parser.parse_known_args(words[script + 1:])
    return from_namespace(known)


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file in dvc.lock (of its bytes)."""
    digest = hashlib.md5()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def result_key(params: dict[str, Any], model_md5: str, manifest_md5: str) -> str:
    """What makes two runs the same result: params, model bytes, prepared dataset.

    The dataset enters as manifest.csv's md5 (dvc.lock has it for every commit, so
    sync-mlflow computes the same key without the files): it covers every image and label;
    the split follows from those and `prepare.*`, which are in `params`.
    """
    payload = json.dumps([flatten(params), model_md5, manifest_md5], sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def summary_metrics(test: dict, probe: dict, finetune: dict) -> dict[str, float]:
    """The figures of the kept model a reviewer compares (`summary.*`), and counts."""
    metrics: dict[str, float] = {}
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        if key in test:
            metrics[f"summary.test_{key}"] = test[key]
    if "images" in test:
        metrics["tally.test_images"] = test["images"]
    if "best_c" in probe:
        metrics["summary.probe_c"] = probe["best_c"]
    if "start_c" in probe:  # where fine-tuning started (imgpipe.probe.within_noise)
        metrics["summary.start_c"] = probe["start_c"]
    for key in ("val_accuracy", "val_loss"):
        if key in probe:
            metrics[f"summary.probe_{key}"] = probe[key]
    for key, value in finetune.items():
        if key == "best_epoch" or key.startswith("val_"):
            metrics[f"summary.{key}"] = value  # val_* of the kept epoch
        elif isinstance(value, (int, float)):
            metrics[f"tally.finetune_{key}"] = value
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, (int, float))}


def curves(path: Path, prefix: str, step_column: str | None) -> dict[str, list]:
    """Each numeric column of a history CSV as (step, value) points; step = row or column."""
    table = pd.read_csv(path)
    steps = table[step_column] if step_column else pd.Series(range(len(table)))
    return {f"{prefix}{column}": [(int(step), float(value)) for step, value in
                                  zip(steps, table[column]) if pd.notna(value)]
            for column in table.columns if column != step_column}


def build_record(relative: ResultPaths, root: Path, *, params: dict[str, Any],
                 baseline: dict | None, baseline_rev: str | None, exp_name: str | None,
                 experiment: str, key: str, tags: dict[str, str] | None = None,
                 register_as: str | None = None, example_image: bytes | None = None,
                 commit: str | None = None) -> RunRecord:
    """The MLflow record of the result whose files are at `relative` under `root` (with its
    `dvc.lock`). Missing files are left out: a commit whose DVC outputs are not in the
    local cache has no model or dataset to log. `commit`: the result is the one committed
    there (sync-mlflow), `baseline_rev` being its parent."""
    paths, lock_path = relative.under(root), root / "dvc.lock"
    changes = {} if baseline is None else changed_params(params, baseline)
    fingerprint = _fingerprint(paths.prepared_dir)
    dataset = _prepared_dataset(paths.prepared_dir, relative.prepared_dir,
                                str((params.get("data") or {}).get("source", "dataset")),
                                fingerprint)
    test = _json(paths.metrics)
    per_class = (pd.read_csv(paths.per_class) if paths.per_class and paths.per_class.is_file()
                 else _per_class_table(test.get("per_class", {})))
    classes_path = paths.prepared_dir / CLASSES_NAME
    all_tags = {
        "freeze": str(params.get("freeze")),
        "backbone": str((params.get("backbone") or {}).get("name")),
        "changed_params": ", ".join(changes) or "none",
        "dvc_result": key,
        **({"dvc_exp_name": exp_name} if exp_name else {}),
        **({"dvc_exp_baseline_rev": baseline_rev} if baseline_rev and exp_name else {}),
        **({"dataset_fingerprint": fingerprint} if fingerprint is not None else {}),
        **(tags or {}),
    }
    return RunRecord(
        experiment=experiment,
        params=flatten(params),
        metrics=summary_metrics(test, _json(paths.probe_metrics), _json(paths.finetune_metrics)),
        curves={**curves(paths.sweep, "vs_c.probe_", step_column=None),
                **curves(paths.history, "vs_epoch.finetune_", step_column="epoch")},
        artifacts=[p for p in (paths.metrics, paths.per_class, paths.probe_metrics,
                               paths.finetune_metrics, paths.predictions, paths.confusion_png,
                               paths.grid_png, paths.sweep, paths.history, classes_path,
                               lock_path) if p is not None and p.is_file()],
        tags=all_tags,
        run_name=run_name(exp_name, changes),
        description=describe(exp_name, baseline_rev, changes, commit),
        model_file=paths.model if paths.model.is_file() else None,
        classes=json.loads(classes_path.read_text()) if classes_path.is_file() else [],
        example_image=example_image,
        register_as=register_as,
        dataset=dataset,
        tables={"test_per_class.json": per_class} if len(per_class) else {},
    )


def _fingerprint(prepared_dir: Path) -> str | None:
    """What tells two prepared datasets apart: a digest of the index files (of the
    one-row-per-image manifest.csv for commits before the per-shard one); None when
    they are not here (a commit whose DVC outputs are in no cache)."""
    manifest_path = prepared_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    if per_image_manifest(manifest_path):
        return hashlib.sha256(manifest_path.read_bytes()).hexdigest()[:16]
    try:
        return dataset_digest(prepared_dir)[:16]
    except OSError:
        return None


def _prepared_dataset(prepared_dir: Path, source: Path, name: str,
                      digest: str | None) -> DatasetInput | None:
    """The prepared images' table (one row per image) as the run's input; None when its
    files are not all here."""
    if digest is None:
        return None
    manifest_path = prepared_dir / MANIFEST_NAME
    if per_image_manifest(manifest_path):
        table = pd.read_csv(manifest_path)
    else:
        try:
            table = read_manifest(prepared_dir).drop(columns="image")
        except DataError as error:
            _logger.warning("the run goes without its dataset table: %s", error)
            return None
    return DatasetInput(table=table, digest=digest, name=name, source=str(source))


def per_image_manifest(manifest_path: Path) -> bool:
    """A manifest.csv from before the per-shard layout: one row per image (sync-mlflow
    meets these in older commits)."""
    with manifest_path.open() as handle:
        return handle.readline().startswith("image_id,")


def _json(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _per_class_table(per_class: dict[str, dict]) -> pd.DataFrame:
    """evaluate.json's `per_class` (commits before the per-class CSV) as a table."""
    return pd.DataFrame([{"class": name, **figures} for name, figures in per_class.items()])
