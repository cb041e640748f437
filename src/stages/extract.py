"""Stage extract: run the frozen backbone once over every split and cache its features.

Reads `backbone.*` and `extract.*`. Writes one .npz per split and the backbone's identity
and the class names into the features folder (see imgpipe.features).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from imgpipe import stage
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone
from imgpipe.data import forward_all
from imgpipe.features import FeatureSet, save_backbone_info, save_split
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import CLASSES_NAME, read_classes, read_manifest
from imgpipe.params import load_params
from imgpipe.splits import SPLITS
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


def extract(*, prepared_dir: Path, features_dir: Path, backbone_name: str, pretrained: bool,
            weights: str | None, batch_size: int) -> BackboneInfo:
    """Write pooled penultimate features of every prepared image, split by split."""
    backbone = build_backbone(backbone_name, pretrained=pretrained, weights=weights)
    info = BackboneInfo.of(backbone, pretrained, weights)
    transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    _logger.info("%s (%s): %d-d features at %d px", backbone_name,
                 "ImageNet" if pretrained else "random init", info.feature_dim, info.input_size)
    with atomic_path(features_dir) as staging:
        staging.mkdir()
        for split in SPLITS:
            table = read_manifest(prepared_dir, split)
            features = forward_all(backbone.trunk, table["file"], transform, batch_size,
                                   desc=f"extract {split}")
            save_split(staging, split, FeatureSet(
                features.reshape(len(table), info.feature_dim).astype(np.float32),
                table["label_index"].to_numpy(np.int64), table["image_id"].to_numpy(str)))
            _logger.info("%s: %d images", split, len(table))
        save_backbone_info(staging, info)
        write_json(staging / CLASSES_NAME, read_classes(prepared_dir))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared-dir", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True)
    args = parser.parse_args()

    def body() -> None:
        params = load_params()
        extract(prepared_dir=args.prepared_dir, features_dir=args.features_dir,
                backbone_name=params.backbone.name, pretrained=params.backbone.pretrained,
                weights=params.backbone.weights, batch_size=params.extract.batch_size)

    stage.run("extract", body)


if __name__ == "__main__":
    main()
