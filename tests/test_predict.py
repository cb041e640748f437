"""Predictions on new images agree with evaluate's, from files, folders, bytes and the CLI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgpipe.__main__ import build_parser, main
from imgpipe.errors import PipelineError
from imgpipe.manifest import read_manifest
from imgpipe.predict import Predictor, Unreadable, expand_inputs, predict_files


def test_prepared_test_images_get_evaluates_predictions(trained) -> None:
    table = read_manifest(trained["prepared"], "test")
    jpegs = [image.read_bytes() for image in table["image"]]  # out of their shards
    predictions = Predictor(trained["model"]).predict(jpegs)
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
    assert list(table.columns) == ["path", "predicted", "probability", "top_k", "error"]
    assert len(table) == 11 and table["error"].isna().all()
    assert (table["predicted"][:10] == "one").mean() >= 0.8
    first_top = table["top_k"][0].split(";")
    assert len(first_top) == 2 and first_top[0].split(":")[0] == table["predicted"][0]


def test_unreadable_input_names_the_file(trained, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    with pytest.raises(PipelineError, match="broken.jpg: cannot read the image"):
        Predictor(trained["model"]).predict([broken])


def test_cli_skips_unreadable_images_with_the_reason_and_says_where_it_wrote(
        trained, digits_dir: Path, tmp_path: Path, caplog) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    good = sorted((digits_dir / "seven").iterdir())[:2]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out" / "predictions.csv"
    with caplog.at_level(logging.INFO):
        main(["predict", str(folder), "--model", str(trained["model"]), "--out", str(out),
              "--batch-size", "2"])  # the bad files share a batch with a good one
    table = pd.read_csv(out).set_index("path")
    assert len(table) == 4
    reasons = table["error"].dropna()
    assert set(reasons.index) == {str(folder / "broken.jpg"), str(folder / "empty.png")}
    assert all(reason.startswith("cannot read the image") for reason in reasons)
    assert table.loc[reasons.index, "predicted"].isna().all()
    expected = Predictor(trained["model"]).predict(sorted(folder / p.name for p in good))
    assert list(table["predicted"].dropna()) == [p.predicted for p in expected]
    assert f"wrote 2 predictions to {out.resolve()} (2 unreadable input(s) skipped" in caplog.text
    assert f"skipped {folder / 'broken.jpg'}: cannot read the image" in caplog.text


def test_cli_on_error_stop_fails_naming_the_file_and_writes_nothing(
        trained, digits_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "predictions.csv"
    image = sorted((digits_dir / "one").iterdir())[0]
    with pytest.raises(SystemExit) as stopped:
        main(["predict", str(image), str(broken), "--model", str(trained["model"]),
              "--out", str(out), "--on-error", "stop"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"{broken}: cannot read the image" in error and "--on-error skip" in error
    assert not out.exists()


def test_missing_input_is_a_row_with_its_reason(trained, digits_dir: Path) -> None:
    image = sorted((digits_dir / "one").iterdir())[0]
    missing = digits_dir / "nope.png"
    results = predict_files(Predictor(trained["model"]), [missing, image])
    assert results[0] == Unreadable("not found")
    assert results[1].predicted == "one"


def test_every_cli_option_has_help_text() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_folders_expand_to_their_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/notes.txt", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert expand_inputs([tmp_path / "a"]) == [tmp_path / "a/b/y.PNG", tmp_path / "a/x.jpg"]
