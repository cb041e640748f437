"""Recording a pipeline run in MLflow, without ever failing the pipeline for it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # relative to the repository root
_UNSAFE = re.compile(r"[^\w\-. /]")  # characters MLflow refuses in metric and param names


def log_run(*, experiment: str, params: dict[str, Any], metrics: dict[str, float],
            artifacts: list[Path], tags: dict[str, str]) -> str | None:
    """Log one MLflow run; returns its id, or None (with a warning) if MLflow failed.

    `MLFLOW_TRACKING_URI` is honoured; unset, runs go to `sqlite:///mlflow.db`.
    """
    try:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            mlflow.log_params({_safe(k): _param_value(v) for k, v in params.items()})
            mlflow.log_metrics({_safe(k): float(v) for k, v in metrics.items()})
            mlflow.set_tags({**_default_tags(), **tags})
            for path in artifacts:
                mlflow.log_artifact(str(path))
        _logger.info("logged MLflow run %s to %s", run.info.run_id, mlflow.get_tracking_uri())
        return run.info.run_id
    except Exception as error:  # tracking is a record of the run, not part of its result
        _logger.warning("MLflow run not recorded (%s: %s); the DVC outputs are complete",
                        type(error).__name__, error)
        return None


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def _default_tags() -> dict[str, str]:
    tags = {name.lower(): os.environ[name]
            for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV") if os.environ.get(name)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        tags["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
