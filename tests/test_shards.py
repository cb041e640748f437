"""Prepared images in tar shards: readable by tar, one seek per image, deterministic, and
an added image rewrites only the shard it lands in."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from imgpipe.shards import ShardMember, write_shards


def _images(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    """(content id, bytes) pairs of various sizes, ids as prepare makes them."""
    images = []
    for i in range(start, start + count):
        data = hashlib.sha512(str(i).encode()).digest() * (1 + i % 7)
        images.append((hashlib.sha256(data).hexdigest()[:16], data))
    return images


def _shard_digests(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "shards").iterdir()}


def test_placements_point_at_each_images_bytes_and_tar_lists_them(tmp_path: Path) -> None:
    images = _images(50)
    placements = write_shards(tmp_path, images, shard_size=8)
    assert [p.image_id for p in placements] == [image_id for image_id, _ in images]
    for (_, data), placed in zip(images, placements):
        member = ShardMember(tmp_path / placed.shard, placed.offset, placed.size)
        assert member.read_bytes() == data
        assert placed.sha256 == hashlib.sha256(data).hexdigest()
    for shard in sorted((tmp_path / "shards").iterdir()):
        with tarfile.open(shard) as archive:
            members = archive.getmembers()
            assert 1 <= len(members) <= 8  # never more than shard_size
            for info in members:
                placed = next(p for p in placements if f"{p.image_id}.jpg" == info.name)
                assert (f"shards/{shard.name}", info.offset_data, info.size) == (
                    placed.shard, placed.offset, placed.size)
                assert (info.mtime, info.uid, info.uname) == (0, 0, "")


def test_the_same_images_give_the_same_bytes(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", _images(40), shard_size=10)
    write_shards(tmp_path / "b", _images(40), shard_size=10)
    names = sorted(p.name for p in (tmp_path / "a" / "shards").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "shards").iterdir())
    for name in names:
        assert ((tmp_path / "a" / "shards" / name).read_bytes()
                == (tmp_path / "b" / "shards" / name).read_bytes())


def test_adding_images_rewrites_only_the_shards_they_land_in(tmp_path: Path) -> None:
    """What `dvc push` moves after images are added: shards are content-addressed in
    DVC's cache, so unchanged shards are not uploaded again even when renumbered."""
    images = _images(400)
    write_shards(tmp_path / "before", images, shard_size=20)
    for position in (0, 133, 400):  # one new image at the start, inside, at the end
        grown = images[:position] + _images(1, start=1000 + position) + images[position:]
        write_shards(tmp_path / f"after{position}", grown, shard_size=20)
        new = _shard_digests(tmp_path / f"after{position}") - _shard_digests(tmp_path / "before")
        assert 1 <= len(new) <= 2, position
    assert len(list((tmp_path / "before" / "shards").iterdir())) >= 400 // 20


def test_a_truncated_shard_is_reported_with_the_fix(tmp_path: Path) -> None:
    placed = write_shards(tmp_path, _images(3), shard_size=100)[-1]
    shard = tmp_path / placed.shard
    shard.write_bytes(shard.read_bytes()[:placed.offset + 10])
    with pytest.raises(OSError, match="incomplete; run `dvc repro prepare` again"):
        ShardMember(shard, placed.offset, placed.size).read_bytes()


def test_a_shard_size_below_two_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        write_shards(tmp_path, _images(3), shard_size=1)
