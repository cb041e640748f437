"""Partial fine-tuning on cached frozen-block outputs: the same network, the same training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from imgpipe import frozen_prefix
from imgpipe.backbones import build_backbone
from imgpipe.model import ImageClassifier, load_model
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from test_finetune import crash_in_epoch_2, run_finetune


@pytest.mark.parametrize("frozen_blocks", [1, 9, 15, 17])
def test_tail_of_the_prefix_is_the_whole_network(frozen_blocks: int) -> None:
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3)).eval()
    prefix, tail = frozen_prefix.split(model, backbone, frozen_blocks)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # The prefix has BatchNorm folded in: equal to float32 rounding.
        assert torch.allclose(tail(prefix(images)), model(images), rtol=0, atol=1e-4)
    # Shared parameters: training the tail trains the model that gets saved.
    assert tail.head is model.head and {id(p) for p in tail.parameters()} <= {
        id(p) for p in model.parameters()}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prefix.modules())


def test_only_efficientnet_lite_is_split() -> None:
    backbone = build_backbone("resnet18", pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3))
    assert frozen_prefix.split(model, backbone, 3) is None


def test_views_cycle_with_the_epoch() -> None:
    views = [torch.full((2, 1), float(v)) for v in range(3)]
    maps = frozen_prefix.ViewMaps(views, [0, 1])
    seen = []
    for epoch in range(1, 6):
        maps.set_epoch(epoch)
        seen.append(maps[1][0].item())
    assert seen == [0.0, 1.0, 2.0, 0.0, 1.0]


def test_cached_views_train_the_same_model_as_running_the_frozen_blocks(
        probed, tmp_path: Path) -> None:
    # Augmentation off: both paths see the same inputs in the same order, so they differ
    # only by float rounding (the frozen blocks ran in other batch sizes).
    common = dict(epochs=2, lr=3e-4, trainable_blocks=2)
    still = AugmentParams(crop_scale_min=1.0)
    run_finetune(probed, tmp_path / "plain", "partial", augment=still, cached_views=0,
                 **common)
    run_finetune(probed, tmp_path / "cached", "partial", augment=still, cached_views=1,
                 **common)
    plain = pd.read_csv(tmp_path / "plain" / "history.csv")
    cached = pd.read_csv(tmp_path / "cached" / "history.csv")
    assert list(plain["val_accuracy"]) == list(cached["val_accuracy"])
    assert (plain["val_loss"] - cached["val_loss"]).abs().max() < 1e-4
    assert plain["train_loss"].iloc[1] != plain["train_loss"].iloc[2]  # it did train
    a = load_model(tmp_path / "plain" / "model.pt")[0].state_dict()
    b = load_model(tmp_path / "cached" / "model.pt")[0].state_dict()
    assert max((a[key].float() - b[key].float()).abs().max().item() for key in a) < 1e-3


def test_cached_views_resume_to_the_same_result(probed, tmp_path: Path, monkeypatch) -> None:
    common = dict(epochs=3, lr=3e-4, trainable_blocks=2, cached_views=2)
    run_finetune(probed, tmp_path / "straight", "partial", **common)
    checkpoints = tmp_path / "resumed" / "checkpoints"
    crash_in_epoch_2(probed, tmp_path / "resumed", checkpoints, monkeypatch, **common)
    assert len(list(checkpoints.glob("finetune-*.pt"))) == 1  # epoch 1 was saved
    run_finetune(probed, tmp_path / "resumed", "partial", checkpoint_dir=checkpoints, **common)
    assert ((tmp_path / "straight" / "history.csv").read_text()
            == (tmp_path / "resumed" / "history.csv").read_text())


def test_cached_views_must_be_a_count() -> None:
    from imgpipe.errors import ParamsError

    with pytest.raises(ParamsError, match="finetune_full.cached_views"):
        FinetuneParams(cached_views=-1)
