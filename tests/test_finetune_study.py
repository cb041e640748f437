"""scripts/finetune_study.py: its probe is the pipeline's, with the committed params."""

from __future__ import annotations

from pathlib import Path

import finetune_study
import pandas as pd
import pytest
import yaml

from imgpipe.errors import ParamsError
from imgpipe.params import BackboneParams

COMMITTED = yaml.safe_load((finetune_study.PARAMS_FILE).read_text())


def test_the_study_prepares_extracts_and_fits_with_the_committed_params(
        digits_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """What `dvc exp run` would run, extract's runtime included: the README's in-process
    tables compare with `dvc exp run` rows only if both start from the same probe."""
    calls: dict[str, dict] = {}

    def spy(name: str, stage):
        def run(**kwargs):
            calls[name] = kwargs
            return stage(**kwargs)
        return run

    monkeypatch.setattr(finetune_study, "prepare", spy("prepare", finetune_study.prepare))
    monkeypatch.setattr(finetune_study, "extract", spy("extract", finetune_study.extract))
    backbone = BackboneParams("efficientnet_lite0", pretrained=True, input_size=32)
    head = finetune_study.probe(digits_dir, tmp_path, backbone, "accuracy", "none")

    prepare, extract = COMMITTED["prepare"], COMMITTED["extract"]
    assert {key: calls["prepare"][key] for key in ("seed", "val_fraction", "test_fraction",
                                                   "shard_size", "on_error")} == {
        key: prepare[key] for key in ("seed", "val_fraction", "test_fraction", "shard_size",
                                      "on_error")}
    assert calls["prepare"]["image_size"] == 32  # --input-size, for prepare and network
    assert {key: calls["extract"][key] for key in ("batch_size", "runtime", "precision")} == {
        key: extract[key] for key in ("batch_size", "runtime", "precision")}
    sweep = pd.read_csv(head.with_suffix(".csv"))
    assert list(sweep["c"]) == COMMITTED["train_head"]["c_grid"]
    assert head.is_file()


def test_another_params_file_gives_another_split(digits_dir: Path, tmp_path: Path) -> None:
    """`--params` with another prepare.seed: the study prepares that seed's split (what the
    README's other-splits rows ran) and fits that file's C grid."""
    other = dict(COMMITTED)
    other["prepare"] = {**COMMITTED["prepare"], "seed": 1}
    other["train_head"] = {**COMMITTED["train_head"], "c_grid": [0.5]}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(other))
    backbone = BackboneParams("efficientnet_lite0", pretrained=True, input_size=32)
    splits = {}
    for name, file in (("committed", finetune_study.PARAMS_FILE), ("other", params_file)):
        head = finetune_study.probe(digits_dir, tmp_path / name, backbone, "accuracy", "none",
                                    file)
        splits[name] = pd.read_csv(tmp_path / name / "prepared" / "splits.csv")
        grid = list(pd.read_csv(head.with_suffix(".csv"))["c"])
    assert grid == [0.5]
    with pytest.raises(ParamsError, match="its own --work"):  # the seed-1 split is kept there
        finetune_study.probe(digits_dir, tmp_path / "other", backbone, "accuracy", "none",
                             finetune_study.PARAMS_FILE)
    assert list(splits["committed"]["image_id"]) == list(splits["other"]["image_id"])
    assert list(splits["committed"]["split"]) != list(splits["other"]["split"])
