"""Predictions on new images agree with evaluate's, from files, folders, bytes and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgpipe.__main__ import main
from imgpipe.errors import PipelineError
from imgpipe.manifest import read_manifest
from imgpipe.predict import Predictor, expand_inputs


def test_prepared_test_images_get_evaluates_predictions(trained) -> None:
    table = read_manifest(trained["prepared"], "test")
    predictions = Predictor(trained["model"]).predict(list(table["file"]))
    expected = pd.read_csv(trained["predictions"])
    assert [p.predicted for p in predictions] == list(expected["predicted"])
    np.testing.assert_allclose([p.probability for p in predictions], expected["probability"],
                               atol=6e-5)  # evaluate writes 4 decimals: half a step, and noise


def test_raw_source_images_get_the_same_classes(trained, digits_dir: Path) -> None:
    table = read_manifest(trained["prepared"], "test")
    sources = [digits_dir / source for source in table["source"]]
    predictions = Predictor(trained["model"]).predict(sources)
    expected = pd.read_csv(trained["predictions"])
    assert [p.predicted for p in predictions] == list(expected["predicted"])


def test_bytes_and_paths_give_the_same_probabilities(trained, digits_dir: Path) -> None:
    path = sorted((digits_dir / "seven").iterdir())[0]
    predictor = Predictor(trained["model"])
    from_path, from_bytes = predictor.probabilities([path, path.read_bytes()])
    np.testing.assert_array_equal(from_path, from_bytes)
    assert from_path.sum() == pytest.approx(1.0, abs=1e-5)


def test_cli_writes_path_class_probability_and_top_k(trained, digits_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    main(["predict", str(digits_dir / "one"), str(sorted((digits_dir / "zero").iterdir())[0]),
          "--model", str(trained["model"]), "--out", str(out), "--top-k", "2"])
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "predicted", "probability", "top_k"]
    assert len(table) == 11
    assert (table["predicted"][:10] == "one").mean() >= 0.8
    first_top = table["top_k"][0].split(";")
    assert len(first_top) == 2 and first_top[0].split(":")[0] == table["predicted"][0]


def test_unreadable_input_names_the_file(trained, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    with pytest.raises(PipelineError, match="broken.jpg: cannot read the image"):
        Predictor(trained["model"]).predict([broken])


def test_folders_expand_to_their_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/notes.txt", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert expand_inputs([tmp_path / "a"]) == [tmp_path / "a/b/y.PNG", tmp_path / "a/x.jpg"]
