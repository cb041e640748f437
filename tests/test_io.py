from __future__ import annotations

from pathlib import Path

import pytest

from imgpipe.io import atomic_path, read_json, write_json


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "features"
    target.mkdir()
    (target / "old.npz").write_text("old")
    with atomic_path(target) as staging:
        staging.mkdir()
        (staging / "new.npz").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.npz"]


def test_temporaries_of_a_killed_run_are_cleaned_up(tmp_path: Path) -> None:
    (tmp_path / ".features.deadbeef.tmp").mkdir()  # what kill -9 mid-write leaves
    (tmp_path / ".model.pt.cafe0000.tmp").write_text("partial")
    with atomic_path(tmp_path / "features") as staging:
        staging.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.cafe0000.tmp", "features"]


def test_torch_files_have_the_same_bytes_for_the_same_payload(tmp_path: Path) -> None:
    import torch

    from imgpipe.io import save_torch

    payload = {"weight": torch.arange(6.0).reshape(2, 3), "classes": ["a", "b"]}
    save_torch(tmp_path / "one.pt", payload)
    save_torch(tmp_path / "two.pt", payload)
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()
