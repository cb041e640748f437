"""Feature files written and read a chunk of rows at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import imgpipe.features
from imgpipe.errors import DataError, PipelineError
from imgpipe.features import FeatureSet, load_split, open_split, save_split


@pytest.fixture
def small_chunks(monkeypatch) -> None:
    monkeypatch.setattr(imgpipe.features, "CHUNK_BYTES", 5 * 3 * 4)  # 5 rows of 3 floats


def rows(n: int, dim: int = 3) -> np.ndarray:
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 7


def save(folder: Path, features: np.ndarray, chunks: list[np.ndarray] | None = None) -> None:
    n = len(features)
    save_split(folder, "train", np.arange(n) % 2, np.array([f"id{i}" for i in range(n)]),
               features.shape[1], chunks if chunks is not None else [features])


def test_chunks_written_read_back_as_np_load_sees_them(tmp_path: Path, small_chunks) -> None:
    features = rows(12)
    save(tmp_path, features, [features[:4], features[4:5], features[5:]])  # any chunking
    whole = load_split(tmp_path, "train")  # plain np.load
    assert whole.features.tobytes() == features.tobytes()
    assert whole.labels.tolist() == [0, 1] * 6 and whole.image_ids[11] == "id11"
    split = open_split(tmp_path, "train")
    read = list(split.chunks())
    assert [len(chunk) for chunk in read] == [5, 5, 2]  # CHUNK_BYTES at a time
    assert np.concatenate(read).tobytes() == features.tobytes()
    assert split.dim == 3 and split.labels.tolist() == whole.labels.tolist()


def test_the_same_features_give_the_same_file_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save(tmp_path / "a", rows(6))
    save(tmp_path / "b", rows(6), [rows(6)[:1], rows(6)[1:]])
    first, second = (tmp_path / name / "train.npz" for name in "ab")
    assert first.read_bytes() == second.read_bytes()


def test_a_row_count_other_than_the_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="5 feature rows for 6 images"):
        save_split(tmp_path, "train", np.zeros(6), np.array(["a"] * 6), 3, [rows(5)])
    with pytest.raises(PipelineError, match=r"not \(n, 3\)"):
        save_split(tmp_path, "val", np.zeros(2), np.array(["a"] * 2), 3, [rows(2, dim=4)])


def test_a_missing_split_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dvc repro extract"):
        open_split(tmp_path, "val")


def test_an_in_memory_set_serves_the_same_chunks(small_chunks) -> None:
    data = FeatureSet(rows(7), np.zeros(7, np.int64), np.array(["x"] * 7))
    assert [len(chunk) for chunk in data.chunks()] == [5, 2]
    assert np.concatenate(list(data.chunks())).tobytes() == data.features.tobytes()
