"""Per-image caches: after adding images, prepare and extract process only the new ones,
their outputs equal those of a run without any cache, and the cache stays a handful of
files whatever the number of images."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from make_digits import render_digits

import imgpipe.featurize
import imgpipe.prepare_image
from counting import count_calls
from imgpipe.cache import FileCache, ItemStore
from imgpipe.features import load_split
from stages.extract import extract
from stages.prepare import prepare

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`base`: 3 classes x 10 digits; `grown`: the same plus 2 new digits per class."""
    root = tmp_path_factory.mktemp("grow")
    render_digits(root / "base", classes=[0, 1, 7], per_class=10, size=32)
    render_digits(root / "grown", classes=[0, 1, 7], per_class=12, size=32)
    return {"base": root / "base", "grown": root / "grown"}


def run_prepare(source: Path, out: Path, cache_dir: Path | None, image_size: int = 64) -> Path:
    prepare(source=source, out_dir=out / "prepared", metrics_path=out / "prepare.json",
            report_path=out / "skipped.csv", seed=0, val_fraction=0.2, test_fraction=0.2,
            image_size=image_size, shard_size=8, cache_dir=cache_dir)
    return out / "prepared"


def run_extract(prepared: Path, out: Path, cache_dir: Path | None, **backbone) -> Path:
    options = {"backbone_name": "efficientnet_lite0", "pretrained": True, "weights": None,
               **backbone}
    extract(prepared_dir=prepared, features_dir=out / "features", batch_size=8,
            cache_dir=cache_dir, **options)
    return out / "features"


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """Counts images prepare decodes and resizes."""
    return count_calls(monkeypatch, imgpipe.prepare_image, "square_resize")


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """Counts images extract sends through the network."""
    counts: list[int] = []
    real = imgpipe.featurize.forward_sharded

    def counting(module, items, *args, **kwargs):
        counts.append(len(items))
        return real(module, items, *args, **kwargs)

    monkeypatch.setattr(imgpipe.featurize, "forward_sharded", counting)
    return counts


def test_cache_folders_are_keyed_by_everything_given(tmp_path: Path) -> None:
    one = ItemStore(tmp_path, "prepared", {"image_size": 64, "code": "a"})
    again = ItemStore(tmp_path, "prepared", {"code": "a", "image_size": 64})
    other = ItemStore(tmp_path, "prepared", {"image_size": 96, "code": "a"})
    assert one.folder == again.folder != other.folder
    assert pd.read_json(one.folder / "key.json", typ="series")["image_size"] == 64


def test_the_store_returns_what_was_put_and_keeps_the_first_value(tmp_path: Path) -> None:
    store = ItemStore(tmp_path, "features", {})
    store.put([("a", b"one"), ("b", b"\x00two")])
    store.put([("a", b"other"), ("c", b"")])
    assert store.get("a") == b"one" and store.get("z") is None
    assert dict(store.get_many(["c", "b", "z"])) == {"b": b"\x00two", "c": b""}
    assert store.missing(["a", "z", "y"]) == {"z", "y"}
    assert len(store) == 3


def test_a_failed_put_leaves_no_entry(tmp_path: Path) -> None:
    store = ItemStore(tmp_path, "features", {})

    def rows():
        yield "abc", b"first"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.put(rows())
    assert store.missing(["abc"]) == {"abc"}


def test_a_failed_file_write_leaves_no_entry(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, "exported", {})

    def crash(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.store("model", ".onnx", crash)
    assert not cache.has("model", ".onnx")
    assert [p.name for p in cache.folder.iterdir()] == ["key.json"]


def _put_many(cache_dir: Path, writer: int) -> None:
    store = ItemStore(cache_dir, "features", {})
    for i in range(200):  # one transaction each: the two processes interleave
        store.put([(f"{i:04d}", f"{writer}".encode()), (f"w{writer}-{i:04d}", b"x")])
    store.close()


def test_two_processes_can_write_one_store_at_once(tmp_path: Path) -> None:
    """Queued experiments run side by side (`dvc queue start -j 2`) share the cache."""
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_put_many, args=(tmp_path, n)) for n in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    store = ItemStore(tmp_path, "features", {})
    assert len(store) == 200 + 2 * 200
    assert {store.get(f"{i:04d}") for i in range(200)} <= {b"1", b"2"}


def test_prepare_decodes_only_new_images_and_matches_an_uncached_run(
        datasets, tmp_path: Path, decoded: list[int]) -> None:
    cache = tmp_path / "cache"
    run_prepare(datasets["base"], tmp_path / "first", cache)
    assert len(decoded) == 30
    grown = run_prepare(datasets["grown"], tmp_path / "second", cache)
    assert len(decoded) == 30 + 6
    fresh = run_prepare(datasets["grown"], tmp_path / "fresh", cache_dir=None)
    for name in ("manifest.csv", "splits.csv"):
        assert (grown / name).read_text() == (fresh / name).read_text()
    shards = sorted(p.name for p in (fresh / "shards").iterdir())
    assert len(shards) >= 36 // 8 and shards == sorted(p.name for p in (grown / "shards").iterdir())
    for name in shards:
        assert (grown / "shards" / name).read_bytes() == (fresh / "shards" / name).read_bytes()


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_the_cache_is_a_few_files_whatever_the_number_of_images(
        datasets, tmp_path: Path, runtime: str) -> None:
    counts = []
    for name in ("base", "grown"):  # 30 and 36 images, each into an empty cache
        cache = tmp_path / name / "cache"
        prepared = run_prepare(datasets[name], tmp_path / name, cache)
        run_extract(prepared, tmp_path / name, cache, runtime=runtime)
        files = [p for p in cache.rglob("*") if p.is_file()]
        # Per key folder: key.json, the store (and SQLite's write-ahead log while a
        # connection is open), or the exported network.
        assert {p.name for p in files} <= {"key.json", "items.sqlite", "items.sqlite-wal",
                                            "items.sqlite-shm", "model.onnx"}
        assert sum(p.name == "items.sqlite" for p in files) == 2  # prepared, features
        counts.append(len(files))
    assert counts[0] == counts[1] <= 6


def test_prepare_with_another_image_size_decodes_everything_again(
        datasets, tmp_path: Path, decoded: list[int]) -> None:
    cache = tmp_path / "cache"
    run_prepare(datasets["base"], tmp_path / "first", cache, image_size=64)
    run_prepare(datasets["base"], tmp_path / "second", cache, image_size=48)
    assert len(decoded) == 60
    assert len(list((cache / "prepared").iterdir())) == 2


# The runtimes too: 30 then 6 images (other batch mates, other padding) equal 36 at once.
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_extract_computes_only_new_images_and_matches_an_uncached_run(
        datasets, tmp_path: Path, forwarded: list[int], runtime: str) -> None:
    cache = tmp_path / "cache"
    base = run_prepare(datasets["base"], tmp_path / "base", cache)
    grown = run_prepare(datasets["grown"], tmp_path / "grown", cache)
    run_extract(base, tmp_path / "base", cache, runtime=runtime)
    cached = run_extract(grown, tmp_path / "grown", cache, runtime=runtime)
    assert forwarded == [30, 6]
    fresh = run_extract(grown, tmp_path / "fresh", cache_dir=None, runtime=runtime)
    for split in SPLITS:
        one, two = load_split(fresh, split), load_split(cached, split)
        assert np.array_equal(one.image_ids, two.image_ids)
        assert np.array_equal(one.labels, two.labels)
        assert np.array_equal(one.features, two.features)
    assert (cached / "backbone.json").read_text() == (fresh / "backbone.json").read_text()


def test_extract_recomputes_for_another_backbone_input_size_or_prepared_image(
        datasets, tmp_path: Path, forwarded: list[int]) -> None:
    cache = tmp_path / "cache"
    prepared = run_prepare(datasets["base"], tmp_path / "a", cache)
    run_extract(prepared, tmp_path / "a", cache)
    run_extract(prepared, tmp_path / "b", cache)  # all cached
    run_extract(prepared, tmp_path / "c", cache, pretrained=False)
    run_extract(prepared, tmp_path / "d", cache, input_size=96)
    resized = run_prepare(datasets["base"], tmp_path / "e", cache, image_size=48)
    run_extract(resized, tmp_path / "e", cache)  # other pixels: other content hashes
    assert forwarded == [30, 30, 30, 30]  # the all-cached run (b) sent nothing through


def test_an_interrupted_extract_keeps_the_pieces_it_finished(
        datasets, tmp_path: Path, forwarded: list[int], monkeypatch) -> None:
    cache = tmp_path / "cache"
    prepared = run_prepare(datasets["base"], tmp_path / "a", cache)
    monkeypatch.setattr(imgpipe.featurize, "_PIECE_IMAGES", 16)  # two batches of 8 a piece
    counting = imgpipe.featurize.forward_sharded

    def failing_second(module, items, *args, **kwargs):
        if len(forwarded) == 1:
            raise KeyboardInterrupt  # the user stops extract during the second piece
        return counting(module, items, *args, **kwargs)

    monkeypatch.setattr(imgpipe.featurize, "forward_sharded", failing_second)
    with pytest.raises(KeyboardInterrupt):
        run_extract(prepared, tmp_path / "a", cache)
    assert not (tmp_path / "a" / "features").exists()  # nothing half-written
    monkeypatch.setattr(imgpipe.featurize, "forward_sharded", counting)
    run_extract(prepared, tmp_path / "a", cache)
    assert forwarded == [16, 14]  # the first piece came from the cache
    whole = run_extract(prepared, tmp_path / "b", cache_dir=None)
    for split in SPLITS:
        assert np.array_equal(load_split(whole, split).features,
                              load_split(tmp_path / "a" / "features", split).features)
