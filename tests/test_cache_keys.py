"""The per-image cache keys are derived from the code that computes one image's value:
every library function that runs while an image is prepared or featurized, served from
the cache or not, lives in a file the key hashes; an edit elsewhere keeps the key."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgpipe
from imgpipe.closure import SRC_DIR, code_digests
from imgpipe.featurize import FeatureSettings, cache_key, feature_rows
from imgpipe.prepare_image import PrepareSettings, open_store, prepare_one
from imgpipe.shards import ShardMember
from imgpipe.sources import Sample

_SETTINGS = FeatureSettings("efficientnet_lite0", pretrained=False, weights=None,
                            input_size=32, batch_size=2)


def _library_files_run_by(work: Callable[[], object]) -> set[str]:
    """The `imgpipe/*.py` files (relative to src/) with a function called during `work()`."""
    package = Path(imgpipe.__file__).resolve().parent
    called: set[str] = set()

    def profile(frame, event, arg) -> None:
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.parent == package and path.name != "__init__.py":
                called.add(f"imgpipe/{path.name}")

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return called


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def read_all(members: list[ShardMember], keys: list[str], cache_dir: Path) -> list:
    with feature_rows(_SETTINGS, members, keys, cache_dir=cache_dir) as (_, rows):
        return list(rows.chunks(range(len(keys)), len(keys)))


def test_every_library_file_a_feature_computation_runs_is_hashed_into_its_key(
        images: list[Path], tmp_path: Path) -> None:
    keys = [f"{i:016x}" for i in range(len(images))]
    members = [ShardMember(path, 0, path.stat().st_size) for path in images]  # whole files
    hashed, seen = set(cache_key(_SETTINGS)["code"]), set()
    for _ in range(2):  # computed and stored, then served from the cache
        called = _library_files_run_by(lambda: read_all(members, keys, tmp_path / "cache"))
        assert called - hashed == set(), "run by the computation but not in the cache key"
        seen |= called
    # The trace sees what the issue found missing from the old hand-typed key (data.py
    # runs only in the first run: the second computes nothing).
    assert {"imgpipe/cache.py", "imgpipe/distributed.py", "imgpipe/data.py"} <= seen


def test_every_library_file_preparing_an_image_runs_is_hashed_into_its_key(
        images: list[Path], tmp_path: Path) -> None:
    settings = PrepareSettings(image_size=24)
    store = open_store(tmp_path / "cache", settings)
    hashed = set(code_digests("imgpipe.prepare_image"))
    for _ in range(2):  # decoded and stored, then served from the cache
        called = _library_files_run_by(lambda: [
            prepare_one(Sample(path.parent, path.name, "a"), settings, store) for path in images])
        assert called - hashed == set(), "run by the computation but not in the cache key"
    assert {"imgpipe/cache.py", "imgpipe/images.py"} <= called


# weights: a file, keyed by its path and its contents (the next test).
@pytest.mark.parametrize("field", [f.name for f in fields(FeatureSettings) if f.name != "weights"])
def test_every_feature_setting_changes_the_key(field: str) -> None:
    other = {"backbone": "efficientnet_lite1", "pretrained": True, "input_size": 64,
             "batch_size": 3, "device": "cuda", "runtime": "openvino",
             "precision": "bf16"}[field]
    assert cache_key(replace(_SETTINGS, **{field: other})) != cache_key(_SETTINGS)


def test_a_weights_file_is_keyed_by_its_contents(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    settings = replace(_SETTINGS, weights=str(weights))
    before = cache_key(settings)
    weights.write_bytes(b"two")
    assert cache_key(settings) != before


@pytest.mark.parametrize(("module", "edited", "changes"), [
    ("imgpipe.featurize", "cache.py", True),  # the cache's own storage format
    ("imgpipe.featurize", "distributed.py", True),  # how batches are dealt to workers
    ("imgpipe.featurize", "transforms.py", True),
    ("imgpipe.featurize", "shards.py", True),  # how a prepared image is read
    ("imgpipe.featurize", "efficientnet_lite.py", True),
    ("imgpipe.featurize", "params.py", False),  # the params schema
    ("imgpipe.featurize", "augment.py", False),  # fine-tuning only
    ("imgpipe.featurize", "tracking.py", False),  # MLflow logging
    ("imgpipe.prepare_image", "images.py", True),
    ("imgpipe.prepare_image", "cache.py", True),
    ("imgpipe.prepare_image", "backbones.py", False),
])
def test_a_one_line_edit_changes_the_key_exactly_when_the_file_is_in_the_closure(
        tmp_path: Path, module: str, edited: str, changes: bool) -> None:
    src = tmp_path / "src"
    shutil.copytree(SRC_DIR / "imgpipe", src / "imgpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digests(module, src_dir=src)
    with (src / "imgpipe" / edited).open("a") as handle:
        handle.write("# edited\n")
    assert (code_digests(module, src_dir=src) != before) is changes
