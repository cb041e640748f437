"""The linear probe: C chosen on val, folded into one nn.Linear on raw features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError
from imgpipe.features import FeatureSet
from imgpipe.head import SweepPoint, load_head, save_head
from imgpipe.probe import (
    COEF_DECIMALS,
    METRIC_DECIMALS,
    best_point,
    boundary_margin,
    fit_linear_probe,
    within_noise,
)

INFO = BackboneInfo("efficientnet_lite0", True, None, 5, 224, [0.5] * 3, [0.5] * 3)


def blobs(n_per_class: int, num_classes: int, seed: int, spread: float = 1.0) -> FeatureSet:
    """Gaussian clusters with features on very different scales (standardisation matters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(num_classes, 5)) * 3
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = centres[labels] + rng.normal(scale=spread, size=(len(labels), 5))
    features *= np.array([1, 10, 100, 0.1, 1000])
    return FeatureSet(features.astype(np.float32), labels.astype(np.int64),
                      np.array([f"id{i}" for i in range(len(labels))]))


def wide(n_per_class: int, seed: int, dim: int = 40) -> FeatureSet:
    """Three overlapping classes in `dim` features: a large C fits train exactly."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, dim)) * 0.5
    labels = np.repeat(np.arange(3), n_per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dim))
    return FeatureSet(features.astype(np.float32), labels.astype(np.int64),
                      np.array([f"id{i}" for i in range(len(labels))]))


def test_folded_head_on_raw_features_predicts_like_the_probe() -> None:
    train, val = blobs(30, 3, seed=0), blobs(10, 3, seed=1)
    probe = fit_linear_probe(train, val, 3, c_grid=[0.01, 1.0], max_iter=500)
    logits = val.features @ probe.weight.T + probe.bias
    assert (logits.argmax(1) == val.labels).mean() == pytest.approx(probe.best.val_accuracy)
    assert probe.best.val_accuracy > 0.9


def point(c: float, accuracy: float, loss: float, macro_f1: float = 0.5) -> SweepPoint:
    return SweepPoint(c=c, train_accuracy=1.0, val_accuracy=accuracy,
                      val_balanced_accuracy=macro_f1, val_macro_f1=macro_f1, val_loss=loss)


def test_c_is_chosen_on_val_accuracy_then_loss() -> None:
    sweep = [point(0.1, 0.80, 0.10), point(1.0, 0.90, 0.30), point(10.0, 0.90, 0.20)]
    assert best_point(sweep).c == 10.0  # ties on accuracy go to the lower loss
    train, val = blobs(20, 3, seed=0, spread=3.0), blobs(20, 3, seed=1, spread=3.0)
    probe = fit_linear_probe(train, val, 3, c_grid=[1.0, 1e-4, 1e-2], max_iter=500)
    assert [p.c for p in probe.sweep] == [1e-4, 1e-2, 1.0]  # swept in order
    assert probe.best_c == best_point(probe.sweep).c


def test_a_chosen_c_within_one_standard_error_of_the_lowest_loss_is_kept() -> None:
    lowest = np.array([0.1, 0.5, 0.2, 0.9])
    # Paired gaps 0.1, -0.1, 0.1, -0.1: mean 0, one standard error 0.058.
    assert within_noise(lowest + np.array([0.1, -0.1, 0.1, -0.1]), lowest)
    # Gaps 0.2, 0.0, 0.2, 0.0: mean 0.1 above its standard error 0.058.
    assert not within_noise(lowest + np.array([0.2, 0.0, 0.2, 0.0]), lowest)
    # Gaps 0.1, -0.05, 0.1, -0.05: mean 0.025 within its standard error 0.043.
    assert within_noise(lowest + np.array([0.1, -0.05, 0.1, -0.05]), lowest)


def test_a_chosen_c_within_noise_of_the_lowest_loss_stays_the_start(monkeypatch) -> None:
    import imgpipe.probe

    judged = []

    def within(chosen: np.ndarray, lowest: np.ndarray) -> bool:
        judged.append((float(chosen.mean()), float(lowest.mean())))
        return True

    monkeypatch.setattr(imgpipe.probe, "within_noise", within)
    train, val = wide(15, seed=1), wide(20, seed=11)
    probe = fit_linear_probe(train, val, 3, c_grid=[0.001, 0.01, 0.1, 100.0], max_iter=1000,
                             select_by="macro_f1")
    assert probe.start_c == probe.best_c
    np.testing.assert_array_equal(probe.start_weight, probe.weight)
    # It judged the per-image losses of the two fits, whose means are the sweep's losses.
    losses = {point.c: point.val_loss for point in probe.sweep}
    [(chosen, lowest)] = judged
    assert round(chosen, METRIC_DECIMALS) == losses[probe.best_c]
    assert round(lowest, METRIC_DECIMALS) == min(losses.values())


def test_the_saved_start_is_the_probe_refitted_at_its_c(tmp_path: Path) -> None:
    # More features than train images per class: macro-F1 and val loss pick different C.
    train, val = wide(15, seed=1), wide(20, seed=11)
    grid = [0.001, 0.01, 0.1, 100.0]
    probe = fit_linear_probe(train, val, 3, c_grid=grid, max_iter=1000, select_by="macro_f1")
    losses = {p.c: p.val_loss for p in probe.sweep}
    assert probe.start_c == min(grid, key=lambda c: (losses[c], c)) != probe.best_c
    assert losses[probe.best_c] > 1.2 * losses[probe.start_c]  # far beyond noise here
    alone = fit_linear_probe(train, val, 3, c_grid=[probe.start_c], max_iter=1000)
    if probe.start_c == min(grid):  # no warm start before it: the same fit to the bit
        np.testing.assert_array_equal(probe.start_weight, alone.weight)
    else:  # warm-started along the path: the same optimum, to the solver's tolerance
        np.testing.assert_allclose(val.features @ probe.start_weight.T + probe.start_bias,
                                   val.features @ alone.weight.T + alone.bias, atol=5e-3)
    save_head(tmp_path / "head.pt", probe, ["a", "b", "c"], INFO)
    from imgpipe.head import head_cs, load_probe_penalty

    assert head_cs(tmp_path / "head.pt") == (probe.best_c, probe.start_c)
    start, _, _ = load_head(tmp_path / "head.pt", start=True)
    chosen, _, _ = load_head(tmp_path / "head.pt")
    np.testing.assert_array_equal(start.weight.detach().numpy(), probe.start_weight)
    np.testing.assert_array_equal(chosen.weight.detach().numpy(), probe.weight)
    assert load_probe_penalty(tmp_path / "head.pt", start=True).strength == pytest.approx(
        1 / (2 * probe.start_c * 45))
    assert load_probe_penalty(tmp_path / "head.pt").strength == pytest.approx(
        1 / (2 * probe.best_c * 45))


def test_two_classes_fold_into_two_softmax_rows() -> None:
    train, val = blobs(20, 2, seed=0), blobs(10, 2, seed=1)
    probe = fit_linear_probe(train, val, 2, c_grid=[1.0], max_iter=500)
    assert probe.weight.shape == (2, 5)
    logits = val.features @ probe.weight.T + probe.bias
    assert (logits.argmax(1) == val.labels).mean() == pytest.approx(probe.best.val_accuracy)


def test_one_class_in_train_is_refused() -> None:
    train = blobs(10, 1, seed=0)
    with pytest.raises(DataError, match="fewer than two classes"):
        fit_linear_probe(train, train, 2, c_grid=[1.0], max_iter=100)


def test_saved_head_loads_as_a_linear_layer(tmp_path: Path) -> None:
    train, val = blobs(20, 3, seed=0), blobs(10, 3, seed=1)
    probe = fit_linear_probe(train, val, 3, c_grid=[1.0], max_iter=500)
    save_head(tmp_path / "head.pt", probe, ["a", "b", "c"], INFO)
    head, classes, info = load_head(tmp_path / "head.pt")
    assert classes == ["a", "b", "c"] and info == INFO
    with torch.no_grad():
        torch_logits = head(torch.from_numpy(val.features)).numpy()
    np.testing.assert_allclose(torch_logits, val.features @ probe.weight.T + probe.bias,
                               rtol=1e-4, atol=1e-3)


def test_near_dead_features_do_not_get_huge_folded_weights() -> None:
    train, val = blobs(30, 3, seed=0), blobs(10, 3, seed=1)
    rare = np.zeros((len(train.labels), 1), dtype=np.float32)
    rare[0] = 1e-4  # one activation in 90 images: std ~1e-5
    train = FeatureSet(np.hstack([train.features, rare]), train.labels, train.image_ids)
    val = FeatureSet(np.hstack([val.features, np.zeros((len(val.labels), 1), np.float32)]),
                     val.labels, val.image_ids)
    probe = fit_linear_probe(train, val, 3, c_grid=[1.0], max_iter=500)
    typical = np.median(np.abs(probe.weight[:, :5]))
    assert np.abs(probe.weight[:, 5]).max() < 100 * max(typical, 1e-3)


def test_the_fit_does_not_depend_on_the_callers_blas_threads() -> None:
    """The sweep pins BLAS to one thread: the same head on any number of cores."""
    train, val = blobs(60, 4, seed=0, spread=3.0), blobs(20, 4, seed=1, spread=3.0)
    heads = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            heads.append(fit_linear_probe(train, val, 4, [0.01, 1.0], max_iter=200))
    assert np.array_equal(heads[0].weight, heads[1].weight)
    assert heads[0].sweep == heads[1].sweep


def test_c_is_chosen_on_the_selected_val_score() -> None:
    sweep = [point(0.1, 0.90, 0.10, macro_f1=0.40), point(1.0, 0.85, 0.30, macro_f1=0.70)]
    assert best_point(sweep, "accuracy").c == 0.1
    assert best_point(sweep, "macro_f1").c == 1.0


def imbalanced(n_major: int, n_minor: int, seed: int) -> FeatureSet:
    """Two overlapping classes, the second rare: a plain fit mostly ignores it."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * n_major + [1] * n_minor)
    features = rng.normal(size=(len(labels), 5)) + labels[:, None] * 0.5
    return FeatureSet(features.astype(np.float32), labels, np.arange(len(labels)).astype(str))


def test_class_weights_raise_the_rare_class_recall() -> None:
    train, val = imbalanced(300, 20, seed=0), imbalanced(300, 20, seed=1)
    plain = fit_linear_probe(train, val, 2, [1.0], max_iter=500)
    weighted = fit_linear_probe(train, val, 2, [1.0], max_iter=500, class_balance="weights")
    assert weighted.best.val_balanced_accuracy > plain.best.val_balanced_accuracy + 0.1
    assert weighted.best.val_accuracy < plain.best.val_accuracy  # the price on accuracy


def test_stored_coefficients_sit_on_the_rounding_grid() -> None:
    """Unfolded back onto standardised features, every weight is a multiple of the grid."""
    train, val = blobs(30, 3, seed=0), blobs(10, 3, seed=1)
    probe = fit_linear_probe(train, val, 3, c_grid=[0.1, 1.0], max_iter=500)
    features = train.features.astype(np.float64)
    scale = np.maximum(features.std(0), 0.1 * np.median(features.std(0)))
    steps = probe.weight.astype(np.float64) * scale * 10**COEF_DECIMALS
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # float32 storage
    assert np.abs(steps).max() > 100  # not a grid so coarse that everything rounds to 0


def test_sweep_metrics_are_written_rounded() -> None:
    train, val = blobs(20, 3, seed=0, spread=3.0), blobs(20, 3, seed=1, spread=3.0)
    probe = fit_linear_probe(train, val, 3, c_grid=[0.01, 1.0], max_iter=500)
    for point in probe.sweep:
        for value in (point.train_accuracy, point.val_accuracy, point.val_loss):
            assert value == round(value, METRIC_DECIMALS)
    assert 0 < probe.best.val_loss < 2


def test_boundary_margin_is_the_distance_to_the_nearest_half_step() -> None:
    step = 10.0**-COEF_DECIMALS
    assert boundary_margin(np.array([3 * step])) == pytest.approx(step / 2)
    assert boundary_margin(np.array([3 * step, 2.5 * step])) == pytest.approx(0, abs=1e-12)
    assert boundary_margin(np.array([-2.4 * step])) == pytest.approx(0.1 * step)


def test_the_probe_is_a_stationary_point_of_its_penalised_loss(tmp_path: Path) -> None:
    # finetune_full's head_penalty: probe restates the probe's own L2 penalty, so the loss
    # fine-tuning starts on is minimal at the probe: its head gradient is ~0 (only the
    # coefficient rounding and the solver's tolerance are left), against the pull of
    # plain cross-entropy towards larger weights.
    from imgpipe.head import load_probe_penalty

    train, val = blobs(40, 3, seed=0, spread=3.0), blobs(10, 3, seed=1, spread=3.0)
    probe = fit_linear_probe(train, val, 3, c_grid=[0.01], max_iter=1000)
    save_head(tmp_path / "head.pt", probe, ["a", "b", "c"], INFO)
    head, _, _ = load_head(tmp_path / "head.pt")
    penalty = load_probe_penalty(tmp_path / "head.pt")
    assert penalty.strength == pytest.approx(1 / (2 * 0.01 * 120))
    features, labels = torch.from_numpy(train.features), torch.from_numpy(train.labels)

    def head_gradient(with_penalty: bool) -> float:
        head.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        (loss + penalty(head) if with_penalty else loss).backward()
        # In standardised units, the ones the probe was fitted in.
        return float((head.weight.grad / penalty.feature_scale).norm())

    plain, penalised = head_gradient(False), head_gradient(True)
    assert penalised < 0.02 * plain


def test_a_head_file_without_the_penalty_fields_names_the_fix(tmp_path: Path) -> None:
    from imgpipe.head import load_probe_penalty

    torch.save({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "c": 1.0},
               tmp_path / "old.pt")
    with pytest.raises(DataError, match="dvc repro train_head"):
        load_probe_penalty(tmp_path / "old.pt")
    torch.save({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "c": 1.0,
                "feature_scale": torch.ones(3), "n_train": 4}, tmp_path / "older.pt")
    with pytest.raises(DataError, match="fine-tuning start: run `dvc repro train_head`"):
        load_probe_penalty(tmp_path / "older.pt", start=True)


def test_a_split_too_big_to_hold_is_streamed_from_disk_to_the_same_probe(
        tmp_path: Path, monkeypatch) -> None:
    import imgpipe.features
    import imgpipe.probe
    from imgpipe.features import open_split, save_split

    train, val = blobs(40, 3, seed=0, spread=2.0), blobs(15, 3, seed=1, spread=2.0)
    held = fit_linear_probe(train, val, 3, c_grid=[0.01, 1.0], max_iter=500)
    for name, data in (("train", train), ("val", val)):
        save_split(tmp_path, name, data.labels, data.image_ids, data.dim, [data.features])
    monkeypatch.setattr(imgpipe.features, "CHUNK_BYTES", 16 * 5 * 4)  # 16-row chunks
    monkeypatch.setattr(imgpipe.probe, "HOLD_BYTES", 0)  # every pass reads the file
    reads: list[int] = []
    real_chunks = imgpipe.features.SplitFile.chunks

    def counted(self, reuse=False):
        reads.append(1)
        yield from real_chunks(self, reuse)

    monkeypatch.setattr(imgpipe.features.SplitFile, "chunks", counted)
    streamed = fit_linear_probe(open_split(tmp_path, "train"), open_split(tmp_path, "val"), 3,
                                c_grid=[0.01, 1.0], max_iter=500)
    assert len(reads) > 10  # read again on every L-BFGS evaluation, not held
    assert streamed.weight.tobytes() == held.weight.tobytes()  # same fit, rounded alike
    assert streamed.sweep == held.sweep
