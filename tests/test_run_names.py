"""Run names and descriptions: what tells one MLflow run from another."""

from __future__ import annotations

from imgpipe.run_names import changed_params, describe, run_name
from imgpipe.run_record import from_command, result_key

BASELINE = {"freeze": "all", "finetune_full": {"lr": 0.0001, "epochs": 4},
            "train_head": {"c_grid": [0.1, 1.0]}}


def test_changes_are_flattened_keys_with_old_and_new_values() -> None:
    params = {"freeze": "partial", "finetune_full": {"lr": 0.001, "epochs": 4},
              "train_head": {"c_grid": [1.0]}, "extra": {"key": 1}}
    assert changed_params(params, BASELINE) == {
        "extra.key": (None, 1), "finetune_full.lr": (0.0001, 0.001),
        "freeze": ("all", "partial"), "train_head.c_grid": ([0.1, 1.0], [1.0])}
    assert changed_params(BASELINE, BASELINE) == {}


def test_name_is_the_experiment_else_the_changes_else_baseline() -> None:
    changes = changed_params({**BASELINE, "freeze": "none"}, BASELINE)
    assert run_name("partial", changes) == "partial"
    assert run_name(None, changes) == "freeze=none"
    assert run_name(None, {}) == "baseline"
    many = {f"key{i}": (0, 10 ** 20) for i in range(10)}
    assert len(run_name(None, many)) == 120 and run_name(None, many).endswith("…")


def test_description_lists_every_change_against_its_commit() -> None:
    changes = changed_params({**BASELINE, "freeze": "none"}, BASELINE)
    assert describe("wide", "0123456789abcdef", changes) == (
        "DVC experiment `wide`, on commit `0123456`.\n\n"
        "Params changed from commit `0123456`:\n- `freeze`: all → none")
    assert describe(None, "0123456789abcdef", changes, commit="fedcba9876543210").startswith(
        "Result committed in `fedcba9`, compared with its parent, commit `0123456`.\n\n")
    assert describe(None, None, {}) == ("Pipeline run on the committed params.yaml.\n\n"
                                        "Params: the same as the committed params.yaml.")


def test_evaluate_paths_are_read_back_from_the_command_dvc_lock_records() -> None:
    paths = from_command(
        "python src/stages/evaluate.py --prepared-dir data/prepared --model models/model.pt "
        "--sweep s.csv --history h.csv --metrics m.json --predictions p.csv "
        "--confusion-png c.png --grid-png g.png")  # a commit from before --per-class
    assert str(paths.model) == "models/model.pt" and str(paths.grid_png) == "g.png"
    assert paths.per_class is None and paths.probe_metrics is None


def test_result_key_changes_with_params_model_or_data_only() -> None:
    key = result_key(BASELINE, "a" * 32, "b" * 32)
    assert key == result_key({**BASELINE}, "a" * 32, "b" * 32)
    assert len({key, result_key({**BASELINE, "freeze": "none"}, "a" * 32, "b" * 32),
                result_key(BASELINE, "c" * 32, "b" * 32),
                result_key(BASELINE, "a" * 32, "c" * 32)}) == 4
