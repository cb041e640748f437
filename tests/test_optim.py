"""Optimizers with discriminative learning rates, and the per-step schedules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgpipe.model import ImageClassifier
from imgpipe.optim import make_optimizer, make_schedule
from imgpipe.params_finetune import FinetuneParams


def tiny_model(train_trunk: bool = True) -> ImageClassifier:
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    trunk.requires_grad_(train_trunk)
    return ImageClassifier(trunk, nn.Linear(3, 2))


def test_head_learns_head_lr_mult_times_faster() -> None:
    optimizer = make_optimizer(tiny_model(), FinetuneParams(lr=0.01, head_lr_mult=10.0))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["lr"] for group in optimizer.param_groups] == [pytest.approx(0.1), 0.01]


def test_sgd_with_momentum_and_only_trainable_parameters() -> None:
    optimizer = make_optimizer(tiny_model(train_trunk=False),
                               FinetuneParams(optimizer="sgd", lr=0.1, momentum=0.8))
    assert isinstance(optimizer, torch.optim.SGD)
    assert len(optimizer.param_groups) == 1  # the frozen trunk is not given to it
    assert optimizer.param_groups[0]["momentum"] == 0.8


def factors(params: FinetuneParams, steps_per_epoch: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_schedule(optimizer, params, steps_per_epoch)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values


def test_warmup_then_cosine_to_zero() -> None:
    values = factors(FinetuneParams(epochs=2, warmup_epochs=1.0, schedule="cosine"), 2, 4)
    assert values == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_step_schedule_decays_every_step_epochs() -> None:
    values = factors(FinetuneParams(epochs=4, schedule="step", step_epochs=1, step_gamma=0.5),
                     1, 4)
    assert values == pytest.approx([1.0, 0.5, 0.25, 0.125])


def test_constant_schedule() -> None:
    assert factors(FinetuneParams(epochs=3, schedule="constant"), 2, 6) == [1.0] * 6
