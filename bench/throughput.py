"""Target 1: the default extract (efficientnet_lite0, `runtime: auto`) against eager
PyTorch, side by side in one run, on the same files.

- whole stage: `stages.extract.extract` on the same prepared folder, each configuration
  once per round, the order rotating every round; the per-image cache is emptied before
  every run (the exported model stays cached, as on a user's second run);
- network only: each runner (as `load_runner` returns it) on one pre-made
  (B, 3, 224, 224) batch, interleaved batch by batch, the order rotating every batch;
- the roof: a 2-thread float32 matmul's GFLOP/s, measured every round in the same run;
  lite0 needs 0.81 GFLOP per 224 px image (0.41 GMAC);
- decode alone: the prepared images loaded and normalised, no network (what bounds the
  whole stage once the network is fast); and the default whole stage with decoding
  overlapped by a thread (`imgpipe.data.PREFETCH_BATCHES = 2`), to measure what that buys;
- bf16: its speed (network only) and its effect on the probe (bench.bf16_probe).
Medians over rounds.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import imgpipe.data
from bench.report import Check, Target
from imgpipe.backbones import build_backbone, inference_trunk
from imgpipe.data import ImageDataset
from imgpipe.exported import ExportKey
from imgpipe.manifest import read_manifest
from imgpipe.runtimes import check_precision, load_runner
from imgpipe.transforms import eval_transform
from stages.extract import extract

_logger = logging.getLogger(__name__)
LITE, RESNET = "efficientnet_lite0", "resnet18"
SIZE = 224  # pixels, every network
LITE_GFLOP = 0.81  # per 224 px image: 0.41 GMAC x 2
GOAL_VS_RESNET, GOAL_VS_LITE, GOAL_ROOF_SHARE = 3.0, 2.5, 0.40
# whole stage: name -> (backbone, runtime, batches decoded ahead); resnet18 at random
# init (no download)
PREFETCH = imgpipe.data.PREFETCH_BATCHES
OVERLAPPED = "default lite0 (auto), decode overlapped"
STAGE_RUNS = {"default lite0 (auto)": (LITE, "auto", PREFETCH), OVERLAPPED: (LITE, "auto", 2),
              "eager lite0": (LITE, "torch", PREFETCH),
              "eager resnet18": (RESNET, "torch", PREFETCH)}
# network only: name -> (backbone, runtime, precision)
NETWORKS = {"default lite0 (auto)": (LITE, "auto", "f32"),
            "onnxruntime lite0": (LITE, "onnxruntime", "f32"),
            "eager lite0": (LITE, "torch", "f32"),
            "openvino resnet18": (RESNET, "openvino", "f32"),
            "onnxruntime resnet18": (RESNET, "onnxruntime", "f32"),
            "eager resnet18": (RESNET, "torch", "f32"),
            "openvino bf16 lite0": (LITE, "openvino", "bf16")}


def rotated(names: list[str], i: int) -> list[str]:
    return names[i % len(names):] + names[:i % len(names)]


def interleaved(steps: int, rounds: int, names: list[str],
                step: Callable[[str, int], int]) -> dict[str, list[float]]:
    """Images per second of each name in each round; `step(name, i)` runs batch i and
    returns its image count. The name order rotates at every batch."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        seconds, images = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        for i in range(steps):
            for name in rotated(names, i):
                start = time.perf_counter()
                images[name] += step(name, i)
                seconds[name] += time.perf_counter() - start
        for name in names:
            rates[name].append(images[name] / seconds[name])
    return rates


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """A float32 (n x n) @ (n x n) matmul on `threads` threads: the best of `repeats`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _runners(batch_size: int) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """Each network as extract runs it; names that cannot run here (bf16 without the
    instructions, a missing runtime) are left out and returned with the reason."""
    backbones = {LITE: build_backbone(LITE), RESNET: build_backbone(RESNET, pretrained=False)}
    runners, missing = {}, []
    for name, (backbone, runtime, precision) in NETWORKS.items():
        key = ExportKey(backbone, backbone == LITE, None, batch_size, SIZE)
        try:
            check_precision(runtime, precision)
            _, runners[name] = load_runner(runtime, precision,
                                           inference_trunk(backbones[backbone]), key, None,
                                           torch.device("cpu"))
        except Exception as error:  # reported in the notes, its figures stay empty
            missing.append(f"{name}: {error}")
    for runner in runners.values():
        runner.eval().to(memory_format=torch.channels_last)
    return runners, missing


def measure(prepared_dir: Path, work: Path, batch_size: int, rounds: int, threads: int,
            bf16_probe: Callable[[], dict[str, float | None]]) -> Target:
    """Every figure of the target; `bf16_probe()` returns the probe's accuracies."""
    torch.set_num_threads(threads)
    target = Target(
        name="extraction_throughput",
        goal=f"default extract (lite0, runtime auto) at least {GOAL_VS_RESNET:g}x eager "
             f"resnet18 and {GOAL_VS_LITE:g}x eager lite0 (whole stage); lite0 network-only "
             f"at least {GOAL_ROOF_SHARE:.0%} of the matmul roof; {SIZE} px, {threads} threads",
        unit="x",
        checks=[Check("whole-stage speedup vs eager resnet18", ">=", GOAL_VS_RESNET),
                Check("whole-stage speedup vs eager lite0", ">=", GOAL_VS_LITE),
                Check("network-only lite0 share of roof", ">=", GOAL_ROOF_SHARE)])
    load_before = os.getloadavg()[0]
    count = len(read_manifest(prepared_dir, "train")) + sum(
        len(read_manifest(prepared_dir, split)) for split in ("val", "test"))

    runners, missing = _runners(batch_size)
    batch = torch.randn(batch_size, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    batch = batch.contiguous(memory_format=torch.channels_last)

    def network(name: str, _: int) -> int:
        with torch.inference_mode():
            runners[name](batch)
        return batch_size

    for name in runners:
        network(name, 0)  # warm-up: first calls pick and cache kernels
    roofs = []
    net_rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):  # the roof once per round, between the network rounds
        roofs.append(matmul_gflops(threads))
        torch.set_num_threads(threads)
        for name, rates in interleaved(4, 1, list(runners), network).items():
            net_rates[name] += rates
    roof = statistics.median(roofs)
    net = {name: statistics.median(net_rates[name]) if name in net_rates else None
           for name in NETWORKS}
    stage = _whole_stage(prepared_dir, work, batch_size, rounds, count)
    decode = _decode_rate(prepared_dir, batch_size, rounds)

    default = "default lite0 (auto)"
    target.add(f"whole-stage {default}", stage[default], "images/s")
    target.add(f"whole-stage {OVERLAPPED}", stage[OVERLAPPED], "images/s")
    target.add("whole-stage speedup from overlapping decode", stage[OVERLAPPED] / stage[default])
    target.add("whole-stage eager lite0", stage["eager lite0"], "images/s")
    target.add("whole-stage eager resnet18", stage["eager resnet18"], "images/s")
    target.add("whole-stage speedup vs eager resnet18", stage[default] / stage["eager resnet18"])
    target.add("whole-stage speedup vs eager lite0", stage[default] / stage["eager lite0"])
    for name, value in net.items():
        target.add(f"network-only {name}", value, "images/s")
    target.add("network-only speedup vs eager resnet18", net[default] / net["eager resnet18"])
    target.add("network-only speedup vs eager lite0", net[default] / net["eager lite0"])
    target.add("matmul roof", roof, "GFLOP/s")
    target.add("network-only lite0 share of roof", net[default] * LITE_GFLOP / roof, "share")
    target.add("decode and normalise alone", decode, "images/s")
    bf16 = net["openvino bf16 lite0"]
    target.add("network-only bf16 speedup vs f32", bf16 and bf16 / net[default])
    for name, value in bf16_probe().items():
        target.add(name, value, "accuracy" if "accuracy" in name else "")
    target.notes += [
        f"whole stage: stages.extract.extract over the same {count} prepared images "
        f"(224 px), batch {batch_size}, per-image cache emptied before each run, the exported "
        f"model kept (a second extract); {rounds} round(s), configuration order rotating; "
        "median images/s. resnet18 at random init (no download): the same arithmetic.",
        f"network only: 4 batches of {batch_size} pre-made tensors per runner per round, "
        "interleaved batch by batch; median images/s. default = OpenVINO f32 (auto's pick).",
        f"roof: best of 5 float32 2048x2048 matmuls on {threads} threads, median over rounds; "
        f"share = network-only images/s x {LITE_GFLOP} GFLOP / roof.",
        "decode alone: the prepared images through ImageDataset (PIL decode, eval transform), "
        "no network: serially, the whole stage cannot beat 1 / (1/decode + 1/network). "
        "decode overlapped: the default stage with a thread decoding 2 batches ahead "
        f"(imgpipe.data.PREFETCH_BATCHES; extract's default is {PREFETCH}).",
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        *(f"not measured: {reason}" for reason in missing),
    ]
    return target


def _whole_stage(prepared_dir: Path, work: Path, batch_size: int, rounds: int,
                 count: int) -> dict[str, float]:
    names = list(STAGE_RUNS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up: exports into the cache
        for name in rotated(names, r):
            backbone, runtime, prefetch = STAGE_RUNS[name]
            cache = work / "stage_cache" / f"{backbone}_{runtime}"  # the export is shared
            shutil.rmtree(cache / "features", ignore_errors=True)
            imgpipe.data.PREFETCH_BATCHES = prefetch
            try:
                seconds = _timed(functools.partial(
                    extract, prepared_dir=prepared_dir, features_dir=work / "stage_features",
                    backbone_name=backbone, pretrained=backbone == LITE, weights=None,
                    batch_size=batch_size, cache_dir=cache, runtime=runtime))
            finally:
                imgpipe.data.PREFETCH_BATCHES = PREFETCH
            if r:
                rates[name].append(count / seconds)
    _logger.info("whole stage: %s", rates)
    return {name: statistics.median(values) for name, values in rates.items()}


def _decode_rate(prepared_dir: Path, batch_size: int, rounds: int) -> float:
    backbone = build_backbone(LITE)
    transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    files = list(read_manifest(prepared_dir, "train")["image"])
    loader = DataLoader(ImageDataset(files, [0] * len(files), transform),
                        batch_size=batch_size)
    return statistics.median(len(files) / _timed(lambda: [None for _ in loader])
                             for _ in range(rounds))
