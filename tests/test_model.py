"""The model file: one typed, versioned record beside the weights, refused when foreign."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgpipe.errors import BackboneError
from imgpipe.model import FORMAT_VERSION, ModelRecord, load_model
from imgpipe.predict import Predictor


def test_the_record_round_trips_what_evaluate_and_predict_read(trained) -> None:
    model, record = load_model(trained["model"])
    assert isinstance(record, ModelRecord)
    assert record.classes == ["one", "seven", "zero"]
    assert (record.backbone.name, record.image_size, record.freeze) == (
        "efficientnet_lite0", 64, "all")
    assert model.head.out_features == len(record.classes)
    predictor = Predictor(trained["model"])
    assert (predictor.classes, predictor.image_size) == (record.classes, 64)


def test_a_file_of_the_previous_format_names_the_fix(trained, tmp_path: Path) -> None:
    payload = torch.load(trained["model"], weights_only=True)
    record = payload.pop("record")
    old = tmp_path / "old.pt"  # format 1: the fields at the top level
    torch.save({**payload, "format_version": 1, "classes": record["classes"],
                "backbone": record["backbone"], "preprocess": {"image_size": 64}}, old)
    message = (f"model file format 1, this version reads {FORMAT_VERSION}; "
               "re-run `dvc repro finetune_full`")
    with pytest.raises(BackboneError, match=message):
        load_model(old)
    with pytest.raises(BackboneError, match=message):
        Predictor(old)


def test_foreign_files_are_refused_as_not_model_files(probed, tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not a model file of this pipeline"):
        load_model(probed["head"])  # the linear probe's file
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    with pytest.raises(BackboneError, match=r"(?s)not a model file .*finetune_full writes"):
        load_model(text)


def test_a_record_with_missing_fields_names_them(trained, tmp_path: Path) -> None:
    payload = torch.load(trained["model"], weights_only=True)
    del payload["record"]["best_epoch"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(BackboneError, match=r"model record has fields \[.*\], expected .*"
                                            r"'best_epoch'"):
        load_model(tmp_path / "partial.pt")
