"""A temporary git + DVC copy of the repository, and running commands in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO_ROOT

STAGES = ("prepare", "extract", "train_head", "finetune_full", "evaluate")
_COPIED = ("dvc.yaml", "params.yaml", "src", ".dvc/config", ".dvc/.gitignore", ".gitignore")


def dvc_env(project: Path, **extra: str) -> dict[str, str]:
    """The environment `dvc` runs in: this venv first on PATH, git identity, `extra`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: mlflow.db in the project
    env.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
               DVC_NO_ANALYTICS="1")
    env.update(extra)
    return env


def run(project: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=project, env=dvc_env(project, **(env or {})),
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(project: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", "dvc", *args, check=check, env=env)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def stages_restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '(\w+)' is cached - skipping run", output))


def make_project(project: Path, digits_dir: Path) -> Path:
    """A git + DVC copy of the repository whose params point at a tiny dataset."""
    for name in _COPIED:
        source, target = REPO_ROOT / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    shutil.copytree(digits_dir, project / "data" / "tiny")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "data/tiny"
    params["train_head"]["c_grid"] = [0.1, 1.0]
    params["finetune_full"].update(epochs=1, batch_size=8, trainable_blocks=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "git", "init", "-q")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "tiny project")
    return project
