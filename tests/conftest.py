"""Shared fixtures: tiny real datasets made in tmp_path, and the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from make_digits import render_digits  # noqa: E402

from imgpipe.params_head import TrainHeadParams  # noqa: E402
from imgpipe.params_prepare import PrepareParams  # noqa: E402
from unit_backbone import LITE0  # noqa: E402

# What the `probed` fixture runs prepare and train_head with (tests that redo its split or
# fit read them here).
PROBED_PREPARE = PrepareParams(seed=0, val_fraction=0.2, test_fraction=0.2, image_size=64,
                               shard_size=1000, on_error="skip")
PROBED_FIT = TrainHeadParams(c_grid=[0.1, 1.0], max_iter=500)

# Test files that take minutes, longest first (summed durations of one `make test` in the
# work tree, 2026-12-06, Intel Xeon family 6 model 106: about 490, 250, 240 and 200 s; every
# other file under 100 s). `make test` hands whole files to two workers in collection order
# (`--dist loadfile --no-loadscope-reorder`); xdist's default order, by test count, would
# start them last, where one of them can leave the other worker idle at the end. Its
# effect on the total was not measured apart from the closure change made the same day.
# Only the order depends on this list: a file missing from it still runs.
LONGEST_FIRST = ("test_pipeline_dvc.py", "test_review_flow.py", "test_scaling_dvc.py",
                 "test_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the files of LONGEST_FIRST first, in that order; the rest keep theirs."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests inside a file keep their order


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of real handwritten digits: 3 classes x 10 images, 32 px."""
    root = tmp_path_factory.mktemp("digits") / "images"
    render_digits(root, classes=[0, 1, 7], per_class=10, size=32)
    return root


@pytest.fixture(scope="session")
def probed(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> dict[str, Path]:
    """prepare -> extract -> train_head on the tiny digits set, as the stages run them."""
    from stages.extract import extract
    from stages.prepare import prepare
    from stages.train_head import train_head

    root = tmp_path_factory.mktemp("probed")
    paths = {"prepared": root / "prepared", "features": root / "features",
             "head": root / "models" / "head.pt", "root": root}
    prepare(source=digits_dir, out_dir=paths["prepared"], metrics_path=root / "prepare.json",
            report_path=root / "skipped.csv", seed=PROBED_PREPARE.seed,
            val_fraction=PROBED_PREPARE.val_fraction,
            test_fraction=PROBED_PREPARE.test_fraction,
            image_size=PROBED_PREPARE.image_size, shard_size=PROBED_PREPARE.shard_size)
    extract(prepared_dir=paths["prepared"], features_dir=paths["features"],
            backbone_name=LITE0.name, pretrained=LITE0.pretrained, weights=None,
            input_size=LITE0.input_size, batch_size=16)
    train_head(features_dir=paths["features"], head_path=paths["head"],
               metrics_path=root / "train_head.json", sweep_path=root / "sweep.csv",
               c_grid=PROBED_FIT.c_grid, max_iter=PROBED_FIT.max_iter)
    return paths


@pytest.fixture(scope="session")
def trained(probed: dict[str, Path]) -> dict[str, Path]:
    """probed + finetune_full (freeze=all) + evaluate: a model and its test predictions."""
    from imgpipe.params_finetune import FinetuneParams
    from stages.evaluate import evaluate
    from stages.finetune_full import FinetunePaths, Recipe, finetune_full

    root = probed["root"]
    paths = {**probed, "model": root / "models" / "model.pt",
             "predictions": root / "test_predictions.csv", "metrics": root / "evaluate.json",
             "sweep": root / "sweep.csv", "history": root / "history.csv",
             "confusion": root / "confusion.png", "grid": root / "grid.png",
             "per_class": root / "per_class.csv", "probe_metrics": root / "train_head.json",
             "finetune_metrics": root / "finetune.json"}
    finetune_full(FinetunePaths(paths["prepared"], paths["head"], paths["model"],
                                paths["finetune_metrics"], paths["history"]),
                  Recipe("all", LITE0,
                         FinetuneParams(trainable_blocks=1, epochs=1, batch_size=8)))
    evaluate(prepared_dir=paths["prepared"], model_path=paths["model"],
             metrics_path=paths["metrics"], predictions_path=paths["predictions"],
             confusion_png=paths["confusion"], grid_png=paths["grid"],
             per_class_path=paths["per_class"], batch_size=4)
    return paths
