"""Stage extract: run the frozen backbone once over every split and cache its features.

Reads `backbone.*`, `extract.*`, `device` and `distributed.*`. Writes one .npz per split
and the backbone's identity and the class names into the features folder (see
imgpipe.features). With `distributed.nproc_per_node` above 1 the batches are shared out
among torchrun workers and merged in order: the same features as one process. With a
cache folder, each image's features are also kept there under the prepared image's
content hash (the manifest's sha256, which prepare computed) and the backbone's
identity, so a later run computes only new images.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision

from imgpipe import backbones, data, distributed, efficientnet_lite, images, stage, transforms
from imgpipe import weights as weights_module
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone, inference_trunk
from imgpipe.cache import ItemCache, file_digest, source_digest
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
            device: torch.device | None = None, ranks: Ranks = ALONE,
            cache_dir: Path | None = None) -> BackboneInfo:
    """Write pooled penultimate features of every prepared image, split by split.

    Collective under torchrun: every worker computes its share, rank 0 writes. With
    `cache_dir`, only images without a cached feature vector go through the network.
    """
    device = device or torch.device("cpu")
    backbone = build_backbone(backbone_name, pretrained=pretrained, weights=weights,
                              input_size=input_size)
    info = BackboneInfo.of(backbone, pretrained, weights)
    transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    _logger.info("%s (%s): %d-d features at %d px", backbone_name,
                 "ImageNet" if pretrained else "random init", info.feature_dim, info.input_size)
    table = pd.concat([read_manifest(prepared_dir, split) for split in SPLITS],
                      ignore_index=True)
    files = list(table["file"])
    cache, keys, todo = None, [], list(range(len(files)))
    if cache_dir is not None:
        cache = ItemCache(cache_dir, "features", _cache_key(info, batch_size, device))
        keys = [sha[:16] for sha in table["sha256"]]  # prepare hashed every image
        todo = [i for i, key in enumerate(keys) if not cache.has(key, _FEATURE_SUFFIX)]
        _logger.info("%d of %d images have cached features (%s)", len(files) - len(todo),
                     len(files), cache.folder)
    computed = forward_sharded(inference_trunk(backbone), [files[i] for i in todo], transform,
                               batch_size, "extract", ranks, device=device, pad_last=True)
    if not ranks.main:
        return info
    features = np.empty((len(files), info.feature_dim), dtype=np.float32)
    features[todo] = computed.reshape(len(todo), info.feature_dim)
    if cache is not None:
        computed_rows = set(todo)
        for i, key in enumerate(keys):
            if i in computed_rows:
                cache.store(key, _FEATURE_SUFFIX, lambda path, i=i: _save_row(path, features[i]))
            else:
                features[i] = np.load(cache.path(key, _FEATURE_SUFFIX), allow_pickle=False)
    with atomic_path(features_dir) as staging:
        staging.mkdir()
        for split in SPLITS:
            rows = (table["split"] == split).to_numpy()
            save_split(staging, split, FeatureSet(
                features[rows].reshape(int(rows.sum()), info.feature_dim),
                table["label_index"][rows].to_numpy(np.int64),
                table["image_id"][rows].to_numpy(str)))
            _logger.info("%s: %d images", split, int(rows.sum()))
        save_backbone_info(staging, info)
        write_json(staging / CLASSES_NAME, read_classes(prepared_dir))
    return info


_FEATURE_SUFFIX = ".npy"


def _cache_key(info: BackboneInfo, batch_size: int, device: torch.device) -> dict:
    """Everything a cached feature vector depends on besides the image itself."""
    return {**asdict(info), "weights": info.weights and file_digest(Path(info.weights)),
            "batch_size": batch_size,  # batch shape and thread count pick the kernels,
            "threads": torch.get_num_threads(),  # which round differently (~1e-6)
            "device": device.type, "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "code": source_digest(backbones, data, efficientnet_lite, images, transforms,
                                  weights_module)}


def _save_row(path: Path, row: np.ndarray) -> None:
    with path.open("wb") as handle:  # np.save(path) would append .npy to the temp name
        np.save(handle, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared-dir", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="per-image cache of features, reused across runs")
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
                    input_size=params.backbone.input_size, device=device, ranks=ranks,
                    cache_dir=args.cache_dir)

    stage.run("extract", body)


if __name__ == "__main__":
    main()
