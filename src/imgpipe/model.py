"""The classifier (backbone trunk + linear head) and its self-describing model file.

A model file carries what produced it, so it can be used without params.yaml: one
`ModelRecord` (classes, backbone identity and preprocessing, the prepared image size,
the run's freeze mode and kept epoch) beside the weights, under a format version.
predict, evaluate and the MLflow model all read the record through `load_model`; a file
of another version, or not written by `save_model`, is refused with the fix. Files are
plain dicts of tensors and builtins: they load with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone
from imgpipe.errors import BackboneError
from imgpipe.io import save_torch

# 2: the record's fields under "record" (1 kept them at the top level, untyped).
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelRecord:
    """What a model file says about its model, besides the weights."""

    classes: list[str]  # class names, in the order of the head's rows
    backbone: BackboneInfo  # network identity, input size and normalisation
    image_size: int  # pixels: prepare.image_size, the square predict resizes inputs to
    freeze: str  # the run's freeze mode: all, partial or none
    best_epoch: int  # the epoch whose weights were kept (0: the linear probe)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "backbone": asdict(self.backbone)}

    @classmethod
    def from_dict(cls, stored: Any, path: Path) -> ModelRecord:
        names = {f.name for f in fields(cls)}
        if not isinstance(stored, dict) or set(stored) != names:
            found = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
            raise BackboneError(f"{path}: model record has fields {found}, expected "
                                f"{sorted(names)}; re-run `dvc repro finetune_full`")
        return cls(**{**stored, "backbone": BackboneInfo(**stored["backbone"])})


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
    """Write the model file atomically.

    Args:
        extra: the record's other fields: freeze, best_epoch, and preprocess (the
            prepared folder's preprocess.json, whose image_size the record keeps).
    """
    record = ModelRecord(list(classes), info, int(extra["preprocess"]["image_size"]),
                         freeze=extra["freeze"], best_epoch=int(extra["best_epoch"]))
    # Contiguous: the file's bytes do not depend on the memory layout training used.
    state = {key: value.cpu().contiguous() for key, value in model.state_dict().items()}
    save_torch(path, {"format_version": FORMAT_VERSION, "state_dict": state,
                      "record": record.to_dict()})


def load_model(path: Path) -> tuple[ImageClassifier, ModelRecord]:
    """Rebuild a saved classifier (architecture by name, weights from the file), in eval mode.

    Raises:
        BackboneError: no file, not a model file of this pipeline, or another version.
    """
    if not path.is_file():
        raise BackboneError(f"model file {path} not found: run `dvc repro` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, or refused by weights_only
        raise BackboneError(f"{path}: not a model file ({type(error).__name__}: {error}); "
                            "pass the models/model.pt that finetune_full writes") from error
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if version is None:
        raise BackboneError(f"{path}: not a model file of this pipeline (no format_version); "
                            "pass the models/model.pt that finetune_full writes")
    if version != FORMAT_VERSION:
        raise BackboneError(f"{path}: model file format {version!r}, this version reads "
                            f"{FORMAT_VERSION}; re-run `dvc repro finetune_full` to rewrite it")
    record = ModelRecord.from_dict(payload.get("record"), path)
    backbone = build_backbone(record.backbone.name, pretrained=False)
    model = ImageClassifier(backbone.trunk,
                            nn.Linear(record.backbone.feature_dim, len(record.classes)))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), record
