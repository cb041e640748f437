"""Stage extract: run the frozen backbone once over every split and cache its features.

Reads `backbone.*`, `extract.*`, `device` and `distributed.*`. Writes one .npz per split
and the backbone's identity and the class names into the features folder (see
imgpipe.features). With `distributed.nproc_per_node` above 1 the batches are shared out
among torchrun workers and merged in order: the same features as one process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from imgpipe import distributed, stage
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone
from imgpipe.data import forward_sharded
from imgpipe.distributed import ALONE, Ranks
from imgpipe.features import FeatureSet, save_backbone_info, save_split
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import CLASSES_NAME, read_classes, read_manifest
from imgpipe.params import load_params
from imgpipe.splits import SPLITS
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


def extract(*, prepared_dir: Path, features_dir: Path, backbone_name: str, pretrained: bool,
            weights: str | None, batch_size: int, input_size: int | None = None,
            device: torch.device | None = None, ranks: Ranks = ALONE) -> BackboneInfo:
    """Write pooled penultimate features of every prepared image, split by split.

    Collective under torchrun: every worker computes its share, rank 0 writes.
    """
    backbone = build_backbone(backbone_name, pretrained=pretrained, weights=weights,
                              input_size=input_size)
    info = BackboneInfo.of(backbone, pretrained, weights)
    transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    _logger.info("%s (%s): %d-d features at %d px", backbone_name,
                 "ImageNet" if pretrained else "random init", info.feature_dim, info.input_size)
    splits = {}
    for split in SPLITS:
        table = read_manifest(prepared_dir, split)
        features = forward_sharded(backbone.trunk, table["file"], transform, batch_size,
                                   f"extract {split}", ranks, device=device)
        splits[split] = table, features
        _logger.info("%s: %d images", split, len(table))
    if not ranks.main:
        return info
    with atomic_path(features_dir) as staging:
        staging.mkdir()
        for split, (table, features) in splits.items():
            save_split(staging, split, FeatureSet(
                features.reshape(len(table), info.feature_dim).astype(np.float32),
                table["label_index"].to_numpy(np.int64), table["image_id"].to_numpy(str)))
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
        if distributed.relaunch("extract", params.distributed.nproc_per_node):
            return
        device = distributed.resolve_device(params.device)
        with distributed.process_group(device) as ranks:
            extract(prepared_dir=args.prepared_dir, features_dir=args.features_dir,
                    backbone_name=params.backbone.name, pretrained=params.backbone.pretrained,
                    weights=params.backbone.weights, batch_size=params.extract.batch_size,
                    input_size=params.backbone.input_size, device=device, ranks=ranks)

    stage.run("extract", body)


if __name__ == "__main__":
    main()
