"""scripts/best_experiment.py: ranking DVC experiments by a val score, never by test."""

from __future__ import annotations

from best_experiment import FINETUNE, _table, finished, rank, same_split, split_params


def row(name: str, accuracy: float, macro_f1: float, loss: float, test: float) -> dict:
    # As dvc.api.exp_show() names them: prefixed where train_head.json has the same name.
    return {"Experiment": name, "rev": name * 7, "typ": "branch_commit",
            f"{FINETUNE}:val_accuracy": accuracy, f"{FINETUNE}:val_macro_f1": macro_f1,
            f"{FINETUNE}:val_loss": loss, "accuracy": test, "freeze": "partial"}


def test_experiments_rank_by_the_chosen_val_score_then_loss() -> None:
    rows = [row("a", 0.90, 0.50, 0.30, test=0.99), row("b", 0.88, 0.70, 0.40, test=0.80),
            row("c", 0.90, 0.60, 0.20, test=0.70)]
    assert [r["Experiment"] for r in rank(rows, "accuracy")] == ["c", "a", "b"]
    assert [r["Experiment"] for r in rank(rows, "macro_f1")] == ["b", "c", "a"]


def test_the_baseline_and_unfinished_experiments_are_left_out() -> None:
    rows = [{**row("base", 0.9, 0.9, 0.1, 0.9), "typ": "baseline"},
            {**row("queued", 0.9, 0.9, 0.1, 0.9), f"{FINETUNE}:val_loss": None},
            # A failed queued run is shown with its baseline's metrics (seen with DVC 3).
            {**row("failed", 0.9, 0.9, 0.1, 0.9), "State": "Failed"},
            {**row("done", 0.5, 0.5, 0.5, 0.5), "State": "Success"}]
    assert [r["Experiment"] for r in finished(rows)] == ["done"]


def test_only_experiments_on_the_same_dataset_and_split_compete() -> None:
    params = {"data": {"source": "data/sample", "classes": None},
              "prepare": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15,
                          "image_size": 224, "on_error": "skip"}}
    # exp_show's forms: numbers as floats, None as the string 'None'.
    shown = {"data.classes": "None", "prepare.seed": 0.0, "prepare.val_fraction": 0.15,
             "prepare.test_fraction": 0.15, "prepare.image_size": 224.0}
    rows = [{**row("sample", 0.99, 0.9, 0.1, 0.9), "data.source": "data/sample", **shown},
            {**row("scratches", 0.90, 0.7, 0.3, 0.9), "data.source": "data/scratches",
             **shown},
            {**row("other_split", 0.95, 0.7, 0.3, 0.9), "data.source": "data/scratches",
             **shown, "prepare.seed": 1.0}]
    assert [r["Experiment"] for r in same_split(rows, split_params(params, None))] == ["sample"]
    assert [r["Experiment"] for r in same_split(
        rows, split_params(params, "data/scratches"))] == ["scratches"]


def test_the_table_shows_val_and_test_with_dashes_for_missing_values() -> None:
    table = _table([row("a", 0.9, 0.5, 0.3, test=0.875)], "accuracy")
    assert table.splitlines()[2] == "| a | 0.9000 | 0.3000 | 0.8750 | - | partial |"
