"""Prepared images packed into tar shards: a few hundred files for DVC, not one per image.

prepare writes the images ordered by file name, then path (stages.prepare says why), into
`shards/NNNNN.tar`, plain uncompressed tar files (`tar tf` lists them; WebDataset reads
them) whose members are `<image_id>.jpg`. Each shard's index beside it (imgpipe.manifest)
records each image's byte offset and size, so any stage reads one image with one seek, in
any order.

Where a shard ends is decided by the images themselves (content-defined boundaries, as in
rsync or restic): a shard closes after an image whose content id, read as a number, is a
multiple of `shard_size // 2`, or when it reaches `shard_size` images. Adding or removing
an image therefore rewrites only the shard it falls into (and, rarely, the next one),
not every shard after it, so `dvc push` after adding images moves only those shards.
The tar headers carry no dates, owners or permissions that vary: the same images give
the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SHARDS_DIR = "shards"
MEMBER_SUFFIX = ".jpg"
_HEADER_BYTES = tarfile.BLOCKSIZE  # one 512-byte ustar header per member (names < 100 chars)


@dataclass(frozen=True)
class ShardMember:
    """Where one prepared image's bytes are: a shard file, a byte offset and a size."""

    shard: Path
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        with self.shard.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.shard} ends before byte {self.offset + self.size}: the "
                          "prepared data is incomplete; run `dvc repro prepare` again")
        return data


def load_prepared(member: ShardMember) -> Image.Image:
    """Open a prepared image as RGB (prepared images are already upright RGB squares)."""
    with Image.open(io.BytesIO(member.read_bytes())) as image:
        return image.convert("RGB")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where `write_shards` put an image: its shard (relative to the prepared folder),
    the offset and size of its bytes in that shard, and their sha256."""

    image_id: str
    shard: str
    offset: int
    size: int
    digest: bytes  # sha256 of the bytes: 32 bytes, not 64 hex characters, per image held

    @property
    def sha256(self) -> str:
        return self.digest.hex()


def write_shards(folder: Path, images: Iterable[tuple[str, bytes]],
                 shard_size: int) -> list[Placement]:
    """Pack (image_id, encoded bytes) pairs, in the order given, into `folder/shards/`.

    Returns:
        Each image's placement, in the order given.
    """
    if shard_size < 2:
        raise ValueError(f"shard_size must be at least 2, got {shard_size}")
    (folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    placements: list[Placement] = []
    for number, shard in enumerate(_group(images, shard_size)):
        name = f"{SHARDS_DIR}/{number:05d}.tar"
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as writer:
            for image_id, data in shard:
                placements.append(Placement(image_id, name, writer.offset + _HEADER_BYTES,
                                            len(data), hashlib.sha256(data).digest()))
                writer.addfile(_header(f"{image_id}{MEMBER_SUFFIX}", len(data)),
                               io.BytesIO(data))
    return placements


def _group(images: Iterable[tuple[str, bytes]],
           shard_size: int) -> Iterator[list[tuple[str, bytes]]]:
    """The images, cut into shards after each boundary image (at most shard_size each)."""
    shard: list[tuple[str, bytes]] = []
    for image_id, data in images:
        shard.append((image_id, data))
        if len(shard) >= shard_size or _is_boundary(image_id, shard_size):
            yield shard
            shard = []
    if shard:
        yield shard


def _is_boundary(image_id: str, shard_size: int) -> bool:
    """Content ids are hex digests (uniform), so shards hold a little under shard_size / 2
    images on average (0.43 x shard_size, with the cap), and at most shard_size."""
    return int(image_id, 16) % (shard_size // 2) == 0


def _header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
