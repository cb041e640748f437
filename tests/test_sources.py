from __future__ import annotations

from pathlib import Path

import pytest

from imgpipe.errors import DataError
from imgpipe.sources import list_samples


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_image_folder_lists_images_and_skips_the_rest(tmp_path: Path) -> None:
    for name in ("cat/a.jpg", "cat/b.PNG", "dog/sub dir/é.jpeg", "dog/notes.txt",
                 "dog/.DS_Store", "dog/Thumbs.db", "stray.jpg", ".thumbnails/t.jpg",
                 "cat/.cache/c.jpg"):
        _touch(tmp_path / name)
    (tmp_path / "empty").mkdir()
    samples, skipped = list_samples(tmp_path)
    assert [(s.label, s.relpath) for s in samples] == [
        ("cat", "cat/a.jpg"), ("cat", "cat/b.PNG"), ("dog", "dog/sub dir/é.jpeg")]
    reasons = {s.relpath: s.reason for s in skipped}
    assert reasons["dog/notes.txt"].startswith("not an image file")
    assert reasons["dog/.DS_Store"].startswith("not an image file")
    assert reasons["dog/Thumbs.db"].startswith("not an image file")
    assert reasons["stray.jpg"] == "not inside a class folder"
    assert reasons["empty/"] == "class folder holds no images"
    assert reasons["cat/.cache/c.jpg"].startswith("not an image file")  # hidden folder
    assert reasons[".thumbnails/t.jpg"].startswith("not an image file")


def test_csv_that_is_not_utf8_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_bytes("path,label\na.jpg,café\n".encode("cp1252"))
    with pytest.raises(DataError, match="is not UTF-8 text.*save it as UTF-8 CSV"):
        list_samples(tmp_path / "labels.csv")


def test_csv_manifest_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    _touch(tmp_path / "img" / "a.jpg")
    _touch(tmp_path / "img" / "b.jpg")
    _touch(tmp_path.parent / "secret.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,label\nimg/a.jpg,cat\nimg/b.jpg,dog\nimg/a.jpg,cat\nimg/b.jpg,cat\n"
        "img/missing.jpg,cat\n../secret.jpg,cat\nimg/a.jpg,\n", encoding="utf-8")
    samples, skipped = list_samples(tmp_path / "labels.csv")
    assert [(s.relpath, s.label) for s in samples] == [("img/a.jpg", "cat"), ("img/b.jpg", "dog")]
    reasons = [s.reason for s in skipped]
    assert reasons == ["line 4: duplicate row",
                       "line 5: listed again with another label ('dog' kept)",
                       "line 6: file not found",
                       f"line 7: path leaves the dataset folder {tmp_path.resolve()}",
                       "line 8: empty path or label"]


def test_csv_without_the_needed_columns_says_which(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,class\na.jpg,cat\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column\\(s\\) path, label"):
        list_samples(tmp_path / "labels.csv")


def test_missing_source_names_the_param(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.source: '.*nowhere' does not exist"):
        list_samples(tmp_path / "nowhere")
