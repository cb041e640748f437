"""Freezing, BatchNorm handling, and the finetune_full stage keeping the best-on-val model."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imgpipe.backbones import build_backbone
from imgpipe.finetune import Training, parameter_counts, set_trainable, train_epoch
from imgpipe.head import load_head
from imgpipe.model import ImageClassifier, load_model
from imgpipe.params import BackboneParams
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from stages.finetune_full import FinetunePaths, Recipe, finetune_full
from unit_backbone import LITE0, UNIT_INPUT_SIZE


def classifier(freeze: str, trainable_blocks: int = 2):
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3))
    frozen = set_trainable(model, backbone, freeze, trainable_blocks)
    return model, frozen


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_partial_trains_the_last_blocks_and_the_head_only() -> None:
    model, _ = classifier("partial", trainable_blocks=2)  # lite0's last two: _blocks.15, head
    expected = ("trunk._blocks.15.", "trunk._conv_head.", "trunk._bn1.", "head.")
    names = trainable_names(model)
    assert all(name.startswith(expected) for name in names)
    assert all(any(name.startswith(prefix) for name in names) for prefix in expected)


def test_all_trains_only_the_head_and_none_trains_everything() -> None:
    model, _ = classifier("all")
    assert trainable_names(model) == {"head.weight", "head.bias"}
    model, frozen = classifier("none")
    assert frozen == [] and parameter_counts(model)["frozen"] == 0


def test_frozen_batchnorm_statistics_do_not_move_while_training() -> None:
    model, frozen = classifier("partial", trainable_blocks=1)
    frozen_bn, trained_bn = model.trunk._blocks[0]._bn1, model.trunk._bn1
    before = (frozen_bn.running_mean.clone(), trained_bn.running_mean.clone())
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])),
                        batch_size=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_epoch(model, Training(optimizer, frozen=frozen), loader, "test")
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])



def _one_step(clip_grad_norm: float) -> float:
    """The L2 norm of what one plain SGD step (lr 1) moves a small model's weights by."""
    torch.manual_seed(0)
    model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), nn.Linear(4, 3))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 2, 2) * 10,
                                      torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_epoch(model, Training(optimizer, clip_grad_norm=clip_grad_norm), loader, "clip")
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm())


def test_clip_grad_norm_caps_the_step_and_zero_leaves_it_alone() -> None:
    unclipped = _one_step(0.0)
    assert unclipped > 1.0  # the gradient is larger than the cap below
    assert _one_step(0.25) == pytest.approx(0.25, rel=1e-4)  # lr 1: step = clipped gradient
    assert _one_step(unclipped * 2) == pytest.approx(unclipped, rel=1e-6)


def _paths(probed: dict[str, Path], tmp_path: Path,
           checkpoint_dir: Path | None = None) -> FinetunePaths:
    return FinetunePaths(probed["prepared"], probed["head"], tmp_path / "model.pt",
                         tmp_path / "m.json", tmp_path / "history.csv", checkpoint_dir)


def run_finetune(probed: dict[str, Path], tmp_path: Path, freeze: str,
                 checkpoint_dir: Path | None = None, augment: AugmentParams | None = None,
                 **overrides) -> dict:
    params = FinetuneParams(**{**dict(trainable_blocks=1, epochs=1, batch_size=8, lr=1e-4,
                                      weight_decay=0.0, head_lr_mult=1.0), **overrides})
    tmp_path.mkdir(parents=True, exist_ok=True)
    return finetune_full(
        FinetunePaths(probed["prepared"], probed["head"], tmp_path / "model.pt",
                      tmp_path / "m.json", tmp_path / "history.csv", checkpoint_dir),
        Recipe(freeze, LITE0, params, augment or AugmentParams()))


def test_freeze_all_keeps_the_linear_probe_as_the_final_model(probed, tmp_path: Path) -> None:
    metrics = run_finetune(probed, tmp_path, "all")
    model, record = load_model(tmp_path / "model.pt")
    head, head_classes, head_info = load_head(probed["head"])
    assert torch.equal(model.head.weight, head.weight) and record.classes == head_classes
    assert metrics["best_epoch"] == record.best_epoch == 0 and record.freeze == "all"
    assert record.backbone == head_info and record.image_size == 64
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1


def test_best_on_val_epoch_is_kept_not_the_last(probed, tmp_path: Path) -> None:
    # A learning rate this large wrecks the network in one step: epoch 0 must win.
    metrics = run_finetune(probed, tmp_path, "none", lr=5.0, epochs=2)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history["val_accuracy"][0] > history["val_accuracy"][2]
    assert metrics["best_epoch"] == 0
    model, _ = load_model(tmp_path / "model.pt")
    head, _, _ = load_head(probed["head"])
    assert torch.equal(model.head.weight, head.weight)


def test_partial_fine_tuning_trains_and_records_each_epoch(probed, tmp_path: Path) -> None:
    metrics = run_finetune(probed, tmp_path, "partial", epochs=2)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history["train_loss"][1:].notna().all()
    assert 0 < metrics["params_trainable"] < metrics["params_total"]


def test_a_head_from_another_backbone_is_refused(probed, tmp_path: Path) -> None:
    from imgpipe.errors import DataError

    other = BackboneParams("efficientnet_lite0", False, None, UNIT_INPUT_SIZE)
    with pytest.raises(DataError, match="was fitted on features of efficientnet_lite0"):
        finetune_full(_paths(probed, tmp_path), Recipe("all", other, FinetuneParams(
            trainable_blocks=1, epochs=1, batch_size=8)))


def test_a_head_fitted_at_another_input_size_is_refused(probed, tmp_path: Path) -> None:
    from imgpipe.errors import DataError

    larger = BackboneParams("efficientnet_lite0", True, None, input_size=96)
    with pytest.raises(DataError, match=f"{UNIT_INPUT_SIZE} px"):
        finetune_full(_paths(probed, tmp_path), Recipe("all", larger, FinetuneParams(
            trainable_blocks=1, epochs=1, batch_size=8)))


def test_bn_stats_frozen_keeps_every_running_statistic() -> None:
    model, frozen = classifier("none")
    before = model.trunk._bn1.running_mean.clone()
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])),
                        batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, Training(optimizer, frozen=frozen, bn_stats="frozen"), loader, "test")
    assert torch.equal(model.trunk._bn1.running_mean, before)
    assert model.training  # only BatchNorm layers were switched to eval


def crash_in_epoch_2(probed: dict[str, Path], tmp_path: Path, checkpoints: Path, monkeypatch,
                     **overrides) -> None:
    """A partial run with checkpoints, killed during its second epoch (as by kill -9)."""
    import imgpipe.finetune

    real_train_epoch, calls = imgpipe.finetune.train_epoch, []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during epoch 2")
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(imgpipe.finetune, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(probed, tmp_path, "partial", checkpoint_dir=checkpoints, **overrides)
    monkeypatch.setattr(imgpipe.finetune, "train_epoch", real_train_epoch)


def test_interrupted_training_resumes_to_the_same_result(probed, tmp_path: Path,
                                                         monkeypatch) -> None:
    import imgpipe.finetune

    # The frozen blocks run every epoch here; test_frozen_prefix covers cached views.
    common = dict(epochs=3, lr=3e-4, trainable_blocks=2, cached_views=0)
    run_finetune(probed, tmp_path / "straight", "partial", **common)

    real_train_epoch = imgpipe.finetune.train_epoch
    checkpoints = tmp_path / "resumed" / "checkpoints"
    crash_in_epoch_2(probed, tmp_path / "resumed", checkpoints, monkeypatch, **common)
    assert len(list(checkpoints.glob("finetune-*.pt"))) == 1  # epoch 1 was saved
    trained_epochs = []

    def count(*args, **kwargs):
        call = inspect.signature(real_train_epoch).bind(*args, **kwargs)
        trained_epochs.append(call.arguments["desc"])  # the progress label, "epoch N"
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(imgpipe.finetune, "train_epoch", count)
    run_finetune(probed, tmp_path / "resumed", "partial", checkpoint_dir=checkpoints, **common)
    assert trained_epochs == ["epoch 2", "epoch 3"]  # resumed, not started over

    assert ((tmp_path / "straight" / "history.csv").read_text()
            == (tmp_path / "resumed" / "history.csv").read_text())
    straight = load_model(tmp_path / "straight" / "model.pt")[0].state_dict()
    resumed = load_model(tmp_path / "resumed" / "model.pt")[0].state_dict()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert not checkpoints.exists()  # removed once the stage succeeded


def test_trainable_patterns_choose_parameters_by_name() -> None:
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3))
    frozen = set_trainable(model, backbone, "partial", 1, [r"_blocks\.1[45]\.", "_conv_head"])
    names = trainable_names(model)
    assert names and all(n.startswith(("trunk._blocks.14.", "trunk._blocks.15.",
                                       "trunk._conv_head.", "head.")) for n in names)
    assert any(n.startswith("trunk._blocks.14.") for n in names)
    assert model.trunk._blocks[13]._bn1 in frozen and model.trunk._blocks[15]._bn1 not in frozen


def test_patterns_matching_nothing_are_refused() -> None:
    from imgpipe.errors import ParamsError

    backbone = build_backbone("resnet18", pretrained=False)
    model = ImageClassifier(backbone.trunk, nn.Linear(backbone.feature_dim, 3))
    with pytest.raises(ParamsError, match="match no backbone parameter; names look like"):
        set_trainable(model, backbone, "partial", 1, ["_blocks"])


def test_label_smoothing_penalises_confident_correct_predictions() -> None:
    model = ImageClassifier(nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(3) * 20)  # confident and right on one-hot inputs
        model.head.bias.zero_()
    loader = DataLoader(TensorDataset(torch.eye(3), torch.arange(3)), batch_size=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    plain = train_epoch(model, Training(optimizer), loader, "t").loss
    smoothed = train_epoch(model, Training(optimizer, criterion=nn.CrossEntropyLoss(
        label_smoothing=0.3)), loader, "t").loss
    assert plain < 1e-6 < smoothed


def test_patience_stops_training_early(probed, tmp_path: Path) -> None:
    run_finetune(probed, tmp_path, "none", lr=5.0, epochs=5, patience=1)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [0, 1]  # epoch 1 was worse: stop before epoch 2


def test_head_init_xavier_zeros_and_imagenet_rows() -> None:
    from imgpipe.head import init_head

    lite0 = build_backbone("efficientnet_lite0")
    head = nn.Linear(1280, 3)
    init_head(head, "zeros", ["a", "b", "c"], {}, None, lite0.imagenet_head)
    assert not head.weight.any() and not head.bias.any()
    init_head(head, "xavier", ["a", "b", "c"], {}, None, lite0.imagenet_head)
    assert head.weight.std() > 0 and not head.bias.any()
    init_head(head, "zeros", ["hot_dog", "not_hot_dog", "c"], {"hot_dog": 934},
              "not_hot_dog", lite0.imagenet_head)
    assert torch.equal(head.weight[0], lite0.imagenet_head.weight[934])
    assert torch.equal(head.weight[1], -lite0.imagenet_head.weight[934])
    assert not head.weight[2].any()


def test_imagenet_rows_need_a_pretrained_classifier_and_known_classes() -> None:
    from imgpipe.errors import ParamsError
    from imgpipe.head import init_head

    lite0 = build_backbone("efficientnet_lite0")
    with pytest.raises(ParamsError, match="'dog' is not a class"):
        init_head(nn.Linear(1280, 2), "probe", ["a", "b"], {"dog": 1}, None,
                  lite0.imagenet_head)
    random = build_backbone("efficientnet_lite0", pretrained=False)
    with pytest.raises(ParamsError, match="needs the pretrained ImageNet classifier"):
        init_head(nn.Linear(1280, 2), "probe", ["a", "b"], {"a": 1}, None,
                  random.imagenet_head)


def test_freeze_all_with_a_fresh_head_is_refused(probed, tmp_path: Path) -> None:
    from imgpipe.errors import ParamsError

    with pytest.raises(ParamsError, match="head_init: 'xavier' with freeze=all"):
        run_finetune(probed, tmp_path, "all", head_init="xavier")


def test_class_weights_are_inverse_train_frequencies(tmp_path: Path) -> None:
    from imgpipe.index_writer import write_index
    from imgpipe.io import write_json
    from imgpipe.shards import write_shards
    from stages.finetune_full import _class_weights

    rows = [("train", 0)] * 6 + [("train", 1)] * 2 + [("train", 2)] * 1 + [("val", 2)] * 5
    images = [(f"{i:016x}", bytes([i])) for i in range(len(rows))]
    write_index(tmp_path, [(image_id, f"{i}.png", f"c{label}")
                           for i, ((image_id, _), (_, label)) in enumerate(zip(images, rows))],
                [split for split, _ in rows], write_shards(tmp_path, images, shard_size=4))
    write_json(tmp_path / "classes.json", ["c0", "c1", "c2", "c3"])
    weights = _class_weights(tmp_path, 4)  # class 3 has no train image: weight as if 1
    expected = [9 / (4 * 6), 9 / (4 * 2), 9 / (4 * 1), 9 / (4 * 1)]
    assert weights.tolist() == pytest.approx(expected)


def test_the_epoch_is_chosen_by_the_selected_val_score(probed, tmp_path: Path) -> None:
    from imgpipe.scores import best_index

    metrics = finetune_full(_paths(probed, tmp_path), Recipe(
        "partial", LITE0, FinetuneParams(trainable_blocks=1, epochs=2, batch_size=8, lr=3e-3,
                                         weight_decay=0.0, head_lr_mult=1.0),
        select_by="macro_f1"))
    rows = pd.read_csv(tmp_path / "history.csv").to_dict("records")
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert metrics["best_epoch"] == best_index(rows, "macro_f1")
    assert metrics["val_macro_f1"] == max(row["val_macro_f1"] for row in rows)
    assert all(row["val_balanced_accuracy"] <= 1 for row in rows)


def test_training_starts_from_the_lowest_loss_probe_and_epoch_0_stays_the_chosen_one(
        probed, tmp_path: Path) -> None:
    # A head file whose fine-tuning start (another C) differs from the probe select_by
    # chose; with a vanishing learning rate epoch 1 scores the start itself.
    chosen = torch.load(probed["head"], weights_only=True)
    start = {"weight": chosen["weight"] * 0.5, "bias": chosen["bias"] * 0.5,
             "c": chosen["c"] / 10}
    torch.save({**chosen, "start": start}, tmp_path / "head.pt")
    torch.save({**chosen, **start, "start": start}, tmp_path / "start_chosen.pt")
    histories = []
    for name in ("head.pt", "start_chosen.pt"):
        run = tmp_path / name.removesuffix(".pt")
        run.mkdir()
        finetune_full(FinetunePaths(probed["prepared"], tmp_path / name, run / "model.pt",
                                    run / "m.json", run / "history.csv"),
                      Recipe("partial", LITE0, FinetuneParams(
                          trainable_blocks=1, epochs=1, batch_size=8, lr=1e-12,
                          weight_decay=0.0, head_lr_mult=1.0)))
        histories.append(pd.read_csv(run / "history.csv"))
    both, alone = histories
    assert both["val_loss"][1] == pytest.approx(alone["val_loss"][0], abs=1e-6)
    assert both["val_loss"][0] != pytest.approx(both["val_loss"][1], abs=1e-3)
    # Epoch 0 is the chosen probe, the one freeze=all keeps.
    all_run = run_finetune(probed, tmp_path / "all", "all")
    assert both["val_loss"][0] == pytest.approx(all_run["val_loss"], abs=1e-6)
