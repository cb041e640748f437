"""Integration: the pipeline logs to a real `mlflow server` on 127.0.0.1 (REST API checks)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import mlflow_server
from dvc_project import dvc, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a sqlite backend and artifacts in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(f"sqlite:///{root / 'backend.db'}", root / "server.log",
                       artifacts=root / "artifacts") as url:
        yield url


def _api(url: str, endpoint: str, **query) -> dict:
    address = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(address, timeout=30) as response:
        return json.loads(response.read())


def test_pipeline_run_is_recorded_on_the_server(server: str, tmp_path: Path,
                                                digits_dir: Path) -> None:
    project = make_project(tmp_path / "project", digits_dir)
    dvc(project, "repro", env={"MLFLOW_TRACKING_URI": server})
    assert not (project / "mlflow.db").exists()  # the URI was honoured, not the default

    experiment = _api(server, "experiments/get-by-name", experiment_name="imgpipe")
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/runs/search", method="POST",
        data=json.dumps({"experiment_ids": [experiment["experiment"]["experiment_id"]]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())["runs"]
    assert len(runs) == 1
    run = runs[0]
    run_id = run["info"]["run_id"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["freeze"] == "all" and params["data.source"] == "data/tiny"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics["summary.test_accuracy"] == pytest.approx(evaluated["accuracy"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["backbone"] == "efficientnet_lite0" and "dataset_fingerprint" in tags

    history = _api(server, "metrics/get-history", run_id=run_id,
                   metric_key="vs_c.probe_val_accuracy")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1]  # c_grid [0.1, 1.0]
    artifacts = {f["path"] for f in _api(server, "artifacts/list", run_id=run_id)["files"]}
    assert {"evaluate.json", "confusion.png", "classes.json", "dvc.lock"} <= artifacts
