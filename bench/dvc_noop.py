"""Target 4: a no-op `dvc repro` of the whole pipeline on an N-image dataset, against
DVC's own no-op on a one-stage pipeline, timed alternately in one run.

The one-stage pipeline copies the same N-image folder (`cp -r`): one folder dependency
and one folder output, the least any pipeline over that dataset has DVC check, and the
bar. A one-stage pipeline on one small file (`cp a b`) is timed too, for context: DVC's
start-up cost alone.

The pipeline project is a git + DVC copy of this repository (scripts/repo_copy.py, which
tests/dvc_project.py uses too) with `data.source` pointing at the generated dataset. Its first
`dvc repro` reuses prepare's and extract's outputs from the cost-growth runs when their
params match (`dvc commit` records them in dvc.lock as a repro would) and runs the other
stages; a full repro otherwise.
"""

from __future__ import annotations

import logging
import re
import shutil
import statistics
import time
from pathlib import Path

import yaml
from scripts.repo_copy import copy_repository
from scripts.repo_copy import dvc as _dvc
from scripts.repo_copy import run as _run

from bench.child import REPO_ROOT
from bench.report import Check, Target
from bench.workspace import Workspace
from imgpipe.params_check import Params, load_params

_logger = logging.getLogger(__name__)
GOAL_SECONDS, GOAL_RATIO = 3.0, 1.5


def run(project: Path, *args: str) -> str:
    """Run a command in `project`; its stdout. Raises with the output on failure."""
    return _run(project, *args, timeout=None).stdout


def dvc(project: Path, *args: str) -> str:
    return _dvc(project, *args).stdout


def _git_commit(project: Path, message: str) -> None:
    run(project, "git", "init", "-q")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", message)


def make_pipeline_project(project: Path, source: Path, sizes: Params) -> Path:
    """A git + DVC copy of the repository (committed params) whose data.source is `source`,
    with the image sizes of `sizes` (the benchmark's params: `--small` changes them)."""
    def change(params: dict) -> None:
        params["data"].update(source=str(source), classes=None)
        params["prepare"]["image_size"] = sizes.prepare.image_size
        params["backbone"]["input_size"] = sizes.backbone.input_size

    return copy_repository(project, change, "pipeline project")


def make_baseline_project(project: Path, source: Path | None = None) -> Path:
    """A git + DVC project with one stage: `cp -r source copy`, or `cp a b` without one."""
    project.mkdir(parents=True)
    for name in (".dvc/config", ".dvc/.gitignore"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO_ROOT / name, project / name)
    if source is None:
        (project / "a").write_text("one line\n")
        stage = {"cmd": "cp a b", "deps": ["a"], "outs": ["b"]}
    else:
        stage = {"cmd": f"cp -r {source} copy", "deps": [str(source)], "outs": ["copy"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    _git_commit(project, "one-stage project")
    return project


def reuse_outputs(project: Path, workspace: Workspace, n: int) -> bool:
    """Put the growth runs' prepare and extract outputs into `project` and record them
    with `dvc commit`; False (and nothing recorded) when that is not possible."""
    mine, theirs = workspace.params, load_params(project / "params.yaml")
    if (mine.prepare, mine.backbone, mine.extract) != (
            theirs.prepare, theirs.backbone, theirs.extract):
        _logger.info("dvc: params.yaml changed since the growth runs; no reuse")
        return False
    run_dir = workspace.run_dir(n)
    copies = {workspace.prepared(n): "data/prepared", workspace.features(n): "data/features",
              run_dir / "metrics" / "prepare.json": "metrics/prepare.json",
              run_dir / "metrics" / "prepare_skipped.csv": "metrics/prepare_skipped.csv"}
    for origin, name in copies.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, project / name)
        else:
            shutil.copy2(origin, project / name)
    try:
        dvc(project, "commit", "-f", "prepare", "extract")
    except RuntimeError as error:  # e.g. dvc.yaml declares outputs these runs lack
        _logger.warning("dvc: cannot reuse the growth outputs, full repro instead: %s", error)
        for name in copies.values():
            path = project / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return False
    return True


AFTER_PREPARE = ("extract", "train_head", "finetune_full", "evaluate")


def noop_seconds(project: Path, *targets: str) -> float:
    """Wall time of one `dvc repro` (of `targets` alone, `--single-item`, when given) that
    must run no stage (interpreter start included)."""
    start = time.perf_counter()
    output = dvc(project, "repro", *(("--single-item", *targets) if targets else ()))
    seconds = time.perf_counter() - start
    ran = re.findall(r"Running stage '(\w+)'", output)
    if ran:
        raise RuntimeError(f"the no-op dvc repro in {project} ran {', '.join(ran)}:\n{output}")
    return seconds


def _passes_cache_dir() -> str:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    passing = [name for name in ("prepare", "extract")
               if "cache" in str(stages.get(name, {}).get("cmd", ""))]
    return ("dvc.yaml passes a cache folder to " + " and ".join(passing) if passing
            else "dvc.yaml passes no cache folder to prepare or extract")


def measure(workspace: Workspace, n: int, rounds: int) -> Target:
    target = Target(
        name="dvc_noop",
        goal=f"no-op `dvc repro` on {n:,} images at most {GOAL_SECONDS:g} s and at most "
             f"{GOAL_RATIO:g}x DVC's own no-op on a one-stage pipeline",
        unit="s",
        checks=[Check("pipeline no-op", "<=", GOAL_SECONDS),
                Check("ratio", "<=", GOAL_RATIO)])
    root = workspace.root / "dvc"
    if root.exists():
        shutil.rmtree(root)
    pipeline = make_pipeline_project(root / "pipeline", workspace.dataset(n), workspace.params)
    baselines = {"one-stage": make_baseline_project(root / "one_stage", workspace.dataset(n)),
                 "one-file": make_baseline_project(root / "one_file")}
    reused = reuse_outputs(pipeline, workspace, n)
    _logger.info("dvc: first repro of the pipeline at N=%d%s ...", n,
                 " (prepare and extract reused)" if reused else "")
    start = time.perf_counter()
    dvc(pipeline, "repro")
    first = time.perf_counter() - start
    for project in baselines.values():
        dvc(project, "repro")
    projects = {"pipeline": pipeline, **baselines}
    times: dict[str, list[float]] = {name: [] for name in (*projects, "after prepare")}
    for _ in range(rounds):
        for name, project in projects.items():
            times[name].append(noop_seconds(project))
        times["after prepare"].append(noop_seconds(pipeline, *AFTER_PREPARE))
        _logger.info("dvc no-op: %s", ", ".join(f"{name} {t[-1]:.2f} s"
                                                 for name, t in times.items()))
    median = {name: statistics.median(t) for name, t in times.items()}
    target.add("pipeline no-op", median["pipeline"])
    target.add("one-stage no-op", median["one-stage"])
    target.add("ratio", median["pipeline"] / median["one-stage"], "x")
    target.add("stages after prepare no-op", median["after prepare"])
    target.add("one-file no-op", median["one-file"])
    target.add("ratio to one-file", median["pipeline"] / median["one-file"], "x")
    target.notes += [
        f"`python -m dvc repro` wall time, interpreter start included, {rounds} alternating "
        "run(s) per project, median; each checked to run no stage.",
        "stages after prepare: `dvc repro --single-item " + " ".join(AFTER_PREPARE)
        + "`, what the stages that read data/prepared's index files (not its shards, not "
        "the source) cost DVC to check.",
        f"one-stage: `cp -r` of the same {n:,}-image folder (a folder dependency and a folder "
        "output, as prepare has): the bar. one-file: `cp a b` on a one-line file, DVC's "
        "start-up alone, for context.",
        f"data.source: the generated {n:,}-image folder (outside the project); first repro "
        f"took {first:.0f} s" + (", prepare and extract outputs reused from the cost-growth "
                                 "runs via `dvc commit`" if reused else ", all five stages"),
        _passes_cache_dir() + " (checked at run time).",
    ]
    return target
