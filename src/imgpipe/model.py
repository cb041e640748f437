"""The classifier (backbone trunk + linear head) and its self-describing model file.

A model file carries what produced it, so it can be used without params.yaml:
the classes, the backbone's identity and preprocessing, and the params of the run.
Files are plain dicts of tensors and builtins: they load with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone
from imgpipe.errors import BackboneError
from imgpipe.io import save_torch

FORMAT_VERSION = 1


class ImageClassifier(nn.Module):
    """images (B, 3, S, S) -> trunk -> features (B, D) -> head -> logits (B, C)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def save_model(path: Path, model: ImageClassifier, *, classes: list[str], info: BackboneInfo,
               extra: dict[str, Any]) -> None:
    """Write the model file atomically."""
    state = {key: value.cpu() for key, value in model.state_dict().items()}
    payload = {"format_version": FORMAT_VERSION, "state_dict": state,
               "classes": list(classes), "backbone": asdict(info), **extra}
    save_torch(path, payload)


def load_model(path: Path) -> tuple[ImageClassifier, list[str], BackboneInfo, dict[str, Any]]:
    """Rebuild a saved classifier (architecture by name, weights from the file), in eval mode.

    Returns:
        The model, its class names, its backbone info and the whole stored payload.
    """
    if not path.is_file():
        raise BackboneError(f"model file {path} not found: run `dvc repro` first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise BackboneError(f"{path}: unsupported model file format "
                            f"{payload.get('format_version')!r}; re-run the pipeline")
    info = BackboneInfo(**payload["backbone"])
    backbone = build_backbone(info.name, pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(info.feature_dim, len(payload["classes"])))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), list(payload["classes"]), info, payload
