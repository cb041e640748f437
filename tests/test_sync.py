"""What sync-mlflow exports of a commit's prepared folder, by the manifest's layout."""

from __future__ import annotations

from pathlib import Path

from imgpipe.sync import _index_beside


def test_a_per_shard_manifest_brings_the_split_classes_and_every_shard_index(
        tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("shard,images,sha256\nshards/00000.tar,3,aa\nshards/00001.tar,2,bb\n")
    assert _index_beside(manifest) == ["splits.csv", "classes.json", "preprocess.json",
                                       "shards/00000.csv", "shards/00001.csv"]


def test_an_older_manifest_or_none_brings_the_classes_only(tmp_path: Path) -> None:
    """A commit before the per-shard layout has no splits.csv: asking DVC for it would
    warn on every such commit."""
    manifest = tmp_path / "manifest.csv"
    assert _index_beside(manifest) == ["classes.json"]
    manifest.write_text("image_id,shard,offset,size,source,label,label_index,split,sha256\n")
    assert _index_beside(manifest) == ["classes.json"]
