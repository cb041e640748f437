"""Optimizer and learning-rate schedule of fine-tuning, built from params.

Discriminative learning rates: the head, new to this task, learns `head_lr_mult` times
faster than the pretrained backbone. The schedule is per step: linear warmup from 0,
then cosine to 0, step decay, or constant.
"""

from __future__ import annotations

import math

import torch

from imgpipe.model import ImageClassifier
from imgpipe.params_finetune import FinetuneParams


def make_optimizer(model: ImageClassifier, params: FinetuneParams) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters only, head in a group of its own."""
    backbone = [p for p in model.trunk.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": params.lr * params.head_lr_mult}]
    if backbone:
        groups.append({"params": backbone, "lr": params.lr})
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum,
                               weight_decay=params.weight_decay)
    return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, params: FinetuneParams,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step multiplier of each group's learning rate."""
    total = params.epochs * steps_per_epoch
    warmup = round(params.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if params.schedule == "step":
            return params.step_gamma ** (step // (params.step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
