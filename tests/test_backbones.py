"""Backbones by name, their weights, and a check that weights and preprocessing are right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn
from torchvision.models._meta import _IMAGENET_CATEGORIES

from imgpipe import frozen_prefix
from imgpipe.backbones import (
    Backbone,
    Family,
    available_backbones,
    build_backbone,
    inference_trunk,
    register,
    unregister,
)
from imgpipe.errors import BackboneError
from imgpipe.finetune import set_trainable
from imgpipe.images import square_resize
from imgpipe.model import ImageClassifier
from imgpipe.transforms import eval_transform


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_sample_photos_classify_as_palace_and_daisy_with_the_imagenet_head(name: str) -> None:
    backbone = build_backbone(name)
    # The pipeline's own preprocessing: prepare's square resize, extract's eval transform.
    transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    photos = load_sample_images()
    batch = torch.stack([transform(square_resize(Image.fromarray(image), backbone.input_size))
                         for image in photos.images])
    with torch.no_grad():
        logits = backbone.imagenet_head(backbone.trunk.eval()(batch))
    top3 = [[_IMAGENET_CATEGORIES[i] for i in row] for row in logits.topk(3).indices.tolist()]
    named = dict(zip([Path(f).name for f in photos.filenames], top3))
    assert "palace" in named["china.jpg"], named
    if name != "efficientnet_lite2":
        assert "daisy" in named["flower.jpg"], named
    # lite2's packaged weights (a third-party conversion) rank daisy 25th on this photo
    # (honeycomb first) while matching the reference implementation's logits exactly
    # (tests/test_efficientnet_lite.py): the weights' behaviour, not our preprocessing.


def test_lite0_describes_itself(lite0) -> None:
    assert (lite0.feature_dim, lite0.input_size) == (1280, 224)
    assert [name for name, _ in lite0.blocks][:2] == ["stem", "_blocks.0"]
    assert lite0.blocks[-1][0] == "head" and len(lite0.blocks) == 18
    with torch.no_grad():
        assert lite0.trunk.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1280)


def test_input_size_override_feeds_smaller_images_through_the_same_weights(lite0) -> None:
    small = build_backbone("efficientnet_lite0", input_size=96)
    assert small.input_size == 96 and lite0.input_size == 224
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(small.trunk.eval()(images), lite0.trunk.eval()(images))


def test_random_init_differs_from_pretrained(lite0) -> None:
    random = build_backbone("efficientnet_lite0", pretrained=False)
    assert not torch.equal(random.trunk._conv_stem.weight, lite0.trunk._conv_stem.weight)
    assert random.imagenet_head is None  # no ImageNet classifier to borrow rows from


def test_random_init_is_the_same_network_in_every_stage() -> None:
    # extract fits the probe on one build, finetune_full loads it onto another.
    torch.manual_seed(123)
    first = build_backbone("efficientnet_lite0", pretrained=False)
    after_first = torch.rand(1)
    torch.manual_seed(456)
    second = build_backbone("efficientnet_lite0", pretrained=False)
    assert all(torch.equal(a, b) for a, b in zip(first.trunk.state_dict().values(),
                                                 second.trunk.state_dict().values()))
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_first)  # the caller's random stream is untouched


def test_classifier_hidden_layers_are_blocks_too() -> None:
    mobilenet = build_backbone("mobilenet_v3_small", pretrained=False)
    names = [name for name, _ in mobilenet.blocks]
    assert names[-1] == "classifier.0" and names[0] == "features.0"  # 576 -> 1024 Linear
    assert mobilenet.feature_dim == 1024


def test_torchvision_backbone_by_name_without_weights() -> None:
    resnet = build_backbone("resnet18", pretrained=False)
    assert (resnet.feature_dim, resnet.input_size) == (512, 224)
    assert resnet.mean == (0.485, 0.456, 0.406)
    assert [name for name, _ in resnet.blocks] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        assert resnet.trunk.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_unknown_backbone_names_close_matches() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'resnet19'; did you mean resnet18"):
        build_backbone("resnet19")


def test_missing_torchvision_weights_say_how_to_supply_them(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", _no_network)
    with pytest.raises(BackboneError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and "could not be downloaded" in message
    assert "network is unreachable" in message
    assert "backbone.weights" in message and "backbone.pretrained: false" in message


def test_cached_torchvision_weights_load_from_the_hub_cache(tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = build_backbone("resnet18", pretrained=False)
    classifier = torch.nn.Linear(512, 1000)
    state = {**source.trunk.state_dict(),
             **{f"fc.{k}": v for k, v in classifier.state_dict().items()}}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    loaded = build_backbone("resnet18", pretrained=True)
    assert torch.equal(loaded.trunk.conv1.weight, source.trunk.conv1.weight)
    assert torch.equal(loaded.imagenet_head.weight, classifier.weight)


def test_local_weights_file_with_ddp_prefix_and_foreign_head(tmp_path: Path) -> None:
    source = build_backbone("efficientnet_lite0", pretrained=False)
    state = {f"module.{k}": v for k, v in source.trunk.state_dict().items()}
    state["module._fc.weight"] = torch.zeros(10, 1280)  # a 10-class head: dropped
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)
    loaded = build_backbone("efficientnet_lite0", weights=str(path))
    assert torch.equal(loaded.trunk._conv_stem.weight, source.trunk._conv_stem.weight)


def test_weights_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_backbone("resnet18", pretrained=False).trunk.state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit the backbone.*missing keys"):
        build_backbone("efficientnet_lite0", weights=str(path))


def test_available_backbones_lists_lite_and_torchvision() -> None:
    names = available_backbones()
    assert {"efficientnet_lite0", "resnet18", "efficientnet_b0"} <= set(names)


def _no_network(*args, **kwargs):
    raise OSError("network is unreachable")


def test_square_resize_keeps_the_centre() -> None:
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, 100:200] = 255  # a white centre square on black
    out = np.asarray(square_resize(Image.fromarray(wide), 50))
    assert out.shape == (50, 50, 3) and out.mean() > 250


# The README's worked example ("Backbones", adding a family), registered as written there.
def _build_tiny(name: str, imagenet: bool) -> Backbone:
    if imagenet:
        raise BackboneError(f"backbone.name: {name} has no ImageNet weights; set "
                            "backbone.pretrained: false or backbone.weights")
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(name, net, feature_dim=32, input_size=64, mean=(0.5, 0.5, 0.5),
                    std=(0.25, 0.25, 0.25), blocks=[("conv1", [net[0]]), ("conv2", [net[1]])],
                    imagenet_head=None)


@pytest.fixture
def tiny_family():
    family = register(Family("tiny", lambda: ["tiny_cnn"], _build_tiny))
    yield family
    unregister("tiny")


def test_a_registered_family_is_one_more_backbone_name(tiny_family) -> None:
    assert available_backbones()[-1] == "tiny_cnn"
    tiny = build_backbone("tiny_cnn", pretrained=False)
    assert (tiny.family, tiny.feature_dim, tiny.input_size) == ("tiny", 32, 64)
    assert inference_trunk(tiny) is tiny.trunk  # no fold_batchnorm registered
    with torch.no_grad():
        assert tiny.trunk.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    # Random init is seeded by build_backbone: every stage builds the same network.
    again = build_backbone("tiny_cnn", pretrained=False)
    assert torch.equal(again.trunk[0][0].weight, tiny.trunk[0][0].weight)


def test_a_registered_family_freezes_by_its_blocks(tiny_family) -> None:
    tiny = build_backbone("tiny_cnn", pretrained=False)
    model = ImageClassifier(tiny.trunk, nn.Linear(32, 3))
    frozen = set_trainable(model, tiny, "partial", trainable_blocks=1)
    assert frozen == [tiny.trunk[0]]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"trunk.1.0.weight", "trunk.1.0.bias", "trunk.1.1.weight",
                         "trunk.1.1.bias", "head.weight", "head.bias"}
    # No frozen-prefix split is registered for it: its frozen blocks run every epoch.
    assert frozen_prefix.split(model, tiny, 1) is None


def test_a_registered_family_states_its_own_errors(tiny_family) -> None:
    with pytest.raises(BackboneError, match="tiny_cnn has no ImageNet weights"):
        build_backbone("tiny_cnn", pretrained=True)
    with pytest.raises(BackboneError, match="did you mean tiny_cnn"):
        build_backbone("tiny_cn")


def test_a_family_cannot_take_names_or_keys_already_registered(tiny_family) -> None:
    with pytest.raises(ValueError, match="'tiny' is registered already"):
        register(Family("tiny", lambda: ["other"], _build_tiny))
    with pytest.raises(ValueError, match=r"names \['resnet18'\] belong to another family"):
        register(Family("mine", lambda: ["resnet18"], _build_tiny))


def test_lite0_folds_batchnorm_for_extract_and_torchvision_does_not(lite0) -> None:
    folded = inference_trunk(lite0)
    assert folded is not lite0.trunk and isinstance(folded._bn0, nn.Identity)
    resnet = build_backbone("resnet18", pretrained=False)
    assert (lite0.family, resnet.family) == ("efficientnet_lite", "torchvision")
    assert inference_trunk(resnet) is resnet.trunk
