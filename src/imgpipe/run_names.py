"""What tells one MLflow run from another: its name, its description, what changed.

A reviewer scanning twenty runs needs `partial` or `freeze=partial, finetune_full.lr=0.001`,
not `whimsical-tern-747`: the DVC experiment's name when there is one, else the params
that differ from the committed baseline, else `baseline`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from imgpipe.params import flatten

_NAME_LIMIT = 120  # characters: longer names are cut, the description has every change
_MISSING = object()


def changed_params(params: Mapping[str, Any], baseline: Mapping[str, Any],
                   ) -> dict[str, tuple[Any, Any]]:
    """Flattened key -> (baseline value, value), for every key whose value differs.

    Both are nested params.yaml dicts; a key present on one side only counts as changed,
    its missing side given as None.
    """
    new, old = flatten(dict(params)), flatten(dict(baseline))
    changes = {}
    for key in sorted(new.keys() | old.keys()):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before != after:
            changes[key] = (None if before is _MISSING else before,
                            None if after is _MISSING else after)
    return changes


def run_name(exp_name: str | None, changes: Mapping[str, tuple[Any, Any]]) -> str:
    """The experiment's name, else `key=value, ...` of the changes, else `baseline`."""
    if exp_name:
        return exp_name
    if not changes:
        return "baseline"
    name = ", ".join(f"{key}={_short(after)}" for key, (_, after) in changes.items())
    return name if len(name) <= _NAME_LIMIT else name[:_NAME_LIMIT - 1] + "…"


def describe(exp_name: str | None, baseline_rev: str | None,
             changes: Mapping[str, tuple[Any, Any]], commit: str | None = None) -> str:
    """Markdown for the run's description (MLflow's `mlflow.note.content` tag).

    `commit`: the run is the result committed there, `baseline_rev` being its parent.
    """
    where = f"commit `{baseline_rev[:7]}`" if baseline_rev else "the committed params.yaml"
    if exp_name:
        head = f"DVC experiment `{exp_name}`, on {where}."
    elif commit:
        head = f"Result committed in `{commit[:7]}`, compared with its parent, {where}."
    else:
        head = f"Pipeline run on {where}."
    if not changes:
        return f"{head}\n\nParams: the same as {where}."
    lines = [f"- `{key}`: {_short(before)} → {_short(after)}"
             for key, (before, after) in changes.items()]
    return "\n".join([head, "", f"Params changed from {where}:", *lines])


def committed_params(repo_root: Path, rev: str = "HEAD") -> dict[str, Any] | None:
    """params.yaml as committed at `rev` in the git repository at `repo_root`; None when
    there is no such commit or file (a repository without commits, no git)."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:params.yaml"], cwd=repo_root,
                              capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return yaml.safe_load(text) or {}


def _short(value: Any) -> str:
    return "null" if value is None else str(value)
