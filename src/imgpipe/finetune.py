"""End-to-end fine-tuning: which parameters train, one epoch of training, one of eval."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgpipe.backbones import Backbone
from imgpipe.model import ImageClassifier

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    loss: float  # mean cross-entropy per image
    accuracy: float


def set_trainable(model: ImageClassifier, backbone: Backbone, freeze: str,
                  trainable_blocks: int) -> list[nn.Module]:
    """Freeze per `freeze` and return the frozen modules (kept in eval mode when training).

    all: only the head trains (callers skip training altogether); partial: the last
    `trainable_blocks` backbone blocks and the head; none: everything.
    """
    model.requires_grad_(True)
    if freeze == "none":
        _logger.info("training every parameter of the backbone and the head")
        return []
    frozen_blocks = backbone.blocks if freeze == "all" else backbone.blocks[:-trainable_blocks]
    frozen = [module for _, modules in frozen_blocks for module in modules]
    # Parameters outside any listed block (e.g. a ViT's class token) freeze with the trunk
    # unless everything trains.
    model.trunk.requires_grad_(False)
    trainable_names = [name for name, _ in backbone.blocks[len(frozen_blocks):]]
    for _, modules in backbone.blocks[len(frozen_blocks):]:
        for module in modules:
            module.requires_grad_(True)
    if freeze == "partial":
        _logger.info("training the head and %d of %d backbone blocks (%s)",
                     len(trainable_names), len(backbone.blocks), ", ".join(trainable_names))
    return frozen


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def train_epoch(model: ImageClassifier, frozen: list[nn.Module], loader: DataLoader,
                optimizer: torch.optim.Optimizer, desc: str,
                bn_stats: str = "update") -> EpochResult:
    """One pass over `loader`.

    Frozen modules stay in eval mode, so their BatchNorm statistics never move. With
    `bn_stats="frozen"` every BatchNorm layer normalises with its running statistics
    (its affine weights still train): small fine-tuning batches then cannot shift the
    features away from those the linear probe was fitted on.
    """
    model.train()
    for module in frozen:
        module.eval()
    if bn_stats == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2.0):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return EpochResult(loss_sum / seen, correct / seen)


def evaluate_epoch(model: ImageClassifier, loader: DataLoader) -> EpochResult:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for images, labels in loader:
            logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
    return EpochResult(loss_sum / seen, correct / seen)
