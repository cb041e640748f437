"""Cached backbone features on disk: one .npz per split plus the backbone's identity.

    <features_dir>/train.npz   features (N, D) float32, labels (N,) int64, image_ids (N,) str
    <features_dir>/backbone.json   BackboneInfo of the network that produced them
    <features_dir>/classes.json    class names, as in the prepared folder

The .npz is what `np.load` reads, written and read a chunk of rows at a time
(`save_split`, `open_split`): at a million images the features are gigabytes, and no
stage has to hold them whole. Its members carry a fixed date, so the same features give
the same file bytes.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError, PipelineError
from imgpipe.io import read_json, write_json

BACKBONE_NAME = "backbone.json"
ROW_DTYPE = np.dtype("<f4")
CHUNK_BYTES = 16 << 20  # float32 feature bytes per chunk read or written: 3,276 rows at 1,280-d
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # zip's earliest date on every member: no clock in the bytes


def chunk_rows(dim: int) -> int:
    """Rows of `dim` float32 features in one chunk of CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (ROW_DTYPE.itemsize * max(dim, 1)))


class FeatureRows(Protocol):
    """A split's features as chunks of rows, labels in memory: what the probe reads."""

    labels: np.ndarray  # (N,) int64 class indices
    dim: int  # D

    def chunks(self, reuse: bool = False) -> Iterator[np.ndarray]:
        """(n, D) float32 blocks of rows, in order, together every row once.

        With `reuse`, every block may be a view of one buffer that the next overwrites:
        for callers that are done with a block before they ask for the next.
        """
        ...


@dataclass(frozen=True)
class FeatureSet:
    """A split's features in memory."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64 class indices
    image_ids: np.ndarray  # (N,) str

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def chunks(self, reuse: bool = False) -> Iterator[np.ndarray]:
        step = chunk_rows(self.dim)
        for start in range(0, len(self.labels), step):
            yield self.features[start:start + step]


@dataclass(frozen=True)
class SplitFile:
    """A split's .npz on disk: labels and ids in memory, features read a chunk at a time."""

    path: Path
    labels: np.ndarray  # (N,) int64
    image_ids: np.ndarray  # (N,) str
    dim: int  # D
    offset: int  # where the feature rows start in the file (found once, read every pass)

    def chunks(self, reuse: bool = False) -> Iterator[np.ndarray]:
        count, step = len(self.labels), chunk_rows(self.dim)
        buffer = np.empty((min(step, count), self.dim), dtype=ROW_DTYPE)
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            for start in range(0, count, step):
                rows = min(step, count - start)
                block = buffer[:rows] if reuse else np.empty((rows, self.dim), ROW_DTYPE)
                if handle.readinto(memoryview(block).cast("B")) != block.nbytes:
                    raise DataError(f"{self.path} is truncated: run `dvc repro extract` again")
                yield block


def save_split(features_dir: Path, split: str, labels: np.ndarray, image_ids: np.ndarray,
               dim: int, chunks: Iterable[np.ndarray]) -> None:
    """Write `<split>.npz`, the (N, dim) features streamed from `chunks` in row order.

    Callers write into a staging folder (atomic as a whole). Raises PipelineError when
    the chunks hold other than N rows of `dim` features.
    """
    path = features_dir / f"{split}.npz"
    header = {"descr": ROW_DTYPE.str, "fortran_order": False, "shape": (len(labels), dim)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("labels", np.asarray(labels, np.int64)),
                            ("image_ids", np.asarray(image_ids, str))):
            with archive.open(_member(name), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        written = 0
        with archive.open(_member("features"), "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for chunk in chunks:
                if chunk.ndim != 2 or chunk.shape[1] != dim:
                    raise PipelineError(f"{split}: a chunk of shape {chunk.shape}, not (n, {dim})")
                member.write(np.ascontiguousarray(chunk, dtype=ROW_DTYPE).tobytes())
                written += len(chunk)
        if written != len(labels):
            raise PipelineError(f"{split}: {written} feature rows for {len(labels)} images")


def open_split(features_dir: Path, split: str) -> SplitFile:
    """The split's labels, ids and feature shape; features stay on disk until `chunks()`."""
    path = _split_path(features_dir, split)
    with zipfile.ZipFile(path) as archive:
        with archive.open("labels.npy") as member:
            labels = np.lib.format.read_array(member, allow_pickle=False)
        with archive.open("image_ids.npy") as member:
            image_ids = np.lib.format.read_array(member, allow_pickle=False)
    with path.open("rb") as handle:
        offset, shape = _rows_at(path, handle)
    if shape[0] != len(labels):
        raise DataError(f"{path}: {shape[0]} feature rows for {len(labels)} labels: "
                        "run `dvc repro extract` again")
    return SplitFile(path, labels, image_ids, shape[1], offset)


def load_split(features_dir: Path, split: str) -> FeatureSet:
    """The whole split in memory (tests and the benchmark compare splits)."""
    with np.load(_split_path(features_dir, split), allow_pickle=False) as archive:
        return FeatureSet(archive["features"], archive["labels"], archive["image_ids"])


def save_backbone_info(features_dir: Path, info: BackboneInfo) -> None:
    write_json(features_dir / BACKBONE_NAME, asdict(info))


def load_backbone_info(features_dir: Path) -> BackboneInfo:
    return BackboneInfo(**read_json(features_dir / BACKBONE_NAME))


def _split_path(features_dir: Path, split: str) -> Path:
    path = features_dir / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro extract` first")
    return path


def _member(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)


def _read_header(member: BinaryIO, path: Path) -> tuple[int, int]:
    """Check the features header (little-endian float32, C order, 2-d); return its shape."""
    version = np.lib.format.read_magic(member)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read(member)
    if dtype != ROW_DTYPE or fortran_order or len(shape) != 2:
        raise DataError(f"{path}: features are {dtype} {shape}, not C-ordered float32 rows: "
                        "run `dvc repro extract` again")
    return int(shape[0]), int(shape[1])


def _rows_at(path: Path, handle: BinaryIO) -> tuple[int, tuple[int, int]]:
    """Where the features array's rows start in the .npz (read in place, not unzipped),
    and their shape.

    save_split stores members uncompressed (ZIP_STORED), so the array's bytes sit in the
    file as they are, after the member's local header and the .npy header.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("features.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"{path}: features are compressed: run `dvc repro extract` again")
    handle.seek(info.header_offset)
    local = handle.read(30)  # the local file header: signature ... name and extra lengths
    if local[:4] != b"PK\x03\x04":
        raise DataError(f"{path} is not a features file: run `dvc repro extract` again")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    handle.seek(info.header_offset + 30 + name_length + extra_length)
    shape = _read_header(handle, path)  # the .npy header, checked; the rows follow it
    return handle.tell(), shape
