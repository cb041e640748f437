"""A git + DVC copy of this repository, built from committed files: for tests and the bench.

The copy holds the pipeline's code and DVC settings as they are in the working tree (the
code under test) and params.yaml as committed, with the caller's changes: a user's
uncommitted edits (`dvc exp run -S` leaves them in the workspace) never change what a
test or a benchmark runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "src", ".dvc/config", ".dvc/.gitignore", ".dvc/plots_offline.html",
          ".gitignore")


def committed_text(name: str) -> str:
    """A file of the repository as committed at HEAD (as it is, outside a git checkout)."""
    result = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if result.returncode == 0:
        return result.stdout
    return (REPO_ROOT / name).read_text()  # not a git checkout (an sdist)


def committed_params() -> dict[str, Any]:
    """params.yaml as committed, parsed."""
    return yaml.safe_load(committed_text("params.yaml"))


def git_env(name: str = "test", **extra: str) -> dict[str, str]:
    """This environment with this venv first on PATH, a git identity, no DVC analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: mlflow.db in the project
    env.update(GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=f"{name}@example.com",
               GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=f"{name}@example.com",
               DVC_NO_ANALYTICS="1")
    env.update(extra)
    return env


def run(project: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in `project` with `git_env` (and `env` on top), output captured.

    Raises:
        RuntimeError: with `check`, when it exits non-zero; the message holds its output.
    """
    result = subprocess.run(args, cwd=project, env=git_env(**(env or {})),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {project}:\n{result.stdout}\n"
                           f"{result.stderr}")
    return result


def dvc(project: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dvc args...` in `project`, from this venv."""
    return run(project, sys.executable, "-m", "dvc", *args, check=check, env=env)


def copy_repository(project: Path, change_params: Callable[[dict[str, Any]], None],
                    message: str = "project copy") -> Path:
    """Copy the pipeline into `project` with the committed params changed in place by
    `change_params`, and commit it all in a new git repository there."""
    for name in COPIED:
        source, target = REPO_ROOT / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = committed_params()
    change_params(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", *command], cwd=project, env=git_env(), check=True,
                       capture_output=True)
    return project
