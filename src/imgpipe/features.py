"""Cached backbone features on disk: one .npz per split plus the backbone's identity.

    <features_dir>/train.npz   features (N, D) float32, labels (N,) int64, image_ids (N,) str
    <features_dir>/backbone.json   BackboneInfo of the network that produced them
    <features_dir>/classes.json    class names, as in the prepared folder
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError
from imgpipe.io import read_json, write_json

BACKBONE_NAME = "backbone.json"


@dataclass(frozen=True)
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64 class indices
    image_ids: np.ndarray  # (N,) str


def save_split(features_dir: Path, split: str, data: FeatureSet) -> None:
    path = features_dir / f"{split}.npz"
    with path.open("wb") as handle:  # callers write into a staging folder (atomic as a whole)
        np.savez(handle, features=data.features, labels=data.labels, image_ids=data.image_ids)


def load_split(features_dir: Path, split: str) -> FeatureSet:
    path = features_dir / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro extract` first")
    with np.load(path, allow_pickle=False) as archive:
        return FeatureSet(archive["features"], archive["labels"], archive["image_ids"])


def save_backbone_info(features_dir: Path, info: BackboneInfo) -> None:
    write_json(features_dir / BACKBONE_NAME, asdict(info))


def load_backbone_info(features_dir: Path) -> BackboneInfo:
    return BackboneInfo(**read_json(features_dir / BACKBONE_NAME))
