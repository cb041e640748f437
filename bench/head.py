"""Target 2: the train_head stage on cached features against one epoch of the naive recipe.

The naive recipe is the PyTorch transfer-learning tutorial's "ConvNet as fixed feature
extractor": every backbone parameter frozen, a new final nn.Linear trained with SGD
(lr 1e-3, momentum 0.9), the training images decoded, augmented and sent through the
backbone again in every epoch. Same data as the stage: the train split of the prepared
manifest, read from the source files as the tutorial's ImageFolder would.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from bench.report import Check, Target
from imgpipe.backbones import Backbone, build_backbone
from imgpipe.data import ImageDataset
from imgpipe.features import load_split
from imgpipe.manifest import read_classes, read_manifest
from imgpipe.probe import fit_linear_probe
from stages.train_head import train_head

_logger = logging.getLogger(__name__)
GOAL_SPEEDUP = 100.0  # one naive epoch / the whole train_head stage


def naive_epoch(backbone: Backbone, files: list[Path], labels: list[int], num_classes: int,
                batch_size: int) -> float:
    """Seconds of one training epoch of the tutorial's recipe on these images.

    Kinder to the baseline than the tutorial, so the speedup is a lower bound: batches
    of `batch_size` (the tutorial: 4), channels_last, and the backbone in eval mode.
    """
    torch.manual_seed(0)
    trunk = backbone.trunk.eval().to(memory_format=torch.channels_last)
    trunk.requires_grad_(False)
    fc = nn.Linear(backbone.feature_dim, num_classes)
    optimizer = torch.optim.SGD(fc.parameters(), lr=1e-3, momentum=0.9)
    transform = T.Compose([T.RandomResizedCrop(backbone.input_size), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(backbone.mean, backbone.std)])
    loader = DataLoader(ImageDataset(files, labels, transform), batch_size=batch_size,
                        shuffle=True)
    start = time.perf_counter()
    for images, targets in loader:
        optimizer.zero_grad()
        logits = fc(trunk(images.contiguous(memory_format=torch.channels_last)))
        F.cross_entropy(logits, targets).backward()
        optimizer.step()
    return time.perf_counter() - start


def _stage_seconds(features_dir: Path, c_grid: list[float], max_iter: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        start = time.perf_counter()
        train_head(features_dir=features_dir, head_path=out / "head.pt",
                   metrics_path=out / "train_head.json", sweep_path=out / "sweep.csv",
                   c_grid=c_grid, max_iter=max_iter)
        return time.perf_counter() - start


def _core_seconds(features_dir: Path, c_grid: list[float], max_iter: int) -> float:
    train, val = load_split(features_dir, "train"), load_split(features_dir, "val")
    classes = read_classes(features_dir)
    start = time.perf_counter()
    fit_linear_probe(train, val, len(classes), c_grid, max_iter)
    return time.perf_counter() - start


def measure(*, source: Path, prepared_dir: Path, features_dir: Path, c_grid: list[float],
            max_iter: int, batch_size: int, rounds: int, threads: int) -> Target:
    """Alternate stage, core and one naive epoch, `rounds` times; medians."""
    torch.set_num_threads(threads)
    target = Target(
        name="head_training",
        goal=f"train_head on cached features at least {GOAL_SPEEDUP:g}x faster than one "
             "epoch of the naive recipe (frozen backbone, images through it every epoch)",
        unit="x",
        checks=[Check("speedup (stage)", ">=", GOAL_SPEEDUP)])
    table = read_manifest(prepared_dir, "train")
    files = [source / relpath for relpath in table["source"]]
    labels = [int(i) for i in table["label_index"]]
    num_classes = len(read_classes(prepared_dir))
    backbone = build_backbone("efficientnet_lite0")
    times: dict[str, list[float]] = {"stage": [], "core": [], "naive": []}
    for round_ in range(rounds):
        times["stage"].append(_stage_seconds(features_dir, c_grid, max_iter))
        times["core"].append(_core_seconds(features_dir, c_grid, max_iter))
        times["naive"].append(naive_epoch(backbone, files, labels, num_classes, batch_size))
        _logger.info("head round %d: stage %.2f s, fit_linear_probe %.2f s, naive epoch %.1f s",
                     round_ + 1, times["stage"][-1], times["core"][-1], times["naive"][-1])
    median = {name: statistics.median(t) for name, t in times.items()}
    target.add("naive epoch", median["naive"], "s")
    target.add("train_head stage", median["stage"], "s")
    target.add("fit_linear_probe", median["core"], "s")
    target.add("speedup (stage)", median["naive"] / median["stage"])
    target.add("speedup (fit_linear_probe)", median["naive"] / median["core"])
    target.notes += [
        f"{len(files)} train images, {num_classes} classes; c_grid {c_grid} "
        f"({len(c_grid)} fits), max_iter {max_iter}, as in params.yaml; {rounds} round(s), "
        "median.",
        "train_head stage: the whole stages.train_head.train_head call (load features, "
        "sweep, save head, metrics and sweep files); fit_linear_probe: the sweep alone.",
        "naive epoch: efficientnet_lite0 with its ImageNet weights, source files decoded, "
        f"RandomResizedCrop + flip, batches of {batch_size}, channels_last, backbone in eval "
        "mode (the tutorial: batches of 4, train mode); no validation pass counted.",
        "Extraction, which the cached features need once, is not counted on either side.",
    ]
    return target
