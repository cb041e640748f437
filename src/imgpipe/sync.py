"""`python -m imgpipe sync-mlflow`: one MLflow run for every DVC experiment, exactly once.

evaluate logs a run as it runs, but many experiment results never run evaluate in this
repository: a stage DVC restored from its run-cache, an experiment pulled from a remote,
a clone whose committed lock already reproduces. This reads DVC's experiments (its Python
API, `dvc.api.exp_show`) and, for each committed result, makes sure the MLflow experiment
holds one run tagged `dvc_rev=<commit>`:

- a run with that tag exists: nothing to do;
- a live run of the same result exists (same `dvc_result` key: params, model md5 and
  manifest md5, see `run_record.result_key`) and no revision has claimed it yet: it is
  tagged with the revision (adopted), not logged again;
- otherwise a run is logged from the commit's files, the same way evaluate logs one: the
  git-tracked files with `git show`, the DVC outputs (model, the prepared index files)
  through `dvc.api.DVCFileSystem`, left out with a warning when they are in no cache.

Running it twice changes nothing the second time.
"""

from __future__ import annotations

import csv
import logging
import subprocess
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from imgpipe.errors import PipelineError
from imgpipe.manifest import (
    CLASSES_NAME,
    INDEX_NAMES,
    MANIFEST_NAME,
    shard_index,
)
from imgpipe.run_record import (
    ResultPaths,
    build_record,
    from_command,
    per_image_manifest,
    result_key,
)
from imgpipe.tracking import connect, log_run

if TYPE_CHECKING:
    from dvc.api import DVCFileSystem

_logger = logging.getLogger(__name__)
_SKIPPED_STATES = {"Running", "Queued", "Failed"}  # no committed result to record


@dataclass(frozen=True)
class Synced:
    """What sync did with one revision."""

    rev: str
    name: str  # the experiment's name, or the commit's short hash
    action: str  # "exists" | "adopted" | "logged" | "skipped: <why>"
    run_id: str | None = None


def sync_mlflow(repo_root: Path, experiment: str, commits: int = 1) -> list[Synced]:
    """Log the missing runs of the experiments of the last `commits` commits of HEAD.

    Raises:
        PipelineError: DVC cannot list the experiments, or MLflow cannot be written.
    """
    import dvc.api
    import mlflow

    try:
        rows = dvc.api.exp_show(repo=str(repo_root), num=commits)
    except Exception as error:  # DVC raises many kinds; the user needs the one line
        raise PipelineError(f"cannot list the DVC experiments of {repo_root} ({error}); "
                            "run this inside the repository, after `dvc exp run`") from error
    experiment_id = connect(experiment)
    client = mlflow.MlflowClient()
    runs = client.search_runs([experiment_id], max_results=50000)
    done: list[Synced] = []
    adopted: set[str] = set()
    for row in rows:
        if row.get("rev") in (None, "workspace"):
            continue
        rev = _git(repo_root, "rev-parse", row["rev"]).strip()
        name = row.get("Experiment") or row["rev"]  # a commit: its branch or hash
        if row.get("State") in _SKIPPED_STATES:
            done.append(Synced(rev, name, f"skipped: {row['State'].lower()}"))
            continue
        done.append(_sync_one(repo_root, rev, name, bool(row.get("Experiment")), runs,
                              adopted, experiment, client))
        _logger.info("%s %s: %s", rev[:7], name, done[-1].action)
    return done


def _sync_one(repo_root: Path, rev: str, name: str, is_experiment: bool, runs: list,
              adopted: set[str], experiment: str, client: Any) -> Synced:
    claimed = [r for r in runs if r.data.tags.get("dvc_rev") == rev]
    if claimed:
        return Synced(rev, name, "exists", claimed[0].info.run_id)
    lock = yaml.safe_load(_git(repo_root, "show", f"{rev}:dvc.lock", check=False) or "{}")
    evaluate = (lock.get("stages") or {}).get("evaluate")
    if not evaluate:
        return Synced(rev, name, "skipped: evaluate has not run at this revision")
    relative = from_command(evaluate["cmd"])
    md5s = {entry["path"]: entry.get("md5") for entry in evaluate.get("deps", [])}
    params = yaml.safe_load(_git(repo_root, "show", f"{rev}:params.yaml")) or {}
    key = result_key(params, md5s.get(str(relative.model), ""),
                     md5s.get(str(relative.prepared_dir / MANIFEST_NAME), ""))
    live = [r for r in runs if r.data.tags.get("dvc_result") == key
            and "dvc_rev" not in r.data.tags and r.info.run_id not in adopted]
    if live:
        run = _prefer(live, name if is_experiment else None)
        client.set_tag(run.info.run_id, "dvc_rev", rev)
        adopted.add(run.info.run_id)  # another revision of the same result logs anew
        return Synced(rev, name, "adopted", run.info.run_id)
    # An experiment's commit has its baseline as parent; a commit is compared with its own.
    baseline_rev = _git(repo_root, "rev-parse", f"{rev}^", check=False).strip() or None
    baseline = (yaml.safe_load(_git(repo_root, "show", f"{baseline_rev}:params.yaml",
                                    check=False) or "{}") if baseline_rev else None)
    with tempfile.TemporaryDirectory(prefix="imgpipe-sync-") as folder:
        root = Path(folder)
        _export(repo_root, rev, relative, root)
        commit = baseline_rev if is_experiment else rev  # as a live run tags it: HEAD
        record = build_record(
            relative, root, params=params, baseline=baseline, baseline_rev=baseline_rev,
            exp_name=name if is_experiment else None, experiment=experiment, key=key,
            commit=None if is_experiment else rev,
            tags={"dvc_rev": rev, "logged_by": "sync-mlflow",
                  # MLflow fills these from the process that logs: here, this command.
                  "git_commit": commit or rev, "mlflow.source.git.commit": commit or rev,
                  "mlflow.source.name": f"dvc.lock at {rev[:7]}"})
        if not is_experiment:
            record.run_name = f"commit {rev[:7]}" + ("" if record.run_name == "baseline"
                                                     else f": {record.run_name}")
        run_id = log_run(record, required=True)
    return Synced(rev, name, "logged", run_id)


def _prefer(runs: list, exp_name: str | None) -> Any:
    """Of live runs of one result, the one DVC ran under this experiment's name."""
    named = [r for r in runs if r.data.tags.get("dvc_exp_name") == exp_name]
    return (named or runs)[0]


def _export(repo_root: Path, rev: str, relative: ResultPaths, root: Path) -> None:
    """Write the result's files at `rev` under `root`: git's copy, else DVC's."""
    import dvc.api

    wanted = [getattr(relative, f.name) for f in fields(relative)
              if f.name != "prepared_dir" and getattr(relative, f.name) is not None]
    manifest = relative.prepared_dir / MANIFEST_NAME
    dvc_files = dvc.api.DVCFileSystem(str(repo_root), rev=rev)
    try:
        for path in [*wanted, manifest, Path("dvc.lock")]:
            _export_one(repo_root, rev, path, root, dvc_files)
        for name in _index_beside(root / manifest):
            _export_one(repo_root, rev, relative.prepared_dir / name, root, dvc_files)
    finally:
        dvc_files.close()


def _index_beside(manifest: Path) -> list[str]:
    """The prepared folder's other files a run's dataset is read from, by the layout of
    `manifest` (imgpipe.manifest): the split, classes, preprocessing and every shard's
    index; for a commit before the per-shard manifest, the classes only."""
    if not manifest.is_file() or per_image_manifest(manifest):  # the old one is complete
        return [CLASSES_NAME]
    with manifest.open(newline="") as handle:
        shards = [shard_index(row[0]) for row in list(csv.reader(handle))[1:]]
    return [name for name in INDEX_NAMES if name != MANIFEST_NAME] + shards


def _export_one(repo_root: Path, rev: str, path: Path, root: Path,
                dvc_files: DVCFileSystem) -> None:
    """Copy `path` at `rev` under `root`; warn and leave it out when no cache has it."""
    content = _git_bytes(repo_root, rev, path)
    if content is None:
        try:
            content = dvc_files.read_bytes(path.as_posix())
        except Exception as error:  # not in the local cache nor a reachable remote
            _logger.warning("%s at %s: not available (%s); the run goes without it",
                            path, rev[:7], type(error).__name__)
            return
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


def _git(repo_root: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True,
                            timeout=60)
    if check and result.returncode != 0:
        raise PipelineError(f"git {' '.join(args)} failed in {repo_root}: "
                            f"{result.stderr.strip()}")
    return result.stdout if result.returncode == 0 else ""


def _git_bytes(repo_root: Path, rev: str, path: Path) -> bytes | None:
    result = subprocess.run(["git", "show", f"{rev}:{path.as_posix()}"], cwd=repo_root,
                            capture_output=True, timeout=60)
    return result.stdout if result.returncode == 0 else None
