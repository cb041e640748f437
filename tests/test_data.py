"""The batched forward pass: decoding prefetched by a thread gives the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import imgpipe.data
from imgpipe.data import forward_all
from imgpipe.transforms import eval_transform


def test_forward_all_gives_the_same_bytes_with_and_without_prefetching(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(7):  # two batches of 3 and a padded one
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(files[-1])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    transform = eval_transform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    outputs = {}
    for depth in (0, 2):
        monkeypatch.setattr(imgpipe.data, "PREFETCH_BATCHES", depth)
        outputs[depth] = forward_all(module, files, transform, 3, "t", pad_last=True)
    assert outputs[0].shape == (7, 4)
    assert outputs[0].tobytes() == outputs[2].tobytes()


class _Recorder(nn.Module):
    """Records the memory layout of each batch it is given."""

    input_memory_format = torch.contiguous_format

    def __init__(self) -> None:
        super().__init__()
        self.channels_last: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.channels_last.append(images.is_contiguous(memory_format=torch.channels_last))
        return images.mean(dim=(2, 3))


def test_forward_all_gives_a_module_the_layout_it_asks_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    files = [tmp_path / f"{i}.png" for i in range(4)]
    for file in files:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(file)
    transform = eval_transform(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    runner = _Recorder()
    forward_all(runner, files, transform, 2, "t")
    assert runner.channels_last == [False, False]  # plain (B, 3, S, S), as runtimes take
    torch_module = nn.Sequential(nn.Identity())
    seen = []
    torch_module.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    forward_all(torch_module, files, transform, 2, "t")
    assert seen == [True, True]  # eager PyTorch: channels-last, faster on CPU
