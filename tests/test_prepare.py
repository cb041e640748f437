"""The prepare stage on real image files made in the test."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgpipe.errors import DataError
from imgpipe.manifest import read_classes, read_manifest
from imgpipe.shards import load_prepared
from stages.prepare import prepare


def run_prepare(source: Path, tmp_path: Path, **overrides) -> dict:
    arguments = dict(source=source, out_dir=tmp_path / "prepared",
                     metrics_path=tmp_path / "prepare.json",
                     report_path=tmp_path / "skipped.csv", seed=0, val_fraction=0.2,
                     test_fraction=0.2, image_size=48, shard_size=1000)
    return prepare(**{**arguments, **overrides})


def test_writes_manifest_classes_and_resized_rgb_images(digits_dir: Path,
                                                        tmp_path: Path) -> None:
    metrics = run_prepare(digits_dir, tmp_path)
    assert metrics["images"] == {"train": 18, "val": 6, "test": 6}
    assert read_classes(tmp_path / "prepared") == ["one", "seven", "zero"]
    table = read_manifest(tmp_path / "prepared")
    assert len(table) == 30 and set(table["split"]) == {"train", "val", "test"}
    image = load_prepared(table["image"][0])
    assert (image.mode, image.size) == ("RGB", (48, 48))
    assert json.loads((tmp_path / "prepare.json").read_text()) == metrics


def test_same_inputs_give_identical_outputs(digits_dir: Path, tmp_path: Path) -> None:
    run_prepare(digits_dir, tmp_path / "a")
    run_prepare(digits_dir, tmp_path / "b")
    for name in ("manifest.csv", "splits.csv", "classes.json", "shards/00000.tar",
                 "shards/00000.csv"):
        assert ((tmp_path / "a" / "prepared" / name).read_bytes()
                == (tmp_path / "b" / "prepared" / name).read_bytes())


def test_the_manifest_changes_whenever_a_prepared_image_does(digits_dir: Path,
                                                              tmp_path: Path) -> None:
    """Later stages depend on the manifest instead of the images (dvc.yaml): it must
    carry each image's hash, so other pixels give another manifest."""
    run_prepare(digits_dir, tmp_path / "a", image_size=48)
    run_prepare(digits_dir, tmp_path / "b", image_size=40)
    table = read_manifest(tmp_path / "a" / "prepared")
    assert list(table["sha256"]) == [hashlib.sha256(image.read_bytes()).hexdigest()
                                     for image in table["image"]]
    other = read_manifest(tmp_path / "b" / "prepared")
    assert list(other["image_id"]) == list(table["image_id"])  # same images, same split
    assert not set(other["sha256"]) & set(table["sha256"])  # every file differs


def test_bad_files_are_skipped_and_reported(digits_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "messy"
    shutil.copytree(digits_dir, source)
    (source / "one" / "empty.png").write_bytes(b"")
    (source / "one" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    good = next((source / "zero").iterdir())
    (source / "zero" / "truncated.png").write_bytes(good.read_bytes()[:60])
    shutil.copy(good, source / "seven" / "also_zero.png")  # same image in two classes
    metrics = run_prepare(source, tmp_path)
    report = pd.read_csv(tmp_path / "skipped.csv")
    reasons = dict(zip(report["path"], report["reason"]))
    assert reasons["one/empty.png"] == "empty file (0 bytes)"
    # The same words on every run (Pillow's own message names a memory address).
    assert reasons["one/garbage.jpg"] == "unreadable image: not a format Pillow recognises"
    assert reasons["zero/truncated.png"].startswith("unreadable image")
    assert "labelled 'seven' and 'zero'" in reasons["seven/also_zero.png"]
    assert "labelled 'seven' and 'zero'" in reasons[f"zero/{good.name}"]
    assert metrics["skipped"] == 5 and metrics["images_per_class"]["zero"] == 9


def test_a_single_class_stops_with_its_name_and_count(digits_dir: Path,
                                                      tmp_path: Path) -> None:
    source = tmp_path / "one_class"
    shutil.copytree(digits_dir / "one", source / "one")
    with pytest.raises(DataError, match=r"found 1 class\(es\).*'one' \(10 images\)"):
        run_prepare(source, tmp_path)
    assert not (tmp_path / "prepared").exists()  # nothing half-written left behind
    assert not list(tmp_path.glob(".prepared*"))


def _write_modes(folder: Path, seed: int) -> None:
    """One real file per awkward format, each with a distinct picture (distinct content)."""
    folder.mkdir(parents=True)
    noise = np.random.default_rng(seed).integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
    rgb = Image.fromarray(noise)
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("L").save(folder / "gray.jpg")
    Image.fromarray(noise[..., 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    rgb.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "rgb.webp")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    rgb.transpose(Image.FLIP_TOP_BOTTOM).save(folder / "rotated.jpg", exif=exif)


def test_every_awkward_format_is_prepared_as_rgb(tmp_path: Path) -> None:
    source = tmp_path / "formats"
    _write_modes(source / "mixed", seed=0)
    _write_modes(source / "mixed twice é", seed=1)  # unicode and spaces in the path
    metrics = run_prepare(source, tmp_path, val_fraction=0.3, test_fraction=0.3)
    assert metrics["skipped"] == 0
    table = read_manifest(tmp_path / "prepared")
    assert len(table) == 14
    for image in map(load_prepared, table["image"]):
        assert (image.mode, image.size) == ("RGB", (48, 48))


def test_decompression_bombs_are_skipped(digits_dir: Path, tmp_path: Path,
                                         monkeypatch) -> None:
    source = tmp_path / "bomb"
    shutil.copytree(digits_dir, source)
    Image.new("L", (200, 200)).save(source / "one" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # the 32 px digits fit
    run_prepare(source, tmp_path)
    report = pd.read_csv(tmp_path / "skipped.csv")
    assert report["reason"][0].startswith("too large to decode safely")


def test_on_error_stop_fails_on_the_first_unreadable_file(digits_dir: Path,
                                                          tmp_path: Path) -> None:
    source = tmp_path / "broken"
    shutil.copytree(digits_dir, source)
    (source / "one" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match=r"one/broken.jpg: unreadable image.*"
                                        r"prepare.on_error: skip"):
        run_prepare(source, tmp_path, on_error="stop")
    assert not (tmp_path / "prepared").exists()


def test_data_classes_keeps_and_orders_labels(digits_dir: Path, tmp_path: Path) -> None:
    metrics = run_prepare(digits_dir, tmp_path, classes=["zero", "one"])
    assert read_classes(tmp_path / "prepared") == ["zero", "one"]
    assert metrics["skipped"] == 10
    report = pd.read_csv(tmp_path / "skipped.csv")
    assert set(report["reason"]) == {"unknown label 'seven' (not in data.classes)"}


def test_data_classes_with_on_error_stop_only_leaves_other_labels_out(
        digits_dir: Path, tmp_path: Path) -> None:
    metrics = run_prepare(digits_dir, tmp_path, classes=["zero", "one"], on_error="stop")
    assert sum(metrics["images"].values()) == 20


def test_a_file_that_cannot_be_read_is_skipped(digits_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "links"
    shutil.copytree(digits_dir, source)
    (source / "one" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    run_prepare(source, tmp_path)
    report = pd.read_csv(tmp_path / "skipped.csv")
    assert report["reason"][0].startswith("cannot read the file")


def test_data_classes_naming_an_absent_label_is_refused(digits_dir: Path,
                                                        tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.classes lists 'eight'"):
        run_prepare(digits_dir, tmp_path, classes=["zero", "eight"])


def test_a_class_too_small_to_split_is_named(digits_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "small"
    shutil.copytree(digits_dir, source)
    for extra in sorted((source / "seven").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"class 'seven' has 2 image\(s\), too few"):
        run_prepare(source, tmp_path)


def test_csv_manifest_source_with_missing_files(digits_dir: Path, tmp_path: Path) -> None:
    rows = ["path,label"] + [f"{p.relative_to(digits_dir).as_posix()},{p.parent.name}"
                             for p in sorted(digits_dir.rglob("*.png"))]
    rows += ["zero/gone.png,zero", "zero/0000.png,zero"]  # a missing file, a duplicate row
    (digits_dir / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    try:
        metrics = run_prepare(digits_dir / "labels.csv", tmp_path)
    finally:
        (digits_dir / "labels.csv").unlink()
    assert sum(metrics["images"].values()) == 30 and metrics["skipped"] == 2


def _numbered_images(folder: Path, indices: range) -> None:
    """img_NNN.png in three class folders, by index: as numbered exports are named."""
    for i in indices:
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        (folder / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"class{i % 3}" / f"img_{i:03d}.png")


def test_images_added_with_later_names_rewrite_only_the_last_shards(tmp_path: Path) -> None:
    """What `dvc push` uploads after adding images: the shards whose bytes changed."""
    source = tmp_path / "source"
    _numbered_images(source, range(60))
    run_prepare(source, tmp_path / "before", shard_size=6)
    _numbered_images(source, range(60, 63))  # one new image in each class folder
    run_prepare(source, tmp_path / "after", shard_size=6)

    def shards(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (out / "prepared" / "shards").iterdir()}

    before, after = shards(tmp_path / "before"), shards(tmp_path / "after")
    assert len(before) >= 2 * 60 // 6  # a .tar and its .csv per shard
    rewritten = sorted(name for name, data in after.items() if data not in before.values())
    tars = [name for name in rewritten if name.endswith(".tar")]
    assert tars == sorted(n for n in after if n.endswith(".tar"))[-len(tars):]
    assert 1 <= len(tars) <= 2
    # Each rewritten shard's index beside it, and no other shard's.
    assert [name for name in rewritten if name.endswith(".csv")] == [
        name.replace(".tar", ".csv") for name in tars]
