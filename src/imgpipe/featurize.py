"""One feature vector per prepared image, through the per-image cache: what extract caches.

A cached vector is valid exactly when it would be computed again the same: same image
(its sha256, which prepare computed), same code, same values passed in. So the cache key
is made of
    - `FeatureSettings`, every value the computation is given, field by field, with the
      runtime that actually ran (`auto` resolved: features of different runtimes never
      share a folder);
    - what the settings leave to the machine: the weights file's digest, torch's thread
      count, the torch and torchvision versions, the runtime's version;
    - the code: the digest of every file in this module's import closure (see
      imgpipe.closure), which holds the decoding, the transform, the network, the
      forward loop and the cache's own storage. An edit to any other module (an error
      message, the params schema, MLflow logging) keeps the key.
Everything this computation uses must therefore be imported here, never passed in as a
function from elsewhere: tests/test_cache_keys.py traces a run and checks it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from imgpipe import distributed
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone, inference_trunk
from imgpipe.cache import ItemStore, file_digest
from imgpipe.closure import code_digests
from imgpipe.data import forward_sharded
from imgpipe.distributed import ALONE, Ranks, resolve_device
from imgpipe.errors import PipelineError
from imgpipe.exported import ExportKey
from imgpipe.runtimes import load_runner, version
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)
CACHE_KIND = "features"
ROW_DTYPE = np.dtype("<f4")  # cached rows: little-endian float32 bytes
_PIECE_IMAGES = 8192  # images per forward pass between stores: 40 MiB of 1,280-d rows


@dataclass(frozen=True)
class FeatureSettings:
    """Every value passed into the per-image computation; each field is part of the key.

    A new setting (a runtime, a precision) is a new field here, and so in the key.
    """

    backbone: str  # backbone.name
    pretrained: bool  # backbone.pretrained
    weights: str | None  # backbone.weights: a local state-dict file, or None
    input_size: int | None  # backbone.input_size, pixels; None: the backbone's own
    batch_size: int  # extract.batch_size: batch shape picks the kernels (rounding ~1e-6)
    device: str = "cpu"  # device type, cpu or cuda (under torchrun, each worker's own GPU)
    runtime: str = "torch"  # extract.runtime; in the key: the one that ran (never auto)
    precision: str = "f32"  # extract.precision: f32 | bf16 (OpenVINO only)


def cache_key(settings: FeatureSettings) -> dict[str, Any]:
    """Everything a cached feature vector depends on besides the image itself.

    `settings.runtime` is the runtime that ran, not `auto` (`image_features` resolves it).
    """
    if settings.runtime == "auto":
        raise ValueError("cache_key needs the runtime that ran, not auto")
    return {**asdict(settings),
            "weights_sha256": settings.weights and file_digest(Path(settings.weights)),
            "threads": torch.get_num_threads(),  # thread count picks the kernels too
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "runtime_version": version(settings.runtime),
            "code": code_digests(__name__)}


@dataclass(frozen=True)
class StoredRows:
    """Every image's feature row, in the store: read back a block of rows at a time."""

    store: ItemStore
    keys: Sequence[str]  # content id of each image, in the caller's order
    dim: int  # D

    def chunks(self, indices: Sequence[int], step: int) -> Iterator[np.ndarray]:
        """The rows of the images at `indices`, in that order: (<= step, D) float32 blocks."""
        for start in range(0, len(indices), step):
            part = indices[start:start + step]
            block = np.empty((len(part), self.dim), dtype=np.float32)
            wanted: dict[str, list[int]] = defaultdict(list)  # key -> rows of the block
            for row, index in enumerate(part):
                wanted[self.keys[index]].append(row)
            for key, value in self.store.get_many(list(wanted)):
                block[wanted.pop(key)] = np.frombuffer(value, dtype=ROW_DTYPE)
            if wanted:  # the cache folder was deleted while extract ran
                raise PipelineError(f"{len(wanted)} cached feature rows vanished from "
                                    f"{self.store.folder} during extract: run `dvc repro "
                                    "extract` again")
            yield block


@contextmanager
def feature_rows(settings: FeatureSettings, images: Sequence[Any], keys: Sequence[str],
                 ranks: Ranks = ALONE, cache_dir: Path | None = None,
                 ) -> Iterator[tuple[BackboneInfo, StoredRows | None]]:
    """Pooled penultimate features of the images (ShardMembers), kept in a row store.

    Collective under torchrun: every worker computes its share of the batches. With
    `cache_dir`, only images whose key (content hash) has no cached vector go through
    the network, and the new vectors are stored there; without it, in a temporary store
    removed on exit. Images go through the network `_PIECE_IMAGES` at a time and each
    piece is stored at once: memory stays bounded at any N, and an interrupted run keeps
    the pieces it finished.

    Yields:
        The backbone's identity, and on rank 0 the rows (None on other ranks).
    """
    device = resolve_device(settings.device)
    backbone = build_backbone(settings.backbone, pretrained=settings.pretrained,
                              weights=settings.weights, input_size=settings.input_size)
    info = BackboneInfo.of(backbone, settings.pretrained, settings.weights)
    _logger.info("%s (%s): %d-d features at %d px", settings.backbone,
                 "ImageNet" if settings.pretrained else "random init", info.feature_dim,
                 info.input_size)
    runtime, trunk = load_runner(settings.runtime, settings.precision, inference_trunk(backbone),
                                 _export_key(settings, backbone.input_size), cache_dir, device)
    # On several machines: the same images, runtime (`auto` may differ) and thread count
    # (it picks the kernels, and it is in the cache key node 0 stores the rows under).
    distributed.same_everywhere(
        "the images, runtime or thread count", (_digest(keys), runtime, torch.get_num_threads()),
        "give every node node 0's data/prepared, environment (make setup) and thread count "
        "(OMP_NUM_THREADS), or set extract.runtime explicitly")
    settings = replace(settings, runtime=runtime)
    _logger.info("runtime %s %s, %s", runtime, version(runtime), settings.precision)
    with ExitStack() as cleanup:
        store, todo = None, list(range(len(images)))
        if cache_dir is not None:
            store = ItemStore(cache_dir, CACHE_KIND, cache_key(settings))
            cleanup.callback(store.close)
            missing = store.missing(keys)
            todo = [i for i, key in enumerate(keys) if key in missing]
        todo = distributed.from_main(todo)  # node 0's cache decides what every worker shares out
        if store is not None:
            _logger.info("%d of %d images have cached features (%s)", len(images) - len(todo),
                         len(images), store.folder)
        if not ranks.main:  # only rank 0 reads and writes rows
            cleanup.close()
            store = None
        elif store is None:
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="extract-")))
            store = ItemStore(scratch, CACHE_KIND, {})
            cleanup.callback(store.close)
        transform = eval_transform(backbone.input_size, backbone.mean, backbone.std)
        step = settings.batch_size * ranks.world  # whole rounds of batches: the same batches
        step *= max(1, _PIECE_IMAGES // step)
        pieces = -(-len(todo) // step)
        for number, start in enumerate(range(0, len(todo), step), 1):
            part = todo[start:start + step]
            computed = forward_sharded(trunk, [images[i] for i in part], transform,
                                       settings.batch_size,
                                       "extract" if pieces == 1 else f"extract {number}/{pieces}",
                                       ranks, device=device, pad_last=True)
            if store is not None:
                rows = computed.reshape(len(part), info.feature_dim)
                store.put((keys[i], row.astype(ROW_DTYPE).tobytes()) for i, row in zip(part, rows))
        yield info, (None if store is None else StoredRows(store, keys, info.feature_dim))


def _digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _export_key(settings: FeatureSettings, input_size: int) -> ExportKey:
    return ExportKey(settings.backbone, settings.pretrained,
                     settings.weights and file_digest(Path(settings.weights)),
                     settings.batch_size, input_size)
