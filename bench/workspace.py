"""The benchmark's scratch folder: datasets and stage outputs per size, built on demand.

Every target asks the workspace for what it needs (`prepared(1000)`, `features(10000)`);
each stage runs at most once per size, in its own process (bench.child), and its wall
time and peak memory are kept for the cost-growth table, the memory target and the
incremental target. The stages are called as `dvc repro` calls them: with a per-image
cache folder when they take one (dvc.yaml passes `--cache-dir`), empty at first, one
per size so that no size reuses another's work.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench import synth
from bench.child import StageRun, run_stage
from imgpipe.params_check import Params

_logger = logging.getLogger(__name__)
DATA_SEED = 0  # seeds every generated image


def accepts_cache_dir(stage: str) -> bool:
    """Whether `stages.<stage>.<stage>` takes a `cache_dir` keyword argument."""
    function = getattr(importlib.import_module(f"stages.{stage}"), stage)
    return "cache_dir" in inspect.signature(function).parameters


@dataclass
class Workspace:
    root: Path
    params: Params  # the pipeline's defaults (params.yaml): what each stage is called with
    threads: int  # torch threads in every process that runs a network
    largest: int  # the largest dataset: smaller ones are its first images, hard-linked
    sides: tuple[int, int] = (synth.MIN_SIDE, synth.MAX_SIDE)  # generated images' sides, px
    runs: dict[tuple[str, int], StageRun] = field(default_factory=dict)

    def dataset(self, n: int) -> Path:
        """The ImageFolder of images 0..n-1."""
        full = synth.make_dataset(self.root / "datasets" / f"n{self.largest}",
                                  range(self.largest), DATA_SEED, sides=self.sides)
        if n == self.largest:
            return full
        return synth.make_dataset(self.root / "datasets" / f"n{n}", range(n), DATA_SEED,
                                  link_from=full, sides=self.sides)

    def run_dir(self, n: int) -> Path:
        return self.root / "runs" / f"n{n}"

    def cache_dir(self, n: int) -> Path:
        """The per-image cache the size-n runs filled (from empty)."""
        return self.run_dir(n) / "cache"

    def prepared(self, n: int) -> Path:
        out_dir = self.run_dir(n) / "prepared"
        if ("prepare", n) not in self.runs:
            # From an empty cache, even when --work kept an earlier run's: the full runs
            # are the baseline of the incremental target.
            shutil.rmtree(self.cache_dir(n), ignore_errors=True)
            self._run("prepare", n, self.prepare_kwargs(self.dataset(n), out_dir,
                                                        self.run_dir(n) / "metrics",
                                                        self.cache_dir(n)))
        return out_dir

    def features(self, n: int) -> Path:
        features_dir = self.run_dir(n) / "features"
        if ("extract", n) not in self.runs:
            self._run("extract", n, self.extract_kwargs(self.prepared(n), features_dir,
                                                        self.cache_dir(n)))
        return features_dir

    def head(self, n: int) -> Path:
        head_path = self.run_dir(n) / "head.pt"
        if ("train_head", n) not in self.runs:
            self._run("train_head", n, self.train_head_kwargs(self.features(n), head_path))
        return head_path

    def _run(self, stage: str, n: int, kwargs: dict) -> StageRun:
        _logger.info("%s at N=%d ...", stage, n)
        run = run_stage(stage, kwargs, self.run_dir(n) / "logs", self.threads)
        self.runs[stage, n] = run
        _logger.info("%s at N=%d: %.1f s, peak RSS %.0f MiB", stage, n, run.seconds,
                     run.peak_rss_mb)
        return run

    def prepare_kwargs(self, source: Path, out_dir: Path, metrics_dir: Path,
                       cache_dir: Path) -> dict:
        """prepare's arguments as the pipeline passes them (metrics files in `metrics_dir`).

        data.classes is left out: the synthetic classes are not the configured ones.
        """
        p = self.params
        kwargs = dict(source=source, out_dir=out_dir,
                      metrics_path=metrics_dir / "prepare.json",
                      report_path=metrics_dir / "prepare_skipped.csv", seed=p.prepare.seed,
                      val_fraction=p.prepare.val_fraction,
                      test_fraction=p.prepare.test_fraction, image_size=p.prepare.image_size,
                      shard_size=p.prepare.shard_size, on_error=p.prepare.on_error)
        return self._with_cache("prepare", kwargs, cache_dir)

    def extract_kwargs(self, prepared_dir: Path, features_dir: Path, cache_dir: Path) -> dict:
        p = self.params
        kwargs = dict(prepared_dir=prepared_dir, features_dir=features_dir,
                      backbone_name=p.backbone.name, pretrained=p.backbone.pretrained,
                      weights=p.backbone.weights, batch_size=p.extract.batch_size,
                      input_size=p.backbone.input_size)
        return self._with_cache("extract", kwargs, cache_dir)

    @staticmethod
    def _with_cache(stage: str, kwargs: dict, cache_dir: Path) -> dict:
        return {**kwargs, "cache_dir": cache_dir} if accepts_cache_dir(stage) else kwargs

    def train_head_kwargs(self, features_dir: Path, head_path: Path) -> dict:
        p = self.params
        return dict(features_dir=features_dir, head_path=head_path,
                    metrics_path=head_path.with_name("train_head.json"),
                    sweep_path=head_path.with_name("train_head_sweep.csv"),
                    c_grid=list(p.train_head.c_grid), max_iter=p.train_head.max_iter)
