"""Cost growth (the README table) and target 5, memory flat in N, from the same runs:
prepare, extract and train_head at each size, each in a fresh process (bench.child)."""

from __future__ import annotations

from pathlib import Path

from bench.report import Check, Target
from bench.workspace import Workspace

GROWTH_STAGES = ("prepare", "extract", "train_head")
MEMORY_STAGES = ("prepare", "extract", "train_head")
GOAL_RATIO = 1.5  # peak RSS at the largest N / at the smallest


def measure_growth(workspace: Workspace, sizes: list[int]) -> dict:
    """Wall time and peak RSS of each stage at each size, smallest size first."""
    for n in sorted(sizes):
        workspace.head(n)  # runs prepare and extract first
    return {
        "sizes": sorted(sizes),
        "seconds": {stage: {str(n): workspace.runs[stage, n].seconds for n in sorted(sizes)}
                    for stage in GROWTH_STAGES},
        "peak_rss_mb": {stage: {str(n): workspace.runs[stage, n].peak_rss_mb
                                for n in sorted(sizes)} for stage in GROWTH_STAGES},
        "files": {"data/prepared": {str(n): _files(workspace.prepared(n)) for n in sizes},
                  ".cache/imgpipe": {str(n): _files(workspace.cache_dir(n)) for n in sizes}},
        "disk_mb": {"data/prepared": {str(n): _mib(workspace.prepared(n)) for n in sizes},
                    ".cache/imgpipe": {str(n): _mib(workspace.cache_dir(n)) for n in sizes},
                    "source": {str(n): _mib(workspace.dataset(n)) for n in sizes}},
        "notes": "each stage function in a fresh Python process (imports excluded from the "
                 "time, included in the memory), params.yaml defaults, an empty per-image "
                 "cache_dir when the stage takes one (as dvc.yaml passes it); synthetic "
                 f"ImageFolder of {workspace.sides[0]}-{workspace.sides[1]} px JPEGs and PNGs "
                 f"in 10 classes, prepared at {workspace.params.prepare.image_size} px",
    }


def _files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure_memory(workspace: Workspace, small: int, large: int) -> Target:
    """Peak RSS of prepare, extract and train_head at `large` images over that at `small`."""
    target = Target(
        name="memory",
        goal=f"peak RSS of prepare, extract and train_head at N = {large:,} at most "
             f"{GOAL_RATIO:g}x the peak at N = {small:,}",
        unit="x",
        checks=[Check(f"{stage} ratio", "<=", GOAL_RATIO) for stage in MEMORY_STAGES])
    for n in (small, large):
        workspace.head(n)  # runs prepare and extract first
    for stage in MEMORY_STAGES:
        peaks = [workspace.runs[stage, n].peak_rss_mb for n in (small, large)]
        target.add(f"{stage} peak at {small:,}", peaks[0], "MiB")
        target.add(f"{stage} peak at {large:,}", peaks[1], "MiB")
        target.add(f"{stage} ratio", peaks[1] / peaks[0])
    target.notes.append("peak resident set size (VmHWM) of the fresh process running the "
                        "stage function, interpreter and imports included: what the stage "
                        "costs as `dvc repro` runs it. Not ru_maxrss: Linux carries the "
                        "parent's peak into a child across fork and exec.")
    return target
