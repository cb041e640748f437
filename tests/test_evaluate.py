"""evaluate's metrics, and its agreement with the cached-feature path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from imgpipe.features import load_split
from imgpipe.head import load_head
from imgpipe.metrics import classification_metrics, plot_prediction_grid
from imgpipe.shards import ShardMember


def test_metrics_on_known_predictions() -> None:
    metrics = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]),
                                     ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                         "f1": pytest.approx(0.8), "support": 2}
    assert metrics["per_class"]["c"]["recall"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)


def test_per_class_figures_go_to_their_own_table_not_the_metrics_file(trained) -> None:
    overall = json.loads(trained["metrics"].read_text())
    assert set(overall) == {"accuracy", "macro_f1", "balanced_accuracy", "images"}
    table = pd.read_csv(trained["per_class"])
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert sorted(table["class"]) == ["one", "seven", "zero"]
    assert table["support"].sum() == overall["images"]
    assert table["recall"].mean() == pytest.approx(overall["balanced_accuracy"])


def test_evaluate_agrees_with_the_head_on_cached_test_features(trained) -> None:
    test = load_split(trained["features"], "test")
    head, classes, _ = load_head(trained["head"])
    cached = test.features @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    predictions = pd.read_csv(trained["predictions"])
    assert list(predictions["image_id"]) == list(test.image_ids)
    assert list(predictions["predicted"]) == [classes[i] for i in cached.argmax(1)]
    metrics = json.loads(trained["metrics"].read_text())
    assert metrics["accuracy"] == (predictions["predicted"] == predictions["actual"]).mean()
    assert trained["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _red_columns(grid: np.ndarray) -> np.ndarray:
    """x of every pure-red pixel: the titles of misclassified images."""
    red = (grid[..., 0] > 200) & (grid[..., 1] < 60) & (grid[..., 2] < 60)
    return np.nonzero(red)[1]


def test_prediction_grid_shows_misclassified_images_first_in_red(tmp_path) -> None:
    from PIL import Image

    files = []
    for i in range(8):  # whole files as shard members
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (32, 32), (90, 90, 90)).save(files[-1])
    images = [ShardMember(file, 0, file.stat().st_size) for file in files]
    actual = ["a"] * 8
    predicted = ["a", "a", "a", "b", "a", "a", "a", "b"]  # images 3 and 7 wrong
    plot_prediction_grid(tmp_path / "grid.png", images, actual, predicted)
    plot_prediction_grid(tmp_path / "right.png", images, actual, actual)
    with Image.open(tmp_path / "grid.png") as grid, Image.open(tmp_path / "right.png") as right:
        # 6 columns x 2 rows of 2.0 x 2.3 inch panels at 80 dpi.
        assert grid.format == "PNG" and grid.size == right.size == (960, 368)
        reds, right_reds = _red_columns(np.asarray(grid.convert("RGB"))), _red_columns(
            np.asarray(right.convert("RGB")))
    assert len(right_reds) == 0  # all correct: no red title
    # The two wrong images fill the first two of six 160 px columns.
    assert len(reds) > 0 and reds.max() < 2 * 160


def test_the_pipeline_grid_has_one_panel_per_test_image(trained) -> None:
    from PIL import Image

    with Image.open(trained["grid"]) as grid:
        assert grid.format == "PNG" and grid.size == (960, 184)  # 6 test images, one row
