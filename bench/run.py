"""Benchmark imgpipe's speed and scale on one machine; writes report.json and report.md.

Every goal is judged on ratios measured side by side in one run: absolute times on a
shared machine are noise. Targets (select with --only):

  throughput   default extract (lite0, runtime auto) vs eager lite0 and resnet18 (whole
               stage and network only), share of the matmul roof, bf16 speed and accuracy
  head         train_head on cached features vs one epoch of the naive recipe
  incremental  prepare and extract after adding 1% new images, with cache_dir; the share
               of data/prepared's bytes that dvc push then uploads
  dvc          no-op `dvc repro` at the largest size vs DVC's one-stage no-op
  memory       peak RSS of prepare, extract and train_head, largest size vs smallest
  growth       prepare, extract and train_head wall time and peak RSS, files and disk of
               data/prepared and the cache, at every size (README table)

Example: python bench/run.py --sizes 1000 5000 10000 --out bench/
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]

import torch  # noqa: E402
from scripts.repo_copy import committed_params  # noqa: E402

from bench import bf16_probe, dvc_noop, growth, head, incremental, synth, throughput  # noqa: E402
from bench.report import Target, write_report  # noqa: E402
from bench.workspace import Workspace  # noqa: E402
from imgpipe.params_check import parse_params  # noqa: E402

_logger = logging.getLogger("bench")
TARGETS = ("throughput", "head", "incremental", "dvc", "memory", "growth")
MIN_SIZE = 30  # 10 classes x 3 images: every class needs one image per split
SMALL_SIZE = 32  # --small: prepare.image_size and backbone.input_size, px (the least allowed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000],
                        help="dataset sizes (images); the smallest and largest are compared")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench",
                        help="folder for report.json and report.md")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder, kept (generated datasets are reused from it); "
                             "default: a temporary folder, deleted at the end")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repetitions of each timed comparison (median kept)")
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS),
                        help="targets to run (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--throughput-images", type=int, default=256,
                        help="prepared images each whole-stage extract runs over (throughput)")
    parser.add_argument("--small", action="store_true",
                        help=f"generate {synth.SMALL_SIDES[0]}-{synth.SMALL_SIDES[1]} px images "
                             f"and run prepare and the backbone at {SMALL_SIZE} px (instead of "
                             "160-400 px and the params' sizes), so that 100,000 images fit "
                             "a laptop; the scale figures (files, memory, push) hold, the "
                             "seconds are not the default pipeline's")
    parser.add_argument("--digits-per-class", type=int, default=None,
                        help="digits per class for the bf16 probe (default: all, ~180)")
    args = parser.parse_args(argv)
    if min(args.sizes) < MIN_SIZE or len(set(args.sizes)) != len(args.sizes):
        parser.error(f"--sizes: distinct sizes of at least {MIN_SIZE} images, got {args.sizes}")
    if args.rounds < 1 or args.throughput_images < MIN_SIZE:
        parser.error(f"--rounds must be at least 1, --throughput-images at least {MIN_SIZE}")
    return args


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"load average at start {load}")


def run_targets(args: argparse.Namespace, workspace: Workspace, save) -> None:
    """Run the selected targets in order, saving the report after each one."""
    sizes, small, large = sorted(args.sizes), min(args.sizes), max(args.sizes)
    targets: list[Target] = []
    growth_table = None
    for n in sizes:  # generated first: generation is in no measurement
        workspace.dataset(n)
    if "throughput" in args.only:
        p = workspace.params
        probe = functools.partial(bf16_probe.measure, workspace.root, args.digits_per_class,
                                  p.extract.batch_size, list(p.train_head.c_grid),
                                  p.train_head.max_iter)
        targets.append(throughput.measure(workspace.prepared(args.throughput_images),
                                          workspace.root, p.extract.batch_size, args.rounds,
                                          args.threads, probe))
        save(targets, growth_table)
    if "head" in args.only:
        p = workspace.params
        targets.append(head.measure(
            source=workspace.dataset(small), prepared_dir=workspace.prepared(small),
            features_dir=workspace.features(small), c_grid=list(p.train_head.c_grid),
            max_iter=p.train_head.max_iter, batch_size=p.extract.batch_size,
            rounds=args.rounds, threads=args.threads))
        save(targets, growth_table)
    if "growth" in args.only:
        growth_table = growth.measure_growth(workspace, sizes)
        save(targets, growth_table)
    if "memory" in args.only:
        targets.append(growth.measure_memory(workspace, small, large))
        save(targets, growth_table)
    if "incremental" in args.only:
        targets.append(incremental.measure(workspace, large))
        save(targets, growth_table)
    if "dvc" in args.only:
        targets.append(dvc_noop.measure(workspace, large, args.rounds))
        save(targets, growth_table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    work = args.work or Path(tempfile.mkdtemp(prefix="imgpipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    params = parse_params(committed_params())
    sides = (synth.MIN_SIDE, synth.MAX_SIDE)
    if args.small:
        sides = synth.SMALL_SIDES
        params = replace(params, prepare=replace(params.prepare, image_size=SMALL_SIZE),
                         backbone=replace(params.backbone, input_size=SMALL_SIZE))
    workspace = Workspace(work.resolve(), params, args.threads, max(args.sizes), sides)
    context = {"command": "python " + shlex.join(sys.argv if argv is None else
                                                 ["bench/run.py", *argv]),
               "machine": machine(), "sizes": sorted(args.sizes), "rounds": args.rounds,
               "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "small": args.small}
    started = time.perf_counter()

    def save(targets: list[Target], growth_table: dict | None) -> None:
        context["elapsed_s"] = round(time.perf_counter() - started, 1)
        context["load_average_at_save"] = [round(v, 2) for v in os.getloadavg()]
        json_path, md_path = write_report(args.out, targets, growth_table, context)
        _logger.info("report: %s, %s (%.0f s so far)", json_path, md_path,
                     context["elapsed_s"])

    try:
        run_targets(args, workspace, save)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _logger.info("done in %.0f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
