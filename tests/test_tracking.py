"""The MLflow record of a run, the pyfunc model, and what happens without a server."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from imgpipe.errors import PipelineError
from imgpipe.params import TrackingParams
from imgpipe.predict import Predictor
from imgpipe.tracking import RunRecord, default_tracking_uri, log_run
from stages.evaluate import track


@pytest.fixture(scope="module")
def logged(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One run logged by evaluate's `track`, in a store of its own: (uri, run id)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    params.write_text("freeze: all\nfinetune_full:\n  lr: 0.0001\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        run_id = track(prepared_dir=trained["prepared"], model_path=trained["model"],
                       metrics={"accuracy": 0.5, "per_class": {"one": {"recall": 1.0}}},
                       params_path=params, sweep_path=trained["sweep"],
                       history_path=trained["history"],
                       artifacts=[trained["metrics"], trained["confusion"]],
                       tracking=TrackingParams("tests", register_model="digits"),
                       tags={"backbone": "efficientnet_lite0", "freeze": "all"})
    assert run_id is not None
    return uri, run_id


def test_run_holds_params_metrics_curves_artifacts_and_tags(logged) -> None:
    uri, run_id = logged
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params == {"freeze": "all", "finetune_full.lr": "0.0001"}
    assert run.data.metrics["test_accuracy"] == 0.5
    assert run.data.metrics["test_per_class.one.recall"] == 1.0
    assert run.data.tags["backbone"] == "efficientnet_lite0"
    assert len(run.data.tags["dataset_fingerprint"]) == 16
    sweep = client.get_metric_history(run_id, "probe_val_accuracy")
    assert [m.step for m in sweep] == [0, 1]  # the two C values of the probed fixture
    assert [m.step for m in client.get_metric_history(run_id, "finetune_val_accuracy")] == [0]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"evaluate.json", "confusion.png", "classes.json", "sweep.csv",
            "history.csv"} <= artifacts


def test_logged_model_predicts_from_paths_and_bytes(logged, trained, digits_dir) -> None:
    uri, run_id = logged
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    image = sorted((digits_dir / "one").iterdir())[0]
    by_path = model.predict(pd.DataFrame({"path": [str(image)]}))
    by_bytes = model.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    expected = Predictor(trained["model"]).predict([image])[0]
    assert by_path["predicted"][0] == by_bytes["predicted"][0] == expected.predicted
    assert by_path["probability"][0] == pytest.approx(expected.probability, abs=1e-6)
    assert {"p_one", "p_seven", "p_zero"} <= set(by_path.columns)
    assert model.metadata.signature is not None


def test_model_is_registered_when_asked(logged) -> None:
    uri, run_id = logged
    versions = mlflow.MlflowClient(tracking_uri=uri).search_model_versions("name='digits'")
    assert [v.run_id for v in versions] == [run_id]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _record(tmp_path: Path) -> RunRecord:
    return RunRecord("tests", {"a": 1}, {"m": 1.0}, {}, [], {})


def test_unreachable_server_warns_and_returns_none(tmp_path: Path, monkeypatch,
                                                   caplog) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level(logging.WARNING):
        assert log_run(_record(tmp_path)) is None
    assert "MLflow run not recorded" in caplog.text and "DVC outputs are complete" in caplog.text


def test_required_tracking_turns_the_failure_into_an_error(tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(PipelineError, match="tracking.required is true"):
        log_run(_record(tmp_path), required=True)


def test_default_store_is_in_the_repository_dvc_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))  # set by dvc exp run --temp too
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'repo' / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
