"""Recording a pipeline run in MLflow.

A run holds every param, the summary metrics, the training curves as step metrics (read
from the stages' history files, so they are there even when DVC restored those stages
from its cache), the plots and class map, the `dvc.lock` in force, a name, a description
and tags, the prepared dataset as its input, and the model as a pyfunc (what goes in is
built by `imgpipe.run_record`). Tracking failures warn and leave the DVC outputs alone,
unless `tracking.required` is true.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpipe import pyfunc
from imgpipe.closure import SRC_DIR, import_closure
from imgpipe.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

_logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^\w\-. /]")  # characters MLflow refuses in metric and param names
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length


@dataclass(frozen=True)
class DatasetInput:
    """A dataset logged as the run's input (MLflow's Dataset column)."""

    table: pd.DataFrame  # the prepared manifest: one row per image
    digest: str  # what tells two datasets apart in the UI
    name: str
    source: str


@dataclass
class RunRecord:
    """Everything one MLflow run receives."""

    experiment: str
    params: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]  # name -> [(step, value)]
    artifacts: list[Path]
    tags: dict[str, str]
    model_file: Path | None = None
    classes: list[str] = field(default_factory=list)
    example_image: bytes | None = None
    register_as: str | None = None
    run_name: str | None = None
    description: str | None = None  # markdown, shown on the run's page
    dataset: DatasetInput | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # artifact file -> table


def default_tracking_uri() -> str:
    """`sqlite:///mlflow.db` in the repository root.

    DVC sets DVC_ROOT to the user's repository also for `dvc exp run --temp` and
    `--queue`, which run in a temporary copy: their runs land in the same store.
    """
    return f"sqlite:///{_repository_root() / 'mlflow.db'}"


def _repository_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def log_run(record: RunRecord, required: bool = False) -> str | None:
    """Log `record` as one MLflow run; its id, or None after a warning.

    Raises:
        PipelineError: MLflow failed and `required` is true.
    """
    # A dead server must not hold the pipeline for minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        return _log(record)
    except Exception as error:  # tracking is a record of the run, not part of its result
        message = f"MLflow run not recorded ({type(error).__name__}: {error})"
        if required:
            raise PipelineError(f"{message}; tracking.required is true: start the tracking "
                                "server or set tracking.required: false") from error
        _logger.warning("%s; the DVC outputs are complete", message)
        return None


def connect(experiment: str) -> str:
    """Point MLflow at the store (`MLFLOW_TRACKING_URI`, else the default) and at
    `experiment`, created when missing; returns the experiment's id."""
    import mlflow

    own_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(own_uri or default_tracking_uri())
    with _sqlite_lock(mlflow.get_tracking_uri()):
        # The default store keeps artifacts beside it; MLflow's default, ./mlruns in the
        # working directory, is DVC's temporary copy under `--temp` and `--queue`.
        _set_experiment(experiment, artifact_location=None if own_uri else
                        (_repository_root() / "mlruns").as_uri())
    return mlflow.get_experiment_by_name(experiment).experiment_id


def _log(record: RunRecord) -> str:
    import mlflow

    connect(record.experiment)
    with mlflow.start_run(run_name=record.run_name, description=record.description) as run:
        mlflow.log_params({_safe(k): _param_value(v) for k, v in record.params.items()})
        mlflow.log_metrics({_safe(k): float(v) for k, v in record.metrics.items()})
        for name, points in record.curves.items():
            for step, value in points:
                if math.isfinite(value):
                    mlflow.log_metric(_safe(name), value, step=step)
        mlflow.set_tags({**_default_tags(), **record.tags})
        for path in record.artifacts:
            if path.exists():
                mlflow.log_artifact(str(path))
        for artifact_file, table in record.tables.items():
            mlflow.log_table(table, artifact_file=artifact_file)
        if record.dataset is not None:
            _log_dataset(record.dataset)
        if record.model_file is not None:
            _log_model(record)
    _logger.info("logged MLflow run %s to %s", run.info.run_id, mlflow.get_tracking_uri())
    return run.info.run_id


@contextmanager
def _sqlite_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock per SQLite store, shared by every process on this machine.

    MLflow creates a new SQLite store's tables without a lock, so of two runs logging at
    once into a store that does not exist yet (`dvc queue start -j 2`) one fails ("table
    ... already exists", "duplicate column name"). Other stores, and Windows (no fcntl),
    go without.
    """
    if not tracking_uri.startswith("sqlite:") or os.name == "nt":
        yield
        return
    import fcntl

    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"imgpipe-mlflow-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _set_experiment(name: str, artifact_location: str | None) -> None:
    """`mlflow.set_experiment`, creating a missing experiment at `artifact_location`."""
    import mlflow

    if artifact_location is not None and mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(name)


def _log_dataset(dataset: DatasetInput) -> None:
    import mlflow

    with warnings.catch_warnings():  # "can be interpreted ... LocalArtifactDatasetSource,
        # LocalArtifactDatasetSource": MLflow registers the one local source twice.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        logged = mlflow.data.from_pandas(dataset.table, source=dataset.source,
                                         name=dataset.name, digest=dataset.digest)
    mlflow.log_input(logged, context="prepared")


def _log_model(record: RunRecord) -> None:
    import mlflow
    import pandas as pd

    example = None if record.example_image is None else pd.DataFrame(
        {"path": [None], "image": [record.example_image]})
    mlflow.pyfunc.log_model(
        name="model",
        python_model=pyfunc.__file__,  # models-from-code: nothing pickled
        artifacts={pyfunc.MODEL_ARTIFACT: str(record.model_file)},
        code_paths=[str(Path(__file__).parent)],
        signature=pyfunc.signature(record.classes),
        input_example=example,
        pip_requirements=model_requirements(),
        registered_model_name=record.register_as,
    )


def model_requirements() -> list[str]:
    """pip requirements of the logged model: `name==version` of every installed
    distribution that the model's code (imgpipe.pyfunc and its import closure) imports.

    Versions are the installed ones, without a local label (torch `2.5.1+cpu` -> `2.5.1`,
    which is what PyPI has). mlflow adds itself.
    """
    top_level: set[str] = set()
    for name in import_closure(pyfunc.__name__):
        for node in ast.walk(ast.parse((SRC_DIR / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top_level.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    names = {dist for module in top_level - {"imgpipe", "mlflow"} - sys.stdlib_module_names
             for dist in distributions.get(module, [])}
    return sorted(f"{dist}=={importlib.metadata.version(dist).split('+')[0]}"
                  for dist in names)


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def _param_value(value: Any) -> str:
    return ("null" if value is None else str(value))[:_PARAM_VALUE_LIMIT]


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
