"""Images as a torch Dataset, and the one batched forward pass that extract, evaluate and
predict share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgpipe import distributed
from imgpipe.distributed import Ranks
from imgpipe.prefetch import prefetched
from imgpipe.shards import load_prepared
from imgpipe.transforms import Transform

# Batches decoded ahead of the network by a background thread in forward_all; 0 decodes
# each batch when the network asks for it. 0 because the overlap did not pay on 2 cores:
# the decode thread competes with the runtime's own threads (bench/throughput.py measures
# both; README, Extraction runtimes).
PREFETCH_BATCHES = 0


class ImageDataset(Dataset):
    """(image tensor, label) pairs; `load` opens an item (by default a ShardMember: a
    prepared image in its shard)."""

    def __init__(self, items: Sequence[Any], labels: Sequence[int], transform: Transform,
                 load: Callable[[Any], Image.Image] = load_prepared):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.items = list(items)
        self.labels = list(labels)
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(self.items[index])), self.labels[index]


def forward_all(module: nn.Module, items: Sequence[Any], transform: Transform,
                batch_size: int, desc: str,
                load: Callable[[Any], Image.Image] = load_prepared,
                device: torch.device | None = None, pad_last: bool = False) -> np.ndarray:
    """Run `module` in eval mode over the images, in order: (N, K) float32 outputs.

    With `PREFETCH_BATCHES` above 0, that many batches are decoded ahead by a background
    thread while the network runs (same batches, same order, so the same outputs).
    Channels-last memory layout: 2 to 2.5x faster on CPU for depthwise convolutions
    (a module's `input_memory_format` attribute, when it has one, says otherwise).
    On CUDA the forward pass runs in float16 autocast (mixed precision). `pad_last` fills
    a short last batch with blank images: every batch then has one shape, so an image's
    output does not depend on how many others were run with it (kernels can differ by
    batch shape), and cached outputs of earlier runs match a fresh run bit for bit.
    """
    device = device or torch.device("cpu")
    loader = DataLoader(ImageDataset(items, [0] * len(items), transform, load),
                        batch_size=batch_size, shuffle=False)
    module.eval().to(device=device, memory_format=torch.channels_last)
    # Inference runtimes take plain (B, 3, S, S) arrays: a channels-last copy would only
    # be copied back.
    layout = getattr(module, "input_memory_format", torch.channels_last)
    outputs = np.zeros((0, 0), dtype=np.float32)
    done = 0
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for images, _ in tqdm(prefetched(loader, PREFETCH_BATCHES), desc=desc, unit="batch",
                              total=len(loader), mininterval=2.0, disable=len(loader) < 2):
            count = len(images)
            if pad_last and count < batch_size:
                images = torch.cat([images, images.new_zeros(batch_size - count,
                                                             *images.shape[1:])])
            images = images.to(device).contiguous(memory_format=layout)
            batch = module(images)[:count].float().cpu().numpy()
            if done == 0:  # one (N, K) array, filled in place: no second copy at the end
                outputs = np.empty((len(items), *batch.shape[1:]), dtype=np.float32)
            outputs[done:done + count] = batch
            done += count
    return outputs


def forward_sharded(module: nn.Module, items: Sequence[Any], transform: Transform,
                    batch_size: int, desc: str, ranks: Ranks,
                    device: torch.device | None = None,
                    pad_last: bool = False) -> np.ndarray | None:
    """`forward_all` with the batches dealt round-robin to the workers.

    Every worker runs the same batches a single process would (same boundaries, same
    order inside each), so the merged outputs equal a one-process run. Collective:
    every worker must call it. Returns the (N, K) outputs on rank 0, None elsewhere.
    """
    items = list(items)
    if ranks.world == 1:  # alone: no split and merge (and no second copy of the outputs)
        return forward_all(module, items, transform, batch_size, desc, device=device,
                           pad_last=pad_last)
    starts = list(range(0, len(items), batch_size))[ranks.rank::ranks.world]
    mine = [item for start in starts for item in items[start:start + batch_size]]
    outputs = forward_all(module, mine, transform, batch_size, desc, device=device,
                          pad_last=pad_last)
    pieces = np.split(outputs, range(batch_size, len(mine), batch_size)) if mine else []
    gathered = distributed.gather(pieces)
    if not ranks.main:
        return None
    batches = [gathered[k % ranks.world][k // ranks.world]
               for k in range(-(-len(items) // batch_size))]
    return np.concatenate(batches) if batches else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities from (N, K) logits."""
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()
