"""The pipeline under real `dvc` commands, in a temporary copy of the repository.

The tests run in order on one copy: first repro, no-op repro, experiments that change
one stage's params, and a return to earlier params served from DVC's run-cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dvc_project import (
    STAGES,
    dvc,
    dvc_env,
    make_project,
    run,
    stages_restored,
    stages_run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), digits_dir)


def test_first_repro_runs_every_stage_and_writes_metrics(project: Path) -> None:
    result = dvc(project, "repro")
    assert stages_run(result.stdout) == set(STAGES)
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert metrics["images"] == 6  # 3 classes x 2 test images (20% of 10)
    predictions = pd.read_csv(project / "metrics" / "plots" / "test_predictions.csv")
    assert len(predictions) == 6
    assert metrics["accuracy"] == (predictions["actual"] == predictions["predicted"]).mean()
    assert (project / "models" / "model.pt").is_file()
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "first run")


def test_dvc_metrics_plots_and_exp_show_read_the_declarations(project: Path) -> None:
    metrics = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    assert "accuracy" in files["metrics/evaluate.json"]["data"]
    assert "best_c" in files["metrics/train_head.json"]["data"]
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]
    assert set(plots) == {"metrics/evaluate_per_class.csv", "metrics/plots/train_head_sweep.csv",
                          "metrics/plots/finetune_history.csv",
                          "metrics/plots/test_predictions.csv", "metrics/plots/confusion.png",
                          "metrics/plots/test_grid.png"}
    confusion = json.dumps(plots["metrics/plots/test_predictions.csv"])
    assert '"actual"' in confusion and '"predicted"' in confusion
    assert '"epoch"' in json.dumps(plots["metrics/plots/finetune_history.csv"])


def test_second_repro_runs_no_stage(project: Path) -> None:
    result = dvc(project, "repro")
    assert stages_run(result.stdout) == set()
    assert "didn't change, skipping" in result.stdout


# A one-line edit of each module -> the stages `dvc status` then reports changed: those
# that import it. The stages after them re-run under `dvc repro` only if their outputs
# change (finetune_full's model.pt -> evaluate).
CODE_EDITS = {
    "src/imgpipe/augment.py": {"finetune_full"},  # the augmentation
    "src/imgpipe/finetune.py": {"finetune_full"},  # the fine-tuning loop
    "src/imgpipe/optim.py": {"finetune_full"},
    "src/imgpipe/folded_training.py": {"finetune_full"},  # fine-tuning only, not extract
    "src/imgpipe/head.py": {"train_head", "finetune_full"},  # the saved head's format
    "src/imgpipe/probe.py": {"train_head"},  # fitting the probe: fine-tuning does not rerun
    "src/imgpipe/tracking.py": {"evaluate"},  # MLflow logging
    "src/imgpipe/pyfunc.py": {"evaluate"},
    "src/imgpipe/featurize.py": {"extract"},
    "src/imgpipe/prepare_image.py": {"prepare"},
    "src/imgpipe/index_writer.py": {"prepare"},  # writing the index: readers do not rerun
    "src/imgpipe/params_finetune.py": {"finetune_full"},  # adding a fine-tuning param
    "src/imgpipe/params_evaluate.py": {"evaluate"},
    "src/imgpipe/params_check.py": set(),  # the whole-file check: refuses, computes nothing
}


@pytest.mark.parametrize(("module", "stages"), list(CODE_EDITS.items()))
def test_a_one_line_code_edit_changes_only_the_stages_that_run_it(
        project: Path, module: str, stages: set[str]) -> None:
    with (project / module).open("a") as handle:
        handle.write("# a one-line edit\n")
    try:
        changed = json.loads(dvc(project, "status", "--json").stdout)
    finally:
        run(project, "git", "checkout", "--", module)
    assert set(changed) == stages
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_train_head_param_reruns_from_train_head_with_cached_features(project: Path) -> None:
    result = dvc(project, "exp", "run", "-S", "train_head.c_grid=[0.01]")
    assert stages_run(result.stdout) == {"train_head", "finetune_full", "evaluate"}
    assert json.loads((project / "metrics" / "train_head.json").read_text())["best_c"] == 0.01


def test_freeze_partial_reruns_only_finetune_and_evaluate(project: Path) -> None:
    result = dvc(project, "exp", "run", "-S", "freeze=partial")
    assert stages_run(result.stdout) == {"finetune_full", "evaluate"}
    history = (project / "metrics" / "plots" / "finetune_history.csv").read_text()
    assert len(history.strip().splitlines()) == 3  # header, epoch 0 (the probe), epoch 1


def test_earlier_params_are_restored_from_run_cache(project: Path) -> None:
    result = dvc(project, "exp", "run", "-S", "freeze=all")
    assert stages_run(result.stdout) == set()
    assert stages_restored(result.stdout) == {"finetune_full", "evaluate"}
    history = (project / "metrics" / "plots" / "finetune_history.csv").read_text()
    assert len(history.strip().splitlines()) == 2  # header and epoch 0 only: freeze=all


@pytest.mark.parametrize(("key_value", "message"), [
    ("freeze=some", "freeze: 'some' is not allowed; use one of all, partial, none"),
    ("backbone.name=resnet19", "did you mean resnet18"),
    # A check across sections, by imgpipe.params_check, before finetune_full does work.
    ("finetune_full.head_init=xavier", "with freeze: all would leave an untrained head"),
    # DVC checks the dependency before the stage runs, and names the missing path.
    ("data.source=data/missing", "No such file or directory"),
])
def test_bad_params_stop_the_stage_with_one_clear_line(project: Path, key_value: str,
                                                       message: str) -> None:
    result = dvc(project, "exp", "run", "-S", key_value, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    run(project, "git", "checkout", "--", "params.yaml")


def _set_params(project: Path, **sections: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _kill_when(project: Path, pattern: str, *args: str) -> None:
    """Start `dvc ...`, SIGKILL its whole process group once `pattern` matches a file."""
    process = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=project,
                               env=dvc_env(project), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(6000):  # 10 minutes at most
            if list(project.glob(pattern)) or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None, f"dvc {' '.join(args)} ended before {pattern} appeared"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _lock_hashes(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {f"{stage}:{out['path']}": out["md5"]
            for stage, entry in lock["stages"].items() for out in entry.get("outs", [])}


def test_kill_9_during_finetune_resumes_and_matches_an_uninterrupted_run(
        project: Path) -> None:
    _set_params(project, freeze="partial", finetune_full={"epochs": 3})
    _kill_when(project, "models/checkpoints/finetune-*.pt", "repro")
    result = dvc(project, "repro")
    assert "finetune_full" in stages_run(result.stdout)
    assert "resuming from" in result.stdout + result.stderr
    resumed = (project / "metrics" / "plots" / "finetune_history.csv").read_text()
    resumed_model = _lock_hashes(project)["finetune_full:models/model.pt"]

    result = dvc(project, "repro", "-f", "-s", "finetune_full")  # from scratch, no kill
    assert "resuming from" not in result.stdout + result.stderr
    assert (project / "metrics" / "plots" / "finetune_history.csv").read_text() == resumed
    assert _lock_hashes(project)["finetune_full:models/model.pt"] == resumed_model


def test_kill_9_during_extract_leaves_nothing_taken_as_valid(project: Path) -> None:
    before = _lock_hashes(project)
    # With an empty feature cache, extract opens its cache folder and then runs the
    # network: killed there, it has written no output and no cache entry yet.
    shutil.rmtree(project / ".cache" / "imgpipe" / "features", ignore_errors=True)
    _kill_when(project, ".cache/imgpipe/features/*/key.json", "repro", "-f", "-s", "extract")
    result = dvc(project, "repro")  # restored from the run-cache, or re-extracted
    assert stages_run(result.stdout) | stages_restored(result.stdout) == {"extract"}
    assert _lock_hashes(project) == before
    assert "up to date" in dvc(project, "status").stdout
    # Outputs and cache entries are written to temporaries and renamed into place only
    # when complete (tests/test_io.py, tests/test_cache.py).


def test_forced_rerun_of_everything_reproduces_every_output(project: Path) -> None:
    before = _lock_hashes(project)
    metrics_before = (project / "metrics" / "train_head.json").read_text()
    dvc(project, "repro", "-f")
    assert _lock_hashes(project) == before
    assert (project / "metrics" / "train_head.json").read_text() == metrics_before


def test_temp_experiment_runs_land_in_the_workspace_mlflow_store(project: Path) -> None:
    import mlflow

    dvc(project, "exp", "run", "--temp", "-n", "temp-run", "-S", "train_head.max_iter=777")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("imgpipe").experiment_id],
        filter_string="tags.dvc_exp_name = 'temp-run'")
    assert len(runs) == 1
    assert runs[0].data.params["train_head.max_iter"] == "777"
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))
