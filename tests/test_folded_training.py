"""Training with frozen-statistics BatchNorm computed inside the convolutions: the same
model, the same gradients, the same saved file."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from counting import count_calls
from imgpipe import folded_training, frozen_prefix
from imgpipe.backbones import Backbone, build_backbone
from imgpipe.finetune import Training, set_trainable, train_epoch
from imgpipe.model import ImageClassifier


def lite0_classifier() -> tuple[ImageClassifier, Backbone]:
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    torch.manual_seed(0)
    return ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3)), backbone


def frozen_statistics(model: nn.Module) -> None:
    """Train mode with every BatchNorm on its running statistics (bn_stats: frozen)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def gradients(net: nn.Module, model: nn.Module, images: torch.Tensor,
              labels: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


IMAGES = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 1])


@pytest.fixture
def batch_norm_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a BatchNorm layer normalised on its own (not folded)."""
    return count_calls(monkeypatch, nn.functional, "batch_norm")


def test_folded_network_gives_the_same_logits_and_gradients(batch_norm_calls: list[int],
                                                            ) -> None:
    model, backbone = lite0_classifier()
    net = folded_training.folded(model, backbone.family)
    assert net is not None
    frozen_statistics(model)
    plain = gradients(model, model, IMAGES, LABELS)
    # lite0: stem, head conv, 16 depthwise, 16 project, 15 expand convolutions
    assert len(batch_norm_calls) == 49
    batch_norm_calls.clear()
    folded = gradients(net, model, IMAGES, LABELS)
    assert batch_norm_calls == []  # every one folded into its convolution
    with torch.no_grad():
        assert torch.allclose(net(IMAGES), model(IMAGES), rtol=0, atol=2e-5)
    assert plain.keys() == folded.keys()
    for name, grad in plain.items():  # BatchNorm's gamma and beta included
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert torch.allclose(folded[name], grad, rtol=0, atol=1e-4 * scale), name


def test_a_biased_convolution_folds_its_bias_too() -> None:
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    bn.eval()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    folded = folded_training.ConvBatchNorm(conv, bn)
    assert torch.allclose(folded(images), bn(conv(images)), rtol=0, atol=1e-5)


def test_training_the_folded_network_trains_the_model_with_its_own_keys() -> None:
    model, backbone = lite0_classifier()
    keys = list(model.state_dict())
    net = folded_training.folded(model, backbone.family)
    before = model.trunk._bn1.weight.detach().clone()
    frozen_statistics(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    nn.functional.cross_entropy(net(IMAGES), LABELS).backward()
    optimizer.step()
    assert list(model.state_dict()) == keys  # the model file keeps its keys
    assert not torch.equal(model.trunk._bn1.weight, before)  # gamma trained through the fold
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}


def test_batchnorm_in_train_mode_runs_as_it_is(batch_norm_calls: list[int]) -> None:
    """bn_stats: update, freeze=partial: the trained blocks' BatchNorm layers normalise
    with batch statistics and update their running ones; the frozen blocks' stay fixed
    and run folded."""
    model, backbone = lite0_classifier()
    frozen = set_trainable(model, backbone, "partial", 2)  # _blocks.15 and the head conv
    net = folded_training.folded(model, backbone.family)
    frozen_bn, trained_bn = model.trunk._blocks[0]._bn1, model.trunk._bn1
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    loader = DataLoader(TensorDataset(IMAGES, LABELS), batch_size=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_epoch(net, Training(optimizer, frozen=frozen, bn_stats="update"), loader, "test")
    assert len(batch_norm_calls) == 4  # _blocks.15's _bn0, _bn1, _bn2 and the head's _bn1
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])


def test_the_partial_tail_is_folded_too() -> None:
    model, backbone = lite0_classifier()
    prefix, tail = frozen_prefix.split(model, backbone, 15)
    net = folded_training.folded(tail, backbone.family)
    model.eval()
    with torch.no_grad():
        maps = prefix(IMAGES)
        assert torch.allclose(net.eval()(maps), model(IMAGES), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18"])
def test_families_without_pairs_train_unfolded(name: str) -> None:
    backbone = build_backbone(name, pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3))
    assert folded_training.folded(model, backbone.family) is None
