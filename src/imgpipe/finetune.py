"""End-to-end fine-tuning: what trains, epochs of training and eval, resumable checkpoints.

Also under torchrun: each worker trains on its share of every batch (DistributedSampler)
through DistributedDataParallel, losses and accuracies are summed over the workers, and
rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
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


@dataclass
class Training:
    """What every optimisation step needs, built once per run (finetune_full)."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped per step
    criterion: nn.Module = dataclasses.field(default_factory=nn.CrossEntropyLoss)
    frozen: list[nn.Module] = dataclasses.field(default_factory=list)  # kept in eval mode
    bn_stats: str = "update"  # frozen: every BatchNorm normalises with running statistics
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    scaler: torch.amp.GradScaler | None = None  # enabled: float16 mixed precision (CUDA)
    clip_grad_norm: float = 0.0  # above 0: gradients rescaled to at most this L2 norm


@dataclass(frozen=True)
class Selection:
    """How long to train and which epoch to keep."""

    epochs: int
    select_by: SelectBy = "accuracy"  # val score; ties go to the lower val loss
    patience: int = 0  # stop after this many epochs without a better val score; 0: never


def train_epoch(model: nn.Module, training: Training, loader: DataLoader,
                desc: str) -> EpochResult:
    """One pass over `loader` (this worker's share of it, under torchrun).

    Frozen modules stay in eval mode, so their BatchNorm statistics never move. With
    `bn_stats="frozen"` every BatchNorm layer normalises with its running statistics
    (its affine weights still train): small fine-tuning batches then cannot shift the
    features away from those the linear probe was fitted on.
    """
    device, optimizer, scaler = training.device, training.optimizer, training.scaler
    mixed = scaler is not None and scaler.is_enabled()
    model.train()
    for module in training.frozen:
        module.eval()
    if training.bn_stats == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    loss_sum, counts = 0.0, None
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2.0):
        images, labels = to_device(images, device), labels.to(device)
        with torch.autocast(device.type, enabled=mixed):
            logits = model(images)
            loss = training.criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if mixed:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            _clip(optimizer, training.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            _clip(optimizer, training.clip_grad_norm)
            optimizer.step()
        if training.schedule is not None:
            training.schedule.step()  # per step: warmup and decay are in steps
        loss_sum += loss.item() * len(labels)
        counts = _count(counts, labels, logits)
    return _result(loss_sum, counts)


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Rescale the gradients of every parameter the optimizer steps to at most `max_norm`
    in total L2 norm (a no-op at 0)."""
    if max_norm > 0:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups
                                  for p in group["params"]], max_norm)


def evaluate_epoch(model: nn.Module, loader: DataLoader,
                   device: torch.device | None = None) -> EpochResult:
    """Mean loss and accuracy over `loader`; under torchrun, over every worker's share."""
    device = device or torch.device("cpu")
    model.eval()
    loss_sum, counts = 0.0, None
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = to_device(images, device), labels.to(device)
            logits = model(images).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            counts = _count(counts, labels, logits)
    return _result(loss_sum, counts)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`; images and feature maps (4-D) in channels-last layout, which
    the model is in too (finetune_full): faster training steps on CPU for lite0."""
    if batch.dim() == 4:
        return batch.to(device, memory_format=torch.channels_last)
    return batch.to(device)


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


class PenalisedLoss(nn.Module):
    """`loss(logits, labels) + penalty(head)`: cross-entropy plus a term on the head."""

    def __init__(self, loss: nn.Module, penalty, head: nn.Linear) -> None:
        super().__init__()
        self.loss, self.penalty, self.head = loss, penalty, head

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, labels) + self.penalty(self.head)


@dataclass(frozen=True)
class Loaders:
    """The train and val batches, and the module that takes them (None: the model)."""

    train: DataLoader
    val: DataLoader
    net: nn.Module | None = None


@dataclass
class Progress:
    """Per-epoch history and the best-on-val weights so far; epoch 0 is the start."""

    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best: dict


def fit(model: ImageClassifier, training: Training, loaders: Loaders, selection: Selection,
        progress: Progress, checkpoint: Path | None = None, ranks: Ranks = ALONE) -> Progress:
    """Train up to `selection.epochs`, keeping the best-on-val weights of `model`.

    `loaders.net` trains and scores on the loaders' inputs: `model` itself on images, or
    its tail on cached maps (frozen_prefix), either possibly with BatchNorm folded into
    the convolutions (folded_training); either way it shares `model`'s parameters.
    `loaders.train` must draw from a `DistributedSampler` (one replica when alone): its
    order depends only on the seed and the epoch. After every epoch the whole training
    state (weights, optimizer, schedule, every worker's random generator, history) is
    written to `checkpoint`; a run that finds one resumes after its epoch and ends with
    the same result as a run never interrupted.
    """
    resuming = checkpoint is not None and checkpoint.is_file()
    distributed.same_everywhere("whether a checkpoint exists", resuming,
                                "on several machines put the checkpoint folder on a share "
                                "every node mounts, or delete it to start over")
    if resuming:
        progress = _resume(checkpoint, model, training, ranks)
    sampler = loaders.train.sampler
    if not isinstance(sampler, DistributedSampler):
        raise TypeError("fit needs a train loader with a DistributedSampler")
    net = loaders.net or model
    trained_net = net
    if distributed.active():  # gradients averaged over the workers after each backward
        device = training.device
        trained_net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda"
                                              else None)
    for epoch in range(len(progress.history), selection.epochs + 1):
        if selection.patience and epoch - progress.best["epoch"] > selection.patience:
            _logger.info("early stop: no better val score for %d epochs", selection.patience)
            break
        sampler.set_epoch(epoch)
        if hasattr(loaders.train.dataset, "set_epoch"):
            loaders.train.dataset.set_epoch(epoch)  # cached views: this epoch's view
        trained = train_epoch(trained_net, training, loaders.train, desc=f"epoch {epoch}")
        val = evaluate_epoch(net, loaders.val, training.device)
        progress.history.append({"epoch": epoch, **trained.row("train"), **val.row("val")})
        _logger.info("epoch %d: train acc %.4f loss %.4f | val acc %.4f bal acc %.4f "
                     "macro-F1 %.4f loss %.4f", epoch, trained.accuracy, trained.loss,
                     val.accuracy, val.balanced_accuracy, val.macro_f1, val.loss)
        if best_index([progress.best, progress.history[-1]], selection.select_by) == 1:
            progress.best_state = copy.deepcopy(model.state_dict())
            progress.best = progress.history[-1]
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, training, progress, ranks)
    return progress


def _save_checkpoint(path: Path, model: nn.Module, training: Training, progress: Progress,
                     ranks: Ranks) -> None:
    rng_states = distributed.gather(torch.get_rng_state())  # augmentation, per worker
    if ranks.main:
        payload = {"model": model.state_dict(), "optimizer": training.optimizer.state_dict(),
                   "schedule": training.schedule.state_dict(), "torch_rng": rng_states,
                   "history": progress.history, "best_state": progress.best_state,
                   "best_epoch": progress.best["epoch"]}
        save_torch(path, payload)
    distributed.barrier()  # nobody runs ahead of a checkpoint that may be needed


def _resume(path: Path, model: nn.Module, training: Training, ranks: Ranks) -> Progress:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    training.optimizer.load_state_dict(payload["optimizer"])
    training.schedule.load_state_dict(payload["schedule"])
    if len(payload["torch_rng"]) == ranks.world:
        torch.set_rng_state(payload["torch_rng"][ranks.rank])
    history = payload["history"]
    _logger.info("resuming from %s after epoch %d", path, history[-1]["epoch"])
    best = next(row for row in history if row["epoch"] == payload["best_epoch"])
    device = next(model.parameters()).device
    best_state = {key: value.to(device) for key, value in payload["best_state"].items()}
    return Progress(history, best_state, best)
