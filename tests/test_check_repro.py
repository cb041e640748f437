"""scripts/check_repro.py: which differences pass, which fail, and the table it prints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from check_repro import (
    EXACT_OUTPUTS,
    Row,
    compare_hashes,
    compare_values,
    format_table,
    lock_hashes,
    metrics_files,
    restore,
    table_values,
    tolerance_for,
)

from conftest import REPO_ROOT

LOCK = """
schema: '2.0'
stages:
  prepare:
    outs:
    - path: data/prepared
      md5: aaa.dir
    - path: metrics/prepare.json
      md5: bbb
  train_head:
    outs:
    - path: models/head.pt
      md5: ccc
"""


def test_lock_hashes_lists_every_output() -> None:
    assert lock_hashes(LOCK) == {"data/prepared": "aaa.dir", "metrics/prepare.json": "bbb",
                                 "models/head.pt": "ccc"}


def test_an_exact_output_with_other_bytes_fails_and_a_tolerant_one_is_reported() -> None:
    committed = {"models/head.pt": "1" * 32, "models/other.pt": "2" * 32, "same": "x"}
    reproduced = {"models/head.pt": "3" * 32, "models/other.pt": "4" * 32, "same": "x"}
    rows = compare_hashes(committed, reproduced, exact={"models/head.pt": ()}, skip=set())
    assert [(r.output, r.committed, r.reproduced, r.ok) for r in rows] == [
        ("models/head.pt", "1" * 12, "3" * 12, False),
        ("models/other.pt", "2" * 12, "4" * 12, True)]


def test_the_head_must_match_only_when_its_features_did() -> None:
    exact = {"models/head.pt": ("data/features",)}
    committed = {"data/features": "f1", "models/head.pt": "h1"}
    same_features = compare_hashes(committed, {"data/features": "f1", "models/head.pt": "h2"},
                                   exact=exact, skip=set())
    assert [(r.output, r.ok) for r in same_features] == [("models/head.pt", False)]
    assert same_features[0].tolerance == "bit for bit (data/features matched)"
    other_features = compare_hashes(committed, {"data/features": "f2", "models/head.pt": "h2"},
                                    exact=exact, skip=set())
    assert [(r.output, r.ok) for r in other_features] == [("data/features", True),
                                                          ("models/head.pt", True)]


def test_metrics_files_are_compared_by_value_not_by_hash() -> None:
    rows = compare_hashes({"metrics/a.json": "1"}, {"metrics/a.json": "2"}, exact={},
                          skip={"metrics/a.json"})
    assert rows == []


def test_a_missing_output_fails_when_it_must_be_exact() -> None:
    [row] = compare_hashes({"models/head.pt": "abc"}, {}, exact={"models/head.pt": ()},
                           skip=set())
    assert (row.reproduced, row.ok) == ("missing", False)


def test_losses_pass_within_their_tolerance_and_fail_beyond() -> None:
    tolerance = tolerance_for("metrics/train_head.json:val_loss")
    assert tolerance == 2e-4
    committed = {"m.json:val_loss": 0.1980, "m.json:best.val_loss": 0.3}
    reproduced = {"m.json:val_loss": 0.1981, "m.json:best.val_loss": 0.31}  # one 4-dp step
    rows = {row.output: row for row in compare_values(committed, reproduced)}
    assert rows["m.json:val_loss"].ok and rows["m.json:val_loss"].diff == "+1.00e-04"
    assert not rows["m.json:best.val_loss"].ok


def test_an_accuracy_that_moves_by_one_image_fails() -> None:
    [row] = compare_values({"e.json:accuracy": 35 / 36}, {"e.json:accuracy": 34 / 36})
    assert not row.ok and row.tolerance == "1e-06"


def test_identical_values_give_no_row_and_text_must_match() -> None:
    committed = {"p.csv:predicted[0]": "five", "p.csv:probability[0]": "0.9927", "x": 1}
    reproduced = {"p.csv:predicted[0]": "one", "p.csv:probability[0]": "0.9931", "x": 1}
    rows = {row.output: row for row in compare_values(committed, reproduced)}
    assert set(rows) == {"p.csv:predicted[0]", "p.csv:probability[0]"}
    assert not rows["p.csv:predicted[0]"].ok and rows["p.csv:predicted[0]"].diff == "differs"
    assert rows["p.csv:probability[0]"].ok  # 4e-4 within the probability tolerance


def test_a_nan_or_a_vanished_key_fails() -> None:
    rows = compare_values({"a:loss": 0.2, "b:loss": 0.2}, {"a:loss": float("nan")})
    assert [(row.output, row.ok) for row in rows] == [("a:loss", False), ("b:loss", False)]


def test_json_and_csv_become_keyed_values() -> None:
    text = json.dumps({"accuracy": 0.5, "per_class": {"a": {"f1": 0.25}}})
    assert table_values("e.json", text) == {"e.json:accuracy": 0.5,
                                            "e.json:per_class.a.f1": 0.25}
    csv = "c,val_loss\n0.1,0.2034\n1.0,0.1988\n"
    assert table_values("s.csv", csv) == {"s.csv:c[0]": "0.1", "s.csv:c[1]": "1.0",
                                          "s.csv:val_loss[0]": "0.2034",
                                          "s.csv:val_loss[1]": "0.1988"}


def test_the_table_names_every_column_and_the_verdict() -> None:
    table = format_table([Row("metrics/x.json:val_loss", "0.198", "0.1983", "+3.00e-04",
                              "0.0002", False)])
    header, line = table.splitlines()
    assert header.split() == ["output", "committed", "reproduced", "diff", "tolerance",
                              "verdict"]
    assert line.split() == ["metrics/x.json:val_loss", "0.198", "0.1983", "+3.00e-04",
                            "0.0002", "FAIL"]


def test_the_checked_files_and_exact_outputs_are_those_dvc_yaml_declares() -> None:
    import yaml

    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    files = metrics_files(dvc_yaml)
    assert "metrics/evaluate.json" in files and "metrics/plots/test_predictions.csv" in files
    assert not any(path.endswith(".png") for path in files)
    outs = {next(iter(out)) if isinstance(out, dict) else out
            for stage in dvc_yaml["stages"].values() for out in stage.get("outs", [])}
    resolved = {out.replace("${prepared}", "data/prepared").replace("${features}", "data/features")
                .replace("${head}", "models/head.pt").replace("${model}", "models/model.pt")
                for out in outs}
    assert set(EXACT_OUTPUTS) | {g for given in EXACT_OUTPUTS.values() for g in given} <= resolved


@pytest.mark.parametrize("key", ["metrics/finetune_full.json:val_loss",
                                 "metrics/plots/finetune_history.csv:train_loss[3]"])
def test_every_loss_column_gets_the_loss_tolerance(key: str) -> None:
    assert tolerance_for(key) == 2e-4


def test_restore_puts_back_the_lock_and_declared_files_only(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    metrics:\n    - m.json:\n        cache: false\n"
        "    plots:\n    - p.png:\n        cache: false\n", encoding="utf-8")
    for name in ("dvc.lock", "m.json", "p.png", "notes.txt"):
        (tmp_path / name).write_text("committed\n", encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    for name in ("dvc.lock", "m.json", "p.png", "notes.txt"):
        (tmp_path / name).write_text("reproduced\n", encoding="utf-8")
    restore(tmp_path)
    contents = {name: (tmp_path / name).read_text(encoding="utf-8")
                for name in ("dvc.lock", "m.json", "p.png", "notes.txt")}
    assert contents == {"dvc.lock": "committed\n", "m.json": "committed\n",
                        "p.png": "committed\n", "notes.txt": "reproduced\n"}
