"""The MLflow record of a run, the pyfunc model, and what happens without a server."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from imgpipe.errors import PipelineError
from imgpipe.manifest import dataset_digest
from imgpipe.params_evaluate import TrackingParams
from imgpipe.run_record import ResultPaths, summary_metrics
from imgpipe.tracking import RunRecord, default_tracking_uri, log_run, model_requirements
from stages.evaluate import track


def _result_paths(trained) -> ResultPaths:
    return ResultPaths(
        prepared_dir=trained["prepared"], model=trained["model"], sweep=trained["sweep"],
        history=trained["history"], probe_metrics=trained["probe_metrics"],
        finetune_metrics=trained["finetune_metrics"], metrics=trained["metrics"],
        per_class=trained["per_class"], predictions=trained["predictions"],
        confusion_png=trained["confusion"], grid_png=trained["grid"])


def _git_repository(root: Path, committed_params: str) -> Path:
    """A git repository whose committed params.yaml is `committed_params`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(committed_params, encoding="utf-8")
    (root / "dvc.lock").write_text("schema: '2.0'\n", encoding="utf-8")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "baseline"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    return root


_COMMITTED = "data:\n  source: data/tiny\nfreeze: all\nfinetune_full:\n  lr: 0.0001\n"


@pytest.fixture(scope="module")
def logged(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One run logged by evaluate's `track`, in a store of its own: (uri, run id).

    The workspace's params differ from the committed ones in `freeze` only, as after
    `dvc repro` with an edited params.yaml (no DVC experiment name)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    root = _git_repository(tmp_path_factory.mktemp("repo"), _COMMITTED)
    (root / "params.yaml").write_text(_COMMITTED.replace("freeze: all", "freeze: partial"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("DVC_EXP_NAME", raising=False)
        patch.delenv("DVC_EXP_BASELINE_REV", raising=False)
        run_id = track(_result_paths(trained), params_path=root / "params.yaml",
                       tracking=TrackingParams("tests", register_model="digits"), root=root)
    assert run_id is not None
    return uri, run_id


def test_run_is_named_and_described_by_the_params_that_changed(logged) -> None:
    uri, run_id = logged
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.run_name == "freeze=partial"
    assert run.data.tags["mlflow.note.content"].endswith("- `freeze`: all → partial")
    assert run.data.tags["changed_params"] == "freeze"
    assert run.data.tags["freeze"] == "partial"
    assert run.data.tags["backbone"] == "None"  # not in these params
    assert len(run.data.tags["dvc_result"]) == 32


def test_run_holds_params_summary_metrics_curves_artifacts_and_tags(logged, trained) -> None:
    uri, run_id = logged
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params == {"data.source": "data/tiny", "freeze": "partial",
                               "finetune_full.lr": "0.0001"}
    test = json.loads(trained["metrics"].read_text())
    probe = json.loads(trained["probe_metrics"].read_text())
    metrics = run.data.metrics
    assert metrics["summary.test_accuracy"] == test["accuracy"]
    assert metrics["summary.test_macro_f1"] == test["macro_f1"]
    assert metrics["summary.test_balanced_accuracy"] == test["balanced_accuracy"]
    assert metrics["summary.probe_c"] == probe["best_c"]
    assert metrics["summary.start_c"] == probe["start_c"]
    assert metrics["summary.best_epoch"] == 0  # freeze=all in the fixture: the probe
    assert metrics["tally.test_images"] == test["images"]
    # Every metric says what it is; per-class figures are a table, not 24 metrics.
    assert {name.split(".")[0] for name in metrics} == {"summary", "tally", "vs_c", "vs_epoch"}
    assert not [name for name in metrics if "per_class" in name or "support" in name]
    assert len(run.data.tags["dataset_fingerprint"]) == 16
    sweep = client.get_metric_history(run_id, "vs_c.probe_val_accuracy")
    assert [m.step for m in sweep] == [0, 1]  # the two C values of the probed fixture
    assert [m.value for m in client.get_metric_history(run_id, "vs_c.probe_c")] == [0.1, 1.0]
    assert [m.step for m in client.get_metric_history(run_id, "vs_epoch.finetune_val_accuracy")
            ] == [0]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"evaluate.json", "per_class.csv", "test_per_class.json", "train_head.json",
            "finetune.json", "confusion.png", "classes.json", "sweep.csv",
            "history.csv", "dvc.lock"} <= artifacts
    table = json.loads(Path(client.download_artifacts(run_id, "test_per_class.json")
                            ).read_text())
    assert sorted(row[0] for row in table["data"]) == ["one", "seven", "zero"]


def test_prepared_dataset_is_the_runs_input_with_the_index_digest(logged, trained) -> None:
    uri, run_id = logged
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == dataset_digest(trained["prepared"])[:16]
    assert dataset_input.dataset.name == "data/tiny"
    assert "prepared" in dataset_input.dataset.source
    schema = json.loads(dataset_input.dataset.schema)["mlflow_colspec"]
    assert {"image_id", "label", "split"} <= {column["name"] for column in schema}
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == len(
        pd.read_csv(trained["prepared"] / "splits.csv"))  # one row per image
    assert [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"] == [
        "prepared"]


def test_run_under_dvc_exp_run_is_named_after_the_experiment(trained, tmp_path: Path,
                                                             monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = _git_repository(tmp_path / "repo", _COMMITTED)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "probe")  # what `dvc exp run -n probe` sets
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    run_id = track(_result_paths(trained), params_path=root / "params.yaml",
                   tracking=TrackingParams("tests"), root=root)
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.run_name == "probe"
    assert run.data.tags["dvc_exp_name"] == "probe"
    assert run.data.tags["changed_params"] == "none"
    assert "Params: the same as" in run.data.tags["mlflow.note.content"]


def test_summary_reads_the_chosen_c_not_the_last_of_the_grid() -> None:
    metrics = summary_metrics({"accuracy": 0.9, "images": 36}, {"best_c": 1.0, "start_c": 0.1,
                              "val_accuracy": 0.97}, {"best_epoch": 2, "val_accuracy": 0.98,
                                                      "val_macro_f1": 0.97, "params_total": 5})
    assert metrics == {"summary.test_accuracy": 0.9, "tally.test_images": 36.0,
                       "summary.probe_c": 1.0, "summary.start_c": 0.1,
                       "summary.probe_val_accuracy": 0.97,
                       "summary.best_epoch": 2.0, "summary.val_accuracy": 0.98,
                       "summary.val_macro_f1": 0.97, "tally.finetune_params_total": 5.0}


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


def test_model_requirements_pin_the_installed_version_of_each_package_the_model_imports(
        ) -> None:
    import importlib.metadata

    requirements = dict(line.split("==") for line in model_requirements())
    # predict.py and what it imports: torch, torchvision (backbones), PIL, numpy, tqdm;
    # pyfunc.py: pandas. Not mlflow (it adds itself), not imgpipe, not the stdlib.
    assert set(requirements) == {"numpy", "pandas", "pillow", "torch", "torchvision", "tqdm"}
    for name, version in requirements.items():
        assert version == importlib.metadata.version(name).split("+")[0]
