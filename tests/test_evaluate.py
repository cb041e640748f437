"""evaluate's metrics, and its agreement with the cached-feature path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgpipe.features import load_split
from imgpipe.head import load_head
from imgpipe.metrics import classification_metrics
from imgpipe.params import BackboneParams, FinetuneParams
from stages.evaluate import evaluate
from stages.finetune_full import finetune_full


def test_metrics_on_known_predictions() -> None:
    metrics = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]),
                                     ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                         "f1": pytest.approx(0.8), "support": 2}
    assert metrics["per_class"]["c"]["recall"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_evaluate_agrees_with_the_head_on_cached_test_features(probed, tmp_path: Path) -> None:
    finetune_full(prepared_dir=probed["prepared"], head_path=probed["head"],
                  model_path=tmp_path / "model.pt", metrics_path=tmp_path / "f.json",
                  history_path=tmp_path / "h.csv", freeze="all",
                  backbone_params=BackboneParams("efficientnet_lite0", True, None),
                  params=FinetuneParams(1, 1, 8, 1e-4, 0.0, 0.8, False, "frozen", 0))
    metrics = evaluate(prepared_dir=probed["prepared"], model_path=tmp_path / "model.pt",
                       metrics_path=tmp_path / "eval.json",
                       predictions_path=tmp_path / "predictions.csv",
                       confusion_png=tmp_path / "confusion.png", batch_size=4)
    test = load_split(probed["features"], "test")
    head, classes, _ = load_head(probed["head"])
    cached = head.weight.detach().numpy() @ test.features.T
    expected = [classes[i] for i in (cached.T + head.bias.detach().numpy()).argmax(1)]
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions["image_id"]) == list(test.image_ids)
    assert list(predictions["predicted"]) == expected
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
