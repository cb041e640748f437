"""No-op `dvc repro` with a CSV source: DVC hashes one file, not the N images.

Generates (or reuses) the `--small` dataset of N images under `--work`, writes a
`path,label` CSV beside it, makes a git + DVC copy of the repository with `data.source`
pointing at the CSV and the `--small` sizes, runs the pipeline once, then times the
no-op of the whole pipeline and of the stages after prepare, alternately, `--rounds`
times (median). The issue's bar: the whole no-op under 2 s at 100,000 images.

Example: python bench/csv_noop.py --n 100000 --work /tmp/bench_small
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]

from scripts.repo_copy import committed_params  # noqa: E402

from bench import synth  # noqa: E402
from bench.dvc_noop import AFTER_PREPARE, dvc, make_pipeline_project, noop_seconds  # noqa: E402
from bench.run import SMALL_SIZE  # noqa: E402
from bench.workspace import DATA_SEED  # noqa: E402
from imgpipe.params_check import parse_params  # noqa: E402


def write_csv(dataset: Path) -> Path:
    """`<dataset>.csv` beside the folder, one row per image (paths inside the CSV's folder)."""
    table = dataset.with_suffix(".csv")
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path in sorted(dataset.rglob("*")):
            if path.is_file():
                writer.writerow([f"{dataset.name}/{path.relative_to(dataset)}", path.parent.name])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder, kept")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dataset = synth.make_dataset(args.work / "datasets" / f"n{args.n}", range(args.n),
                                 DATA_SEED, sides=synth.SMALL_SIDES)
    params = parse_params(committed_params())
    params = replace(params, prepare=replace(params.prepare, image_size=SMALL_SIZE),
                     backbone=replace(params.backbone, input_size=SMALL_SIZE))
    project = args.work / "csv_noop" / "pipeline"
    if project.exists():
        raise SystemExit(f"{project} exists: remove it first")
    make_pipeline_project(project, write_csv(dataset), params)
    start = time.perf_counter()
    dvc(project, "repro")
    print(f"first repro: {time.perf_counter() - start:.0f} s", flush=True)
    whole, after = [], []
    for _ in range(args.rounds):
        whole.append(noop_seconds(project))
        after.append(noop_seconds(project, *AFTER_PREPARE))
        print(f"whole {whole[-1]:.2f} s, stages after prepare {after[-1]:.2f} s", flush=True)
    print(f"N = {args.n:,}, CSV source: no-op median {statistics.median(whole):.2f} s, "
          f"stages after prepare {statistics.median(after):.2f} s")


if __name__ == "__main__":
    main()
