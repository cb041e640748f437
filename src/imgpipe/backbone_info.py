"""What identifies a backbone and its preprocessing; stored with features, heads, models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgpipe.backbones import Backbone


@dataclass(frozen=True)
class BackboneInfo:
    """Identity and preprocessing of a backbone, stored with features, heads and models."""

    name: str
    pretrained: bool
    weights: str | None
    feature_dim: int
    input_size: int
    mean: list[float]
    std: list[float]

    @classmethod
    def of(cls, backbone: Backbone, pretrained: bool, weights: str | None) -> BackboneInfo:
        """The info of a built backbone."""
        return cls(backbone.name, pretrained, weights, backbone.feature_dim,
                   backbone.input_size, list(backbone.mean), list(backbone.std))

    def same_network(self, other: BackboneInfo) -> bool:
        """Same weights fed the same images: features of one fit heads of the other."""
        return (self.name, self.pretrained, self.weights, self.input_size) == (
            other.name, other.pretrained, other.weights, other.input_size)
