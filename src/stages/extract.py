"""Stage extract: run the frozen backbone once over every split and cache its features.

Reads `backbone.*`, `extract.*`, `device` and `distributed.*`. Writes one .npz per split
and the backbone's identity and the class names into the features folder (see
imgpipe.features), a chunk of rows at a time: memory does not grow with N. With
`distributed.nproc_per_node` above 1 the batches are shared out among torchrun workers
and merged in order: the same features as one process. Each image's features are kept
in a row store under the prepared image's content hash (the manifest's sha256, which
prepare computed) and the backbone's identity: with a cache folder that store persists,
so a later run computes only new images.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imgpipe import distributed, stage
from imgpipe.backbone_info import BackboneInfo
from imgpipe.distributed import ALONE, Ranks
from imgpipe.features import chunk_rows, save_backbone_info, save_split
from imgpipe.featurize import FeatureSettings, feature_rows
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import CLASSES_NAME, read_classes, read_manifest
from imgpipe.params import BackboneParams, DistributedParams, RunParams, load_section
from imgpipe.params_extract import ExtractParams
from imgpipe.splits import SPLITS

_logger = logging.getLogger(__name__)


def extract(*, prepared_dir: Path, features_dir: Path, backbone_name: str, pretrained: bool,
            weights: str | None, batch_size: int, input_size: int | None = None,
            device: torch.device | None = None, ranks: Ranks = ALONE,
            cache_dir: Path | None = None, runtime: str = "torch",
            precision: str = "f32") -> BackboneInfo:
    """Write pooled penultimate features of every prepared image, split by split.

    Collective under torchrun: every worker computes its share, rank 0 writes. With
    `cache_dir`, only images without a cached feature vector go through the network
    (imgpipe.featurize says what the cache key is made of). `runtime` and `precision`:
    what runs the network (imgpipe.runtimes); the exported network is cached there too.
    """
    settings = FeatureSettings(backbone_name, pretrained, weights, input_size, batch_size,
                               device=(device or torch.device("cpu")).type, runtime=runtime,
                               precision=precision)
    table = pd.concat([read_manifest(prepared_dir, split) for split in SPLITS],
                      ignore_index=True)
    keys = [sha[:16] for sha in table["sha256"]]  # prepare hashed every image
    with feature_rows(settings, list(table["image"]), keys, ranks, cache_dir) as (info, rows):
        if rows is None:  # a worker: rank 0 writes
            return info
        labels, image_ids = table["label_index"].to_numpy(np.int64), table["image_id"].to_numpy(str)
        with atomic_path(features_dir) as staging:
            staging.mkdir()
            for split in SPLITS:  # streamed from the store: never every feature in memory
                index = np.flatnonzero((table["split"] == split).to_numpy())
                save_split(staging, split, labels[index], image_ids[index], info.feature_dim,
                           rows.chunks(index, chunk_rows(info.feature_dim)))
                _logger.info("%s: %d images", split, len(index))
            save_backbone_info(staging, info)
            write_json(staging / CLASSES_NAME, read_classes(prepared_dir))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared-dir", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="per-image cache of features, reused across runs")
    args = parser.parse_args()

    def body() -> None:
        if distributed.relaunch("extract", load_section(DistributedParams, "distributed")):
            return
        backbone = load_section(BackboneParams, "backbone")
        params = load_section(ExtractParams, "extract")
        device = distributed.resolve_device(load_section(RunParams, None).device)
        with distributed.process_group(device) as ranks:
            extract(prepared_dir=args.prepared_dir, features_dir=args.features_dir,
                    backbone_name=backbone.name, pretrained=backbone.pretrained,
                    weights=backbone.weights,
                    batch_size=params.batch_size, input_size=backbone.input_size,
                    device=device, ranks=ranks, cache_dir=args.cache_dir,
                    runtime=params.runtime, precision=params.precision)

    stage.run("extract", body)


if __name__ == "__main__":
    main()
