"""The prepare stage on real image files made in the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from imgpipe.errors import DataError
from imgpipe.manifest import read_classes, read_manifest
from stages.prepare import prepare


def run_prepare(source: Path, tmp_path: Path, **overrides) -> dict:
    arguments = dict(source=source, out_dir=tmp_path / "prepared",
                     metrics_path=tmp_path / "prepare.json",
                     report_path=tmp_path / "skipped.csv", seed=0, val_fraction=0.2,
                     test_fraction=0.2, image_size=48)
    return prepare(**{**arguments, **overrides})


def test_writes_manifest_classes_and_resized_rgb_images(digits_dir: Path,
                                                        tmp_path: Path) -> None:
    metrics = run_prepare(digits_dir, tmp_path)
    assert metrics["images"] == {"train": 18, "val": 6, "test": 6}
    assert read_classes(tmp_path / "prepared") == ["one", "seven", "zero"]
    table = read_manifest(tmp_path / "prepared")
    assert len(table) == 30 and set(table["split"]) == {"train", "val", "test"}
    with Image.open(table["file"][0]) as image:
        assert (image.mode, image.size) == ("RGB", (48, 48))
    assert json.loads((tmp_path / "prepare.json").read_text()) == metrics


def test_same_inputs_give_identical_outputs(digits_dir: Path, tmp_path: Path) -> None:
    run_prepare(digits_dir, tmp_path / "a")
    run_prepare(digits_dir, tmp_path / "b")
    for name in ("manifest.csv", "classes.json"):
        assert ((tmp_path / "a" / "prepared" / name).read_bytes()
                == (tmp_path / "b" / "prepared" / name).read_bytes())


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
    assert reasons["one/garbage.jpg"].startswith("unreadable image")
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
