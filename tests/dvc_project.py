"""A temporary git + DVC copy of the repository, and running commands in it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from repo_copy import copy_repository, git_env
from repo_copy import dvc as dvc  # re-exported: the tests run dvc and commands through here
from repo_copy import run as run

STAGES = ("prepare", "extract", "train_head", "finetune_full", "evaluate")


def dvc_env(project: Path, **extra: str) -> dict[str, str]:
    """The environment `dvc` runs in: this venv first on PATH, git identity, `extra`."""
    return git_env(**extra)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def stages_restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '(\w+)' is cached - skipping run", output))


def make_project(project: Path, digits_dir: Path) -> Path:
    """A git + DVC copy of the repository whose params point at a tiny dataset."""
    shutil.copytree(digits_dir, project / "data" / "tiny")

    def tiny(params: dict) -> None:
        params["data"]["source"] = "data/tiny"
        params["train_head"]["c_grid"] = [0.1, 1.0]
        params["finetune_full"].update(epochs=1, batch_size=8, trainable_blocks=1)

    return copy_repository(project, tiny, "tiny project")


def start_queue(project: Path, jobs: int) -> None:
    """`dvc queue start -j jobs`: returns once the workers are started.

    The workers are detached processes that keep the caller's stdout and stderr open;
    read through pipes, as `run` does, the call would not end before the whole queue.
    """
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                   cwd=project, env=dvc_env(project), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=120)


def queue_statuses(project: Path) -> dict[str, str]:
    """Experiment name (task id when unnamed) -> status, from `dvc queue status`."""
    lines = dvc(project, "queue", "status").stdout.splitlines()
    if not lines or not lines[0].startswith("Task"):
        return {}  # "No experiment tasks in the queue."
    # Left-aligned columns under the header: Task, Name, Created (a time or a date), Status.
    name_at, created_at, status_at = (lines[0].index(h) for h in ("Name", "Created", "Status"))
    statuses = {}
    for line in lines[1:]:
        if not line.strip() or line.startswith("Worker status"):
            continue
        name = line[name_at:created_at].strip() or line[:name_at].strip()
        statuses[name] = line[status_at:].strip()
    return statuses


def wait_for_queue(project: Path, timeout: float = 600.0, poll: float = 5.0,
                   ) -> tuple[dict[str, str], int]:
    """Poll `dvc queue status` until no task is queued or running.

    Returns:
        The final statuses, and the most tasks seen running at once.

    Raises:
        AssertionError: a task is still queued or running after `timeout` seconds.
    """
    deadline, most_running = time.monotonic() + timeout, 0
    while True:
        statuses = queue_statuses(project)
        most_running = max(most_running, sum(s == "Running" for s in statuses.values()))
        if not {"Queued", "Running"} & set(statuses.values()):
            return statuses, most_running
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not done after {timeout:.0f} s: {statuses}")
        time.sleep(poll)


def exp_show(project: Path) -> dict[str, dict]:
    """Experiment name -> {"params": {...}, "metrics": {file: {...}}}, from `dvc exp show`."""
    experiments = {}
    for baseline in json.loads(dvc(project, "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            experiments[experiment["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": {path: entry["data"] for path, entry in data["metrics"].items()}}
    return experiments


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()
