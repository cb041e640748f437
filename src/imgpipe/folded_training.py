"""Fine-tuning with each BatchNorm of frozen statistics computed inside its convolution.

A BatchNorm layer in eval mode (`finetune_full.bn_stats: frozen`, and every frozen block)
is a per-channel affine map, so conv -> BN equals one convolution whose weights are
scaled by gamma / sqrt(running_var + eps) and whose bias is beta - running_mean x that
scale. Recomputed from the live parameters on every call, the gradients reach the
convolution's weights and BN's gamma and beta as they do through the two layers (equal to
float32 rounding), and BN's own passes over the activations, one forward and one
backward, are gone: about a fifth of a lite0 training step on the CPU.

The folded network is a second module tree over the same leaf modules as the model (the
same parameters, buffers and train/eval modes): training it trains the model, whose state
dict, checkpoints and saved file keep their keys. Only the containers are copies, so a
hook or plain attribute set on a container of the model after the copy is not seen by
it. A BatchNorm in train mode (`bn_stats: update`) runs as it is.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from imgpipe.efficientnet_lite import EfficientNetLite, MBConvBlock

_logger = logging.getLogger(__name__)
Pairs = list[tuple[nn.Module, str, str]]  # (owner, conv attribute, BatchNorm attribute)


def _lite_pairs(module: nn.Module) -> Pairs:
    """Every conv -> BN pair in the EfficientNet-Lite parts of `module` (the pairs
    efficientnet_lite.fold_batchnorm folds for extract)."""
    pairs: Pairs = []
    for owner in module.modules():
        if isinstance(owner, EfficientNetLite):
            pairs += [(owner, "_conv_stem", "_bn0"), (owner, "_conv_head", "_bn1")]
        elif isinstance(owner, MBConvBlock):
            if owner.expands:
                pairs.append((owner, "_expand_conv", "_bn0"))
            pairs += [(owner, "_depthwise_conv", "_bn1"), (owner, "_project_conv", "_bn2")]
    return pairs


# Backbone family key -> the conv -> BN pairs of a module holding that family's trunk or
# parts of it, each convolution's output going through its BatchNorm and nowhere else.
# Kept here, not in the family's module, so that extract's code and cache key stay out of
# it (as frozen_prefix.SPLITS). A family missing here trains its BatchNorm layers as they are.
PAIRS: dict[str, Callable[[nn.Module], Pairs]] = {"efficientnet_lite": _lite_pairs}


class ConvBatchNorm(nn.Module):
    """`bn(conv(x))`, as one convolution while `bn` is in eval mode."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or bn.running_var is None or not bn.affine:
            return bn(conv(x))
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        # The convolution's own forward (its padding, e.g. TensorFlow "same"), other weights.
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        return functional_call(conv, {"weight": weight, "bias": bias}, (x,))


def folded(net: nn.Module, family: str) -> nn.Module | None:
    """A network computing what `net` computes, each conv -> BN pair as a ConvBatchNorm,
    sharing every leaf module with `net`; None where `family` has no pairs listed."""
    pairs_of = PAIRS.get(family)
    if pairs_of is None:
        return None
    # deepcopy copies the containers and hands back these objects wherever it meets them.
    leaves = [module for module in net.modules() if next(module.children(), None) is None]
    shared = {id(item): item for item in itertools.chain(leaves, net.parameters(),
                                                          net.buffers())}
    copied = copy.deepcopy(net, memo=shared)
    for owner, conv, bn in pairs_of(copied):
        setattr(owner, conv, ConvBatchNorm(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())
    _logger.info("BatchNorm layers with frozen statistics run inside their convolutions")
    return copied
