"""Scaling out under real `dvc` commands: caches shared through a DVC remote, and a
sweep run in parallel on the experiment queue.

One project runs the pipeline and pushes to a local remote; every test works in its own
fresh clone of it, as another machine would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dvc_project import (
    STAGES,
    dvc,
    exp_show,
    file_md5,
    make_project,
    run,
    stages_restored,
    stages_run,
    start_queue,
    wait_for_queue,
)

pytestmark = pytest.mark.slow

_RESULTS = ("metrics/evaluate.json", "models/model.pt", "models/head.pt",
            "data/features/train.npz")
SWEEP = {"sweep-c01": 0.1, "sweep-c10": 10.0}  # experiment name -> its one train_head C


@dataclass(frozen=True)
class Pushed:
    """A project that ran the pipeline and pushed its results to a local DVC remote."""

    project: Path
    unlocked_rev: str  # the commit before `dvc.lock`: results only in the pushed run-cache

    def clone(self, name: str, rev: str | None = None) -> Path:
        clone = self.project.parent / name
        run(self.project.parent, "git", "clone", "-q", str(self.project), str(clone))
        if rev is not None:
            run(clone, "git", "checkout", "-q", rev)
        return clone


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Pushed:
    root = tmp_path_factory.mktemp("shared")
    project = make_project(root / "project", digits_dir)
    dvc(project, "remote", "add", "-d", "shared", str(root / "remote"))
    run(project, "git", "commit", "-q", "-am", "shared remote")  # clones get the remote
    unlocked_rev = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert stages_run(dvc(project, "repro").stdout) == set(STAGES)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "results")
    dvc(project, "push", "--run-cache")
    return Pushed(project, unlocked_rev)


def _assert_same_files(clone: Path, project: Path, *paths: str) -> None:
    for path in paths:
        assert file_md5(clone / path) == file_md5(project / path), path


def test_fresh_clone_pull_run_cache_then_repro_runs_no_stage(pushed: Pushed) -> None:
    clone = pushed.clone("clone-pull")
    dvc(clone, "pull", "--run-cache")
    assert stages_run(dvc(clone, "repro").stdout) == set()
    assert "up to date" in dvc(clone, "status").stdout
    _assert_same_files(clone, pushed.project, *_RESULTS)


def test_fresh_clone_repro_pull_downloads_instead_of_running(pushed: Pushed) -> None:
    clone = pushed.clone("clone-repro-pull")
    assert stages_run(dvc(clone, "repro", "--pull").stdout) == set()
    assert "up to date" in dvc(clone, "status").stdout
    _assert_same_files(clone, pushed.project, *_RESULTS)


def test_fresh_clone_repro_allow_missing_checks_without_downloading(pushed: Pushed) -> None:
    clone = pushed.clone("clone-allow-missing")
    assert stages_run(dvc(clone, "repro", "--allow-missing").stdout) == set()
    assert not (clone / "models" / "model.pt").exists()
    assert not (clone / ".dvc" / "cache").exists()


def test_without_dvc_lock_the_remote_run_cache_restores_only_fully_cached_stages(
        pushed: Pushed) -> None:
    """`dvc push --run-cache` uploads the run records and the workspace's cached outputs,
    not the `cache: false` metrics a record names, so a stage with such a metric (prepare,
    train_head, finetune_full, evaluate) reruns on another machine; extract restores."""
    clone = pushed.clone("clone-unlocked", rev=pushed.unlocked_rev)
    assert not (clone / "dvc.lock").exists()
    result = dvc(clone, "repro", "--pull", "extract")
    assert stages_restored(result.stdout) == {"extract"}
    assert stages_run(result.stdout) == {"prepare"}
    _assert_same_files(clone, pushed.project, "data/features/train.npz",
                       "data/prepared/manifest.csv")


def _queue_logs(project: Path) -> dict[str, str]:
    return {name: dvc(project, "queue", "logs", name, check=False).stdout for name in SWEEP}


def test_queued_sweep_runs_in_parallel_into_exp_show_and_one_mlflow_run_each(
        pushed: Pushed) -> None:
    import mlflow

    clone = pushed.clone("clone-sweep")
    dvc(clone, "pull")
    assert not (clone / "mlflow.db").exists()  # both runs race to create the store
    for name, c in SWEEP.items():
        dvc(clone, "exp", "run", "--queue", "-n", name, "-S", f"train_head.c_grid=[{c}]")
    start_queue(clone, jobs=2)
    try:
        statuses, most_running = wait_for_queue(clone, timeout=900)
    finally:
        dvc(clone, "queue", "stop", "--kill", check=False)  # else idle workers linger 10 s
    logs = _queue_logs(clone)
    assert statuses == dict.fromkeys(SWEEP, "Success"), logs
    assert most_running == 2
    for name in SWEEP:  # prepare and extract came from the pulled cache
        assert stages_run(logs[name]) == {"train_head", "finetune_full", "evaluate"}

    experiments = exp_show(clone)
    for name, c in SWEEP.items():
        assert experiments[name]["params"]["train_head"]["c_grid"] == [c]
        assert experiments[name]["metrics"]["metrics/train_head.json"]["best_c"] == c
        evaluated = experiments[name]["metrics"]["metrics/evaluate.json"]
        assert evaluated["images"] == 6
        assert evaluated["accuracy"] in {k / 6 for k in range(7)}  # k of 6 test images

    # DVC_ROOT is the user's repository in a queued run, so both runs are in its store.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imgpipe").experiment_id])
    by_name = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    assert len(runs) == len(SWEEP) and set(by_name) == set(SWEEP), logs
    head = run(clone, "git", "rev-parse", "HEAD").stdout.strip()
    for name, c in SWEEP.items():
        logged = by_name[name]
        assert logged.data.params["train_head.c_grid"] == str([c])
        assert logged.data.tags["dvc_exp_baseline_rev"] == head
        evaluate = experiments[name]["metrics"]["metrics/evaluate.json"]
        assert logged.data.metrics["summary.test_accuracy"] == evaluate["accuracy"]
        # Artifacts live in the repository too, not in the queue's deleted temporary copy.
        artifacts = Path(urlparse(logged.info.artifact_uri).path)
        assert artifacts.is_relative_to(clone.resolve() / "mlruns")
        assert json.loads((artifacts / "evaluate.json").read_text()) == evaluate
