"""Partial fine-tuning without running the frozen blocks every epoch.

With `freeze=partial` the leading blocks are frozen and in eval mode (BatchNorm on its
running statistics), so they map an image to the same activations in every epoch. Their
outputs are computed once per image and view, kept in memory, and each epoch trains
only the trainable tail on them: for lite0's last 3 blocks at 224 px the tail is about
a sixth of a forward pass, and val passes shrink the same way.

Augmentation makes views differ: `views` augmented views of each train image are drawn
once (seeded, so a resumed run draws the same ones) and epoch e trains on view
(e - 1) mod `views`. With augmentation off one view serves every epoch. Same model as
running the whole network each epoch, but for which random views it sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from imgpipe.backbones import Backbone
from imgpipe.data import ImageDataset
from imgpipe.efficientnet_lite import EfficientNetLite, fold_batchnorm
from imgpipe.finetune import to_device
from imgpipe.model import ImageClassifier

_logger = logging.getLogger(__name__)
# Above this many bytes of cached activations the run keeps the uncached path.
MEMORY_LIMIT_BYTES = 6 * 2**30


class _LitePrefix(nn.Module):
    """Stem and the first `count` MBConv blocks of an EfficientNet-Lite trunk."""

    def __init__(self, net: EfficientNetLite, count: int) -> None:
        super().__init__()
        self.net, self.count = net, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, C, h, w)
        x = self.net.activation(self.net._bn0(self.net._conv_stem(x)))
        for block in self.net._blocks[:self.count]:
            x = block(x)
        return x


class _LiteTail(nn.Module):
    """The remaining blocks, head convolution and pooling: maps -> (B, 1280) features."""

    def __init__(self, net: EfficientNetLite, count: int) -> None:
        super().__init__()
        self.net, self.count = net, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net._blocks[self.count:]:
            x = block(x)
        x = self.net.activation(self.net._bn1(self.net._conv_head(x)))
        return x.mean(dim=(2, 3))


class TailClassifier(nn.Module):
    """tail + head of a classifier: cached prefix maps (B, C, h, w) -> logits (B, classes).

    It shares every parameter with the full model, so training it trains that model.
    """

    def __init__(self, tail: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.tail, self.head = tail, head

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(maps))


def _split_lite(trunk: EfficientNetLite, frozen_blocks: int) -> tuple[nn.Module, nn.Module]:
    count = min(frozen_blocks - 1, len(trunk._blocks))  # MBConv blocks after the stem
    # The prefix never trains: a copy with BatchNorm folded into its convolutions computes
    # the maps about 1.4x as fast (to float32 rounding, like extract's).
    return _LitePrefix(fold_batchnorm(trunk), count), _LiteTail(trunk, count)


# Backbone family key -> (trunk, frozen blocks) -> (prefix, tail) with
# tail(prefix(x)) == trunk(x), the prefix made of the first `frozen blocks` of
# `Backbone.blocks`. The one family-specific piece fine-tuning needs, kept here (not in
# the Family registration) so that it stays out of extract's code and cache key. A family
# missing here runs its frozen blocks every epoch.
SPLITS: dict[str, Callable[[nn.Module, int], tuple[nn.Module, nn.Module]]] = {
    "efficientnet_lite": _split_lite,
}


def split(model: ImageClassifier, backbone: Backbone,
          frozen_blocks: int) -> tuple[nn.Module, TailClassifier] | None:
    """(prefix, tail classifier) with tail(prefix(x)) == model(x) (to float32 rounding),
    or None. The tail shares the model's parameters; the prefix may be an eval-mode copy
    of the frozen blocks as they are now (for computing the maps once, not for training).

    `frozen_blocks` counts `backbone.blocks` from the input (the stem is block 0). None
    where this family's trunk cannot be split (see `SPLITS`) or nothing is frozen: the
    caller then runs the whole network every epoch.
    """
    split_trunk = SPLITS.get(backbone.family)
    if split_trunk is None or frozen_blocks < 1:
        return None
    prefix, tail = split_trunk(model.trunk, frozen_blocks)
    return prefix, TailClassifier(tail, model.head)


class ViewMaps(Dataset):
    """(cached prefix maps, label) pairs; `set_epoch` picks which view the epoch reads."""

    def __init__(self, views: list[torch.Tensor], labels: list[int]) -> None:
        self.views, self.labels, self.view = views, list(labels), 0

    def set_epoch(self, epoch: int) -> None:
        self.view = (epoch - 1) % len(self.views)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.views[self.view][index], self.labels[index]


def prefix_maps(prefix: nn.Module, dataset: ImageDataset, batch_size: int,
                device: torch.device, seed: int | None = None) -> torch.Tensor:
    """The prefix's outputs for every item of `dataset`, in order: (N, C, h, w) float32.

    With `seed`, the dataset's random transform is seeded with it first, so the same seed
    draws the same views.
    """
    prefix.eval()
    if seed is not None:
        torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        return torch.cat([prefix(to_device(images, device)).cpu() for images, _ in loader])


def map_bytes(prefix: nn.Module, input_size: int, images: int, device: torch.device) -> int:
    """Bytes that `images` cached maps take (one probe image through the prefix)."""
    with torch.inference_mode():
        shape = prefix.eval()(torch.zeros(1, 3, input_size, input_size, device=device)).shape
    return images * shape.numel() * 4
