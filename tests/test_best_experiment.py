"""scripts/best_experiment.py: ranking DVC experiments by a val score, never by test."""

from __future__ import annotations

from best_experiment import FINETUNE, _table, finished, rank


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
            row("done", 0.5, 0.5, 0.5, 0.5)]
    assert [r["Experiment"] for r in finished(rows)] == ["done"]


def test_the_table_shows_val_and_test_with_dashes_for_missing_values() -> None:
    table = _table([row("a", 0.9, 0.5, 0.3, test=0.875)], "accuracy")
    assert table.splitlines()[2] == "| a | 0.9000 | 0.3000 | 0.8750 | - | partial |"
