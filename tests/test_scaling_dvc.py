"""Scaling out under real `dvc` commands: caches shared through a DVC remote, and a
sweep run in parallel on the experiment queue.

One project runs the pipeline and pushes to an S3 bucket (moto's S3 server on 127.0.0.1,
through DVC's S3 plugin: what a team with a bucket runs); every test works in its own
fresh clone of it, as another machine would.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
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
class Bucket:
    """An S3 bucket on moto's server, and a client to count what is in it."""

    name: str
    endpoint: str
    client: object  # boto3's S3 client

    def objects(self) -> dict[str, int]:
        """Every object's key -> its size in bytes."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def bucket() -> Iterator[Bucket]:
    import boto3  # the dev extra, as make setup installs it: dvc-s3 and moto[server]
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:  # dvc subprocesses inherit these
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                patch.setenv(name, "testing")
            patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket="imgpipe")
            yield Bucket("imgpipe", endpoint, client)
    finally:
        server.stop()


@dataclass(frozen=True)
class Pushed:
    """A project that ran the pipeline and pushed its results to the S3 bucket."""

    project: Path
    unlocked_rev: str  # the commit before `dvc.lock`: results only in the pushed run-cache
    bucket: Bucket

    def clone(self, name: str, rev: str | None = None) -> Path:
        clone = self.project.parent / name
        run(self.project.parent, "git", "clone", "-q", str(self.project), str(clone))
        if rev is not None:
            run(clone, "git", "checkout", "-q", rev)
        return clone


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path, bucket: Bucket) -> Pushed:
    root = tmp_path_factory.mktemp("shared")
    project = make_project(root / "project", digits_dir)
    dvc(project, "remote", "add", "-d", "shared", f"s3://{bucket.name}/dvc")
    dvc(project, "remote", "modify", "shared", "endpointurl", bucket.endpoint)
    run(project, "git", "commit", "-q", "-am", "shared remote")  # clones get the remote
    unlocked_rev = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert stages_run(dvc(project, "repro").stdout) == set(STAGES)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "results")
    dvc(project, "push", "--run-cache")
    return Pushed(project, unlocked_rev, bucket)


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


def _add_numbered_images(folder: Path, classes: list[str], start: int) -> None:
    """One new image per class, named after the existing ones (numbered exports)."""
    from PIL import Image

    for offset, name in enumerate(classes):
        pixels = np.random.default_rng(start + offset).integers(0, 255, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(folder / name / f"{start + offset:04d}.png")


def _md5s(folder: Path) -> dict[str, str]:
    """md5 (DVC's object key) -> file name, for every file under `folder`."""
    return {hashlib.md5(p.read_bytes()).hexdigest(): p.relative_to(folder).as_posix()
            for p in folder.rglob("*") if p.is_file()}


def test_a_push_after_adding_images_uploads_only_the_shards_they_land_in(
        pushed: Pushed) -> None:
    clone = pushed.clone("clone-grow")
    params = clone / "params.yaml"
    params.write_text(params.read_text().replace("shard_size: 1000", "shard_size: 4"))
    prepared = clone / "data" / "prepared"
    dvc(clone, "repro", "prepare")
    dvc(clone, "push", "prepare")
    before, files_before = pushed.bucket.objects(), _md5s(prepared)
    classes = sorted(p.name for p in (clone / "data" / "tiny").iterdir() if p.is_dir())
    _add_numbered_images(clone / "data" / "tiny", classes, start=9000)
    dvc(clone, "repro", "prepare")
    dvc(clone, "push", "prepare")
    uploaded = {key: size for key, size in pushed.bucket.objects().items()
                if key not in before}
    new_files = {md5: name for md5, name in _md5s(prepared).items() if md5 not in files_before}
    assert len([n for n in files_before.values() if n.endswith(".tar")]) >= 30 // 4
    # Uploaded: the files whose bytes are new, and DVC's listing of the folder (a .dir
    # object); every other shard and shard index is already in the bucket.
    keys = {key.removeprefix("dvc/files/md5/").replace("/", ""): key for key in uploaded}
    listing = [md5 for md5 in keys if md5.endswith(".dir")]
    assert len(listing) == 1 and set(keys) - set(listing) == set(new_files), uploaded
    # Those files: the shards the three images landed in (the last ones, by name), each
    # with its index, and the two small tables; no index of every image.
    tars = sorted(name for name in new_files.values() if name.endswith(".tar"))
    assert 1 <= len(tars) <= 3
    assert sorted(new_files.values()) == sorted(
        ["manifest.csv", "splits.csv", *tars, *(t.replace(".tar", ".csv") for t in tars)])
    prepared_bytes = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file())
    assert sum(uploaded.values()) < 0.5 * prepared_bytes, (uploaded, prepared_bytes)


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
