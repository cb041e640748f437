"""Target 3: incremental caches. After adding k = 1% new images to an N-image dataset,
prepare and extract with the same `cache_dir` should redo only those k.

Uses the stages' `cache_dir` keyword argument (a per-image content-addressed cache).
The full runs are the workspace's runs at N, which started from an empty cache_dir;
the incremental runs use the same cache_dir on the N + k dataset. A stage without
`cache_dir` gets "not available".
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from bench import synth
from bench.child import run_stage
from bench.report import Check, Target
from bench.workspace import DATA_SEED, Workspace, accepts_cache_dir
from imgpipe.cache import file_digest, stored_entries

_logger = logging.getLogger(__name__)
GOAL_SHARE = 0.05  # incremental time / full time
NEW_SHARE = 0.01  # k / N
GOAL_PUSH_SHARE = 0.05  # bytes of the grown data/prepared that are new to DVC / all of it


def new_bytes_share(before: Path, after: Path) -> float:
    """Share of the bytes under `after` in files whose content no file under `before` has:
    what `dvc push` uploads once `before` was pushed (DVC stores files by content hash)."""
    def sizes(folder: Path) -> dict[str, int]:
        return {file_digest(p): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    old, new = sizes(before), sizes(after)
    return sum(size for digest, size in new.items() if digest not in old) / sum(new.values())


def measure(workspace: Workspace, n: int) -> Target:
    """Full prepare and extract (the workspace's), then again on N + k images."""
    k = max(1, round(NEW_SHARE * n))
    target = Target(
        name="incremental_caches",
        goal=f"after adding k = {NEW_SHARE:.0%} of N images, prepare and extract process "
             f"only the k new ones; re-extraction at most {GOAL_SHARE:.0%} of a full one",
        unit="incremental / full",
        checks=[Check("extract ratio", "<=", GOAL_SHARE),
                Check("images processed again", "<=", 2 * k),
                Check("prepared bytes dvc push uploads", "<=", GOAL_PUSH_SHARE)])
    cached = {stage: accepts_cache_dir(stage) for stage in ("prepare", "extract")}
    workspace.features(n)  # the full runs, from an empty cache
    cache_dir, before = workspace.cache_dir(n), stored_entries(workspace.cache_dir(n))
    seconds = _incremental_runs(workspace, n, k, cached) if any(cached.values()) else {}
    for stage in ("extract", "prepare"):
        full = workspace.runs[stage, n].seconds if cached[stage] else None
        again = seconds.get(stage)
        target.add(f"{stage} full", full, "s")
        target.add(f"{stage} incremental", again, "s")
        target.add(f"{stage} ratio", None if full is None else again / full)
    missing = [stage for stage, ok in cached.items() if not ok]
    if missing:
        target.notes.append(f"not available: {' and '.join(missing)} take(s) no `cache_dir` "
                            "keyword argument")
    added = stored_entries(cache_dir) - before
    target.add("images processed again", added if seconds else None, "cache entries added")
    if "prepare" in seconds:
        target.add("prepared bytes dvc push uploads", new_bytes_share(
            workspace.prepared(n), workspace.root / "incremental" / "prepared"), "share")
    target.notes += [
        f"N = {n:,}, k = {k:,} new images. Full: the cost-growth runs at N, which start from "
        "an empty cache_dir; incremental: prepare then extract on the N + k dataset with "
        "that cache_dir and fresh output folders (DVC deletes a stage's outputs before "
        "running it), each in its own process, imports excluded.",
        f"images processed again: entries the incremental runs added to the cache, one per "
        f"image each stage decoded or sent through the network (2 x k = {2 * k} when both "
        "processed only the new images).",
        "prepared bytes dvc push uploads: the share of the grown data/prepared (shards and "
        "index files) in files whose content the first prepare did not write; DVC's cache "
        "and remotes are content-addressed, so that is what `dvc push` moves after pushing "
        "the first version. The new images' names sort after the old ones (img_NNNNNN), as "
        "numbered exports do.",
        "The 5% bar is the issue's, for extraction. prepare's ratio is higher because it still "
        "reads and hashes all N + k source files to find the new ones (the cache is keyed by "
        "content) and writes every shard again from the cache (DVC deletes a stage's "
        "outputs before it runs); it has no time bar.",
    ]
    return target


def _incremental_runs(workspace: Workspace, n: int, k: int,
                      cached: dict[str, bool]) -> dict[str, float]:
    """Seconds of prepare and extract on the grown dataset, for stages that take cache_dir."""
    out = workspace.root / "incremental"
    if out.exists():
        shutil.rmtree(out)
    original = workspace.dataset(n)
    grown = synth.add_images(original, original.with_name(f"n{n}+{k}"),
                             range(workspace.largest, workspace.largest + k), DATA_SEED,
                             workspace.sides)
    calls = {"prepare": workspace.prepare_kwargs(grown, out / "prepared", out / "metrics",
                                                 workspace.cache_dir(n)),
             "extract": workspace.extract_kwargs(out / "prepared", out / "features",
                                                 workspace.cache_dir(n))}
    seconds = {}
    for stage, kwargs in calls.items():
        if stage == "extract" and not cached["extract"]:
            break  # nothing to measure
        _logger.info("incremental: %s on %s ...", stage, grown.name)
        seconds[stage] = run_stage(stage, kwargs, out / "logs", workspace.threads).seconds
        _logger.info("incremental: %s %.1f s", stage, seconds[stage])
    return {stage: s for stage, s in seconds.items() if cached[stage]}
