"""End-to-end fine-tuning: what trains, epochs of training and eval, resumable checkpoints.

Also under torchrun: each worker trains on its share of every batch (DistributedSampler)
through DistributedDataParallel, losses and accuracies are summed over the workers, and
rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from imgpipe import distributed
from imgpipe.backbones import Backbone
from imgpipe.distributed import ALONE, Ranks
from imgpipe.errors import ParamsError
from imgpipe.io import save_torch
from imgpipe.model import ImageClassifier
from imgpipe.scores import SelectBy, best_index, confusion, scores

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    loss: float  # mean loss per image (the training criterion in train_epoch)
    accuracy: float
    balanced_accuracy: float  # mean per-class recall
    macro_f1: float

    def row(self, split: str) -> dict[str, float]:
        """History columns: `<split>_loss`, `<split>_accuracy`, ..."""
        return {f"{split}_{name}": value for name, value in vars(self).items()}


def set_trainable(model: ImageClassifier, backbone: Backbone, freeze: str,
                  trainable_blocks: int, patterns: list[str] | None = None) -> list[nn.Module]:
    """Freeze per `freeze` and return the frozen modules (kept in eval mode when training).

    all: only the head trains (callers skip training altogether); partial: the head and
    the trunk parameters whose names match `patterns` (regexes, searched), or without
    patterns the last `trainable_blocks` blocks; none: everything.

    Raises:
        ParamsError: no trunk parameter matches `patterns`.
    """
    model.requires_grad_(True)
    if freeze == "none":
        _logger.info("training every parameter of the backbone and the head")
        return []
    # Parameters outside any listed block (e.g. a ViT's class token) freeze with the trunk.
    model.trunk.requires_grad_(False)
    if freeze == "partial" and patterns:
        return _train_matching(model, patterns)
    frozen_blocks = backbone.blocks if freeze == "all" else backbone.blocks[:-trainable_blocks]
    trainable_names = [name for name, _ in backbone.blocks[len(frozen_blocks):]]
    for _, modules in backbone.blocks[len(frozen_blocks):]:
        for module in modules:
            module.requires_grad_(True)
    if freeze == "partial":
        _logger.info("training the head and %d of %d backbone blocks (%s)",
                     len(trainable_names), len(backbone.blocks), ", ".join(trainable_names))
    return [module for _, modules in frozen_blocks for module in modules]


def _train_matching(model: ImageClassifier, patterns: list[str]) -> list[nn.Module]:
    names = [name for name, _ in model.trunk.named_parameters()]
    matched = [name for name in names if any(re.search(p, name) for p in patterns)]
    if not matched:
        raise ParamsError(f"finetune_full.trainable_patterns: {patterns!r} match no backbone "
                          f"parameter; names look like {', '.join(names[-3:])}")
    for name, parameter in model.trunk.named_parameters():
        parameter.requires_grad_(name in matched)
    _logger.info("training the head and %d backbone tensors matching %s", len(matched),
                 patterns)
    # Modules holding only frozen parameters stay in eval mode (BatchNorm statistics fixed).
    return [module for module in model.trunk.modules()
            if any(True for _ in module.parameters(recurse=False))
            and not any(p.requires_grad for p in module.parameters(recurse=False))]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def train_epoch(model: nn.Module, frozen: list[nn.Module], loader: DataLoader,
                optimizer: torch.optim.Optimizer, desc: str, bn_stats: str = "update",
                schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                criterion: nn.Module | None = None, device: torch.device | None = None,
                scaler: torch.amp.GradScaler | None = None) -> EpochResult:
    """One pass over `loader` (this worker's share of it, under torchrun).

    Frozen modules stay in eval mode, so their BatchNorm statistics never move. With
    `bn_stats="frozen"` every BatchNorm layer normalises with its running statistics
    (its affine weights still train): small fine-tuning batches then cannot shift the
    features away from those the linear probe was fitted on. An enabled `scaler` means
    float16 mixed precision (CUDA). `criterion` defaults to plain cross-entropy.
    """
    device = device or torch.device("cpu")
    criterion = criterion or nn.CrossEntropyLoss()
    mixed = scaler is not None and scaler.is_enabled()
    model.train()
    for module in frozen:
        module.eval()
    if bn_stats == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    loss_sum, counts = 0.0, None
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2.0):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, enabled=mixed):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if mixed:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()  # per step: warmup and decay are in steps
        loss_sum += loss.item() * len(labels)
        counts = _count(counts, labels, logits)
    return _result(loss_sum, counts)


def evaluate_epoch(model: nn.Module, loader: DataLoader,
                   device: torch.device | None = None) -> EpochResult:
    """Mean loss and accuracy over `loader`; under torchrun, over every worker's share."""
    device = device or torch.device("cpu")
    model.eval()
    loss_sum, counts = 0.0, None
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            counts = _count(counts, labels, logits)
    return _result(loss_sum, counts)


def _count(counts: np.ndarray | None, labels: torch.Tensor,
           logits: torch.Tensor) -> np.ndarray:
    """Add one batch to the (C, C) confusion counts."""
    batch = confusion(labels.cpu().numpy(), logits.argmax(1).cpu().numpy(), logits.shape[1])
    return batch if counts is None else counts + batch


def _result(loss_sum: float, counts: np.ndarray) -> EpochResult:
    """Loss and scores over every worker's share (counts summed, then scored)."""
    loss_sum, *flat = distributed.sum_across([loss_sum, *counts.ravel().tolist()])
    matrix = np.asarray(flat).reshape(counts.shape)
    return EpochResult(float(loss_sum / matrix.sum()), **scores(matrix))


@dataclass
class Progress:
    """Per-epoch history and the best-on-val weights so far; epoch 0 is the start."""

    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best: dict


def fit(model: ImageClassifier, frozen: list[nn.Module], *, train_loader: DataLoader,
        val_loader: DataLoader, optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int, bn_stats: str,
        progress: Progress, checkpoint: Path | None, criterion: nn.Module | None = None,
        select_by: SelectBy = "accuracy", patience: int = 0,
        device: torch.device | None = None, ranks: Ranks = ALONE,
        scaler: torch.amp.GradScaler | None = None) -> Progress:
    """Train up to `epochs`, keeping the best-on-val weights (higher `select_by`, then
    lower loss; scores.best_index).

    `train_loader` must draw from a `DistributedSampler` (one replica when alone): its
    order depends only on the seed and the epoch. Stops early after `patience` epochs
    without a better val score (0: never). After every epoch the whole training state
    (weights, optimizer, schedule, every worker's random generator, history) is written to
    `checkpoint`; a run that finds one resumes after its epoch and ends with the same
    result as a run never interrupted.
    """
    if checkpoint is not None and checkpoint.is_file():
        progress = _resume(checkpoint, model, optimizer, schedule, ranks)
    sampler = train_loader.sampler
    if not isinstance(sampler, DistributedSampler):
        raise TypeError("fit needs a train_loader with a DistributedSampler")
    net = model
    if distributed.active():  # gradients averaged over the workers after each backward
        net = DistributedDataParallel(model, device_ids=[device] if device
                                      and device.type == "cuda" else None)
    for epoch in range(len(progress.history), epochs + 1):
        if patience and epoch - progress.best["epoch"] > patience:
            _logger.info("early stop: no better val score for %d epochs", patience)
            break
        sampler.set_epoch(epoch)
        trained = train_epoch(net, frozen, train_loader, optimizer, f"epoch {epoch}",
                              bn_stats=bn_stats, schedule=schedule, criterion=criterion,
                              device=device, scaler=scaler)
        val = evaluate_epoch(model, val_loader, device)
        progress.history.append({"epoch": epoch, **trained.row("train"), **val.row("val")})
        _logger.info("epoch %d: train acc %.4f loss %.4f | val acc %.4f bal acc %.4f "
                     "macro-F1 %.4f loss %.4f", epoch, trained.accuracy, trained.loss,
                     val.accuracy, val.balanced_accuracy, val.macro_f1, val.loss)
        if best_index([progress.best, progress.history[-1]], select_by) == 1:
            progress.best_state = copy.deepcopy(model.state_dict())
            progress.best = progress.history[-1]
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, schedule, progress, ranks)
    return progress


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LRScheduler, progress: Progress,
                     ranks: Ranks) -> None:
    rng_states = distributed.gather(torch.get_rng_state())  # augmentation, per worker
    if ranks.main:
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "schedule": schedule.state_dict(), "torch_rng": rng_states,
                   "history": progress.history, "best_state": progress.best_state,
                   "best_epoch": progress.best["epoch"]}
        save_torch(path, payload)
    distributed.barrier()  # nobody runs ahead of a checkpoint that may be needed


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, ranks: Ranks) -> Progress:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    if len(payload["torch_rng"]) == ranks.world:
        torch.set_rng_state(payload["torch_rng"][ranks.rank])
    history = payload["history"]
    _logger.info("resuming from %s after epoch %d", path, history[-1]["epoch"])
    best = next(row for row in history if row["epoch"] == payload["best_epoch"])
    device = next(model.parameters()).device
    best_state = {key: value.to(device) for key, value in payload["best_state"].items()}
    return Progress(history, best_state, best)
