"""Training with frozen-statistics BatchNorm computed inside the convolutions: the same
model, the same gradients, the same saved file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgpipe import folded_training, frozen_prefix
from imgpipe.backbones import build_backbone
from imgpipe.finetune import set_trainable
from imgpipe.model import ImageClassifier


def lite0_classifier() -> tuple[ImageClassifier, object]:
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


def test_folded_network_gives_the_same_logits_and_gradients() -> None:
    model, backbone = lite0_classifier()
    net = folded_training.folded(model, backbone.family)
    assert net is not None
    # 49 pairs in lite0: stem, head conv, 16 depthwise and 16 project, 15 expand.
    assert sum(isinstance(m, folded_training.ConvBatchNorm) for m in net.modules()) == 49
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(parent, folded_training
                   .ConvBatchNorm) for parent in net.modules() for m in parent.children())
    frozen_statistics(model)
    plain = gradients(model, model, IMAGES, LABELS)
    folded = gradients(net, model, IMAGES, LABELS)
    with torch.no_grad():
        assert torch.allclose(net(IMAGES), model(IMAGES), rtol=0, atol=1e-4)
    assert plain.keys() == folded.keys()
    for name, grad in plain.items():  # BatchNorm's gamma and beta included
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert torch.allclose(folded[name], grad, rtol=0, atol=2e-2 * scale), name


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


def test_batchnorm_in_train_mode_runs_as_it_is() -> None:
    """bn_stats: update: batch statistics, running statistics updated, as without folding."""
    model, backbone = lite0_classifier()
    net = folded_training.folded(model, backbone.family)
    reference, _ = lite0_classifier()
    net.train()
    reference.train()
    with torch.no_grad():
        assert torch.allclose(net(IMAGES), reference(IMAGES), rtol=0, atol=1e-4)
    assert torch.allclose(model.trunk._bn1.running_mean, reference.trunk._bn1.running_mean,
                          rtol=0, atol=1e-6)
    assert not torch.equal(model.trunk._bn1.running_mean,
                           lite0_classifier()[0].trunk._bn1.running_mean)


def test_frozen_blocks_keep_their_eval_mode_in_the_folded_network() -> None:
    """The frozen list names the model's modules; the folded network shares them."""
    model, backbone = lite0_classifier()
    frozen = set_trainable(model, backbone, "partial", 2)
    net = folded_training.folded(model, backbone.family)
    net.train()
    for module in frozen:
        module.eval()
    first = next(m for m in net.modules() if isinstance(m, folded_training.ConvBatchNorm))
    assert not first.bn.training and first.bn is model.trunk._bn0


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
