"""Prepared images as a torch Dataset, and batched forward passes over them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgpipe.images import load_prepared
from imgpipe.transforms import Transform


class ImageDataset(Dataset):
    """(image tensor, label) pairs from prepared image files."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], transform: Transform):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_prepared(self.files[index])), self.labels[index]


def forward_all(module: nn.Module, files: Sequence[str], transform: Transform,
                batch_size: int, desc: str) -> np.ndarray:
    """Run `module` in eval mode over the images, in order: (N, K) float32 outputs.

    Channels-last memory layout: 2 to 2.5x faster on CPU for depthwise convolutions.
    """
    loader = DataLoader(ImageDataset(files, [0] * len(files), transform),
                        batch_size=batch_size, shuffle=False)
    module.eval().to(memory_format=torch.channels_last)
    outputs = []
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc=desc, unit="batch", mininterval=2.0,
                              disable=len(loader) < 2):
            outputs.append(module(images.contiguous(memory_format=torch.channels_last)))
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).float().numpy()
