"""Stage finetune_full: linear probe, then (optionally) fine-tune end to end.

Reads `freeze`, `backbone.*`, `finetune_full.*`, `augment.*`, `device` and
`distributed.*`. Starts from the train_head head on the frozen pretrained backbone.
freeze=all keeps that model as it is; partial trains the last blocks and the head; none
trains everything. Keeps the best-on-val epoch (epoch 0 is the starting model), and
writes the model file, its metrics and the per-epoch history. With
`distributed.nproc_per_node` above 1 it trains under torchrun with DistributedDataParallel,
each worker taking an equal share of every batch; rank 0 alone writes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from imgpipe import distributed, folded_training, frozen_prefix, stage
from imgpipe.augment import train_transform
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import Backbone, build_backbone
from imgpipe.data import ImageDataset
from imgpipe.distributed import ALONE, Ranks
from imgpipe.errors import DataError, ParamsError
from imgpipe.finetune import (
    Loaders,
    PenalisedLoss,
    Progress,
    Selection,
    Training,
    evaluate_epoch,
    fit,
    parameter_counts,
    set_trainable,
)
from imgpipe.head import head_cs, init_head, load_head, load_probe_penalty
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import dataset_digest, read_manifest, read_preprocess
from imgpipe.model import ImageClassifier, save_model
from imgpipe.optim import make_optimizer, make_schedule
from imgpipe.params import (
    BackboneParams,
    ClassBalance,
    DistributedParams,
    FreezeMode,
    RunParams,
    SelectBy,
    load_section,
)
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetunePaths:
    """What finetune_full reads (the prepared folder, train_head's head) and writes."""

    prepared_dir: Path
    head: Path
    model: Path
    metrics: Path
    history: Path  # per-epoch train/val figures, CSV
    checkpoint_dir: Path | None = None  # per-epoch training state, for resuming; None: none


@dataclass(frozen=True)
class Recipe:
    """Every param finetune_full trains by."""

    freeze: FreezeMode
    backbone: BackboneParams
    finetune: FinetuneParams
    augment: AugmentParams = field(default_factory=AugmentParams)
    select_by: SelectBy = "accuracy"  # the val score that picks the kept epoch
    class_balance: ClassBalance = "none"  # weights: loss weighted by inverse class frequency


def finetune_full(paths: FinetunePaths, recipe: Recipe, device: torch.device | None = None,
                  ranks: Ranks = ALONE) -> dict:
    """Build backbone + probe head, fine-tune per `recipe.freeze`, save the best-on-val
    model; returns the kept epoch's metrics.

    With `paths.checkpoint_dir`, training state is saved there after every epoch and an
    interrupted run with the same recipe, head and data resumes from it. Collective
    under torchrun: every worker trains, rank 0 writes.
    """
    device, params = device or torch.device("cpu"), recipe.finetune
    if params.batch_size % ranks.world:
        raise ParamsError(f"finetune_full.batch_size: {params.batch_size} images cannot be "
                          f"shared equally by {ranks.world} processes; use a multiple of "
                          "distributed.nnodes x nproc_per_node")
    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    backbone, model, classes = _probe_model(paths.head, recipe)
    model = model.to(device, memory_format=torch.channels_last)  # batches too: to_device
    frozen = set_trainable(model, backbone, recipe.freeze, params.trainable_blocks,
                           params.trainable_patterns)
    counts = parameter_counts(model)
    _logger.info("parameters: %d total, %d trainable, %d frozen", counts["total"],
                 counts["trainable"], counts["frozen"])
    if distributed.active():  # on several machines each node reads its own copies
        distributed.same_everywhere(
            "the recipe, probe or prepared data", _run_key(recipe, paths),
            "give every node node 0's params.yaml (node_rank aside), models/head.pt and "
            "data/prepared")
    loaders = _loaders(paths.prepared_dir, model, backbone, recipe, device, ranks)
    if recipe.freeze != "all":
        loaders = _batchnorm_folded(loaders, model, backbone)
    progress = _start(model, loaders, device)
    if recipe.freeze == "all":
        _logger.info("freeze=all: no end-to-end training, the linear-probe model is final")
    else:
        _start_from_lowest_loss(model, paths.head, recipe, classes, backbone)
        training = _training(model, frozen, paths, recipe, len(classes), device,
                             len(loaders.train))
        checkpoint = paths.checkpoint_dir and (
            paths.checkpoint_dir / f"finetune-{_run_key(recipe, paths)}.pt")
        torch.manual_seed(params.seed + ranks.rank)  # augmentation differs across workers
        progress = fit(model, training, loaders, Selection(params.epochs, recipe.select_by,
                       params.patience), progress, checkpoint, ranks)
    best = progress.best
    metrics = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
               "val_balanced_accuracy": best["val_balanced_accuracy"],
               "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
               "params_trainable": counts["trainable"], "params_total": counts["total"]}
    if ranks.main:
        _save(paths, model, progress, BackboneInfo.of(
            backbone, recipe.backbone.pretrained, recipe.backbone.weights), recipe, classes)
        write_json(paths.metrics, metrics)
        _logger.info("kept epoch %d: val acc %.4f", best["epoch"], best["val_accuracy"])
    return metrics


def _start(model: ImageClassifier, loaders: Loaders, device: torch.device) -> Progress:
    """Epoch 0: the starting model (the probe) scored on val, the best so far."""
    start = evaluate_epoch(loaders.net or model, loaders.val, device)
    history = [{"epoch": 0, **{key: None for key in start.row("train")}, **start.row("val")}]
    _logger.info("epoch 0 (linear probe): val acc %.4f  val loss %.4f", start.accuracy,
                 start.loss)
    return Progress(history, copy.deepcopy(model.state_dict()), history[0])


def _save(paths: FinetunePaths, model: ImageClassifier, progress: Progress, info: BackboneInfo,
          recipe: Recipe, classes: list[str]) -> None:
    """The kept epoch's model and the history; the checkpoints go, nothing is left to resume."""
    model.load_state_dict(progress.best_state)
    save_model(paths.model, model, classes=classes, info=info,
               extra={"freeze": recipe.freeze, "best_epoch": progress.best["epoch"],
                      "preprocess": read_preprocess(paths.prepared_dir)})
    with atomic_path(paths.history) as temporary:
        pd.DataFrame(progress.history).to_csv(temporary, index=False)
    if paths.checkpoint_dir is not None:
        shutil.rmtree(paths.checkpoint_dir, ignore_errors=True)


def _probe_model(head_path: Path, recipe: Recipe,
                 ) -> tuple[Backbone, ImageClassifier, list[str]]:
    """The pretrained backbone with train_head's head (or the head_init one) on top."""
    backbone_params, params = recipe.backbone, recipe.finetune
    backbone = build_backbone(backbone_params.name, backbone_params.pretrained,
                              backbone_params.weights, backbone_params.input_size)
    info = BackboneInfo.of(backbone, backbone_params.pretrained, backbone_params.weights)
    head, classes, head_info = load_head(head_path)
    if not head_info.same_network(info):
        raise DataError(f"{head_path} was fitted on features of {head_info.name} "
                        f"(pretrained={head_info.pretrained}, {head_info.input_size} px) but "
                        f"backbone is {info.name} (pretrained={info.pretrained}, "
                        f"{info.input_size} px): run `dvc repro` to refit it")
    if recipe.freeze == "all" and params.head_init != "probe":
        raise ParamsError(f"finetune_full.head_init: {params.head_init!r} with freeze=all would "
                          "leave an untrained head; use head_init: probe, or freeze partial/none")
    init_head(head, params.head_init, classes, params.imagenet_rows, params.negative_class,
              backbone.imagenet_head)
    return backbone, ImageClassifier(backbone.trunk, head), classes


def _start_from_lowest_loss(model: ImageClassifier, head_path: Path, recipe: Recipe,
                            classes: list[str], backbone: Backbone) -> None:
    """With `head_init: probe`, put train_head's fine-tuning start in the head when it is
    not the probe `select_by` chose (the lowest val loss, when the chosen C is worse than
    it beyond noise: imgpipe.probe.within_noise says why); epoch 0, the probe to beat,
    stays the chosen one."""
    params = recipe.finetune
    if params.head_init != "probe":
        return
    chosen, start = head_cs(head_path)
    if start == chosen:
        return
    head, _, _ = load_head(head_path, start=True)
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    init_head(model.head, params.head_init, classes, params.imagenet_rows,
              params.negative_class, backbone.imagenet_head)
    _logger.info("training starts from the probe at C=%g, the lowest val loss; epoch 0 is "
                 "the probe at C=%g, chosen by val %s", start, chosen, recipe.select_by)


def _training(model: ImageClassifier, frozen: list[torch.nn.Module], paths: FinetunePaths,
              recipe: Recipe, num_classes: int, device: torch.device,
              steps_per_epoch: int) -> Training:
    """Optimizer, schedule and loss: cross-entropy (class-weighted, smoothed per params),
    plus the training start's own L2 on the head with `head_penalty: probe`."""
    params = recipe.finetune
    optimizer = make_optimizer(model, params)
    criterion: torch.nn.Module = torch.nn.CrossEntropyLoss(
        weight=_class_weights(paths.prepared_dir, num_classes)
        if recipe.class_balance == "weights" else None,
        label_smoothing=params.label_smoothing).to(device)
    if params.head_penalty == "probe" and params.head_init == "probe":
        criterion = PenalisedLoss(criterion, load_probe_penalty(paths.head, start=True).to(device),
                                  model.head)
    return Training(optimizer, make_schedule(optimizer, params, steps_per_epoch), criterion,
                    frozen, params.bn_stats, device,
                    torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
                    params.clip_grad_norm)


def _loaders(prepared_dir: Path, model: ImageClassifier, backbone: Backbone, recipe: Recipe,
             device: torch.device, ranks: Ranks) -> Loaders:
    """Train and val batches: of images, or of the frozen blocks' cached outputs when
    `freeze=partial` and the trunk can be split (frozen_prefix)."""
    params, augment = recipe.finetune, recipe.augment
    evaluation = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    training = train_transform(backbone.input_size, backbone.mean, backbone.std, augment)
    images = Loaders(
        _loader(_dataset(prepared_dir, "train", training), params.batch_size, ranks,
                shuffle_seed=params.seed),
        _loader(_dataset(prepared_dir, "val", evaluation), params.batch_size, ranks))
    if recipe.freeze != "partial" or params.cached_views == 0 or params.trainable_patterns:
        return images
    if distributed.active():
        _logger.info("finetune_full.cached_views: not under torchrun; the frozen blocks run "
                     "every epoch")
        return images
    parts = frozen_prefix.split(model, backbone, len(backbone.blocks) - params.trainable_blocks)
    if parts is None:
        _logger.info("finetune_full.cached_views: %s cannot be split; the frozen blocks run "
                     "every epoch", backbone.name)
        return images
    prefix, tail = parts
    views = 1 if augment.deterministic else min(params.cached_views, params.epochs)
    train_set, val_set = images.train.dataset, images.val.dataset.dataset
    size = frozen_prefix.map_bytes(prefix, backbone.input_size,
                                   views * len(train_set) + len(val_set), device)
    if size > frozen_prefix.MEMORY_LIMIT_BYTES:
        _logger.info("finetune_full.cached_views: %d views would take %.1f GiB; the frozen "
                     "blocks run every epoch", views, size / 2**30)
        return images
    _logger.info("computing the frozen blocks once: %d view(s) of %d train images and %d val "
                 "images (%.0f MiB)", views, len(train_set), len(val_set), size / 2**20)
    view_seed = params.seed * 1000  # views differ from each other, the same in every run
    train_maps = [frozen_prefix.prefix_maps(prefix, train_set, params.batch_size, device,
                                            seed=view_seed + view) for view in range(views)]
    val_maps = frozen_prefix.prefix_maps(prefix, val_set, params.batch_size, device)
    return Loaders(
        _loader(frozen_prefix.ViewMaps(train_maps, train_set.labels), params.batch_size,
                ranks, shuffle_seed=params.seed),
        _loader(frozen_prefix.ViewMaps([val_maps], val_set.labels), params.batch_size, ranks),
        net=tail)


def _batchnorm_folded(loaders: Loaders, model: ImageClassifier, backbone: Backbone) -> Loaders:
    """The loaders with the network they train computing each frozen-statistics BatchNorm
    inside its convolution (folded_training): the same model, a faster step."""
    net = folded_training.folded(loaders.net or model, backbone.family)
    return loaders if net is None else dataclasses.replace(loaders, net=net)


def _class_weights(prepared_dir: Path, num_classes: int) -> torch.Tensor:
    """n / (classes x n_class) per class, from the train split (sklearn's "balanced")."""
    labels = read_manifest(prepared_dir, "train")["label_index"].to_numpy()
    # torch.tensor copies: pandas may hand out a read-only array, which from_numpy warns on.
    counts = torch.bincount(torch.tensor(labels, dtype=torch.int64),
                            minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).float()


def _run_key(recipe: Recipe, paths: FinetunePaths) -> str:
    """What a checkpoint must match to be resumed: the recipe, head and dataset."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    digest.update(paths.head.read_bytes())
    digest.update(dataset_digest(paths.prepared_dir).encode())
    return digest.hexdigest()[:16]


def _dataset(prepared_dir: Path, split: str, transform) -> ImageDataset:
    table = read_manifest(prepared_dir, split)
    return ImageDataset(table["image"], table["label_index"].tolist(), transform)


def _loader(dataset: Dataset, batch_size: int, ranks: Ranks,
            shuffle_seed: int | None = None) -> DataLoader:
    """This worker's share of a split, `batch_size / world` images per step.

    Train (with `shuffle_seed`): a DistributedSampler, whose permutation depends only on
    the seed and the epoch, so the workers' steps together make the batches of one
    process. Val: every world-th image in manifest order.
    """
    if shuffle_seed is None:
        share = Subset(dataset, range(ranks.rank, len(dataset), ranks.world))
        return DataLoader(share, batch_size=batch_size, shuffle=False)
    sampler = DistributedSampler(dataset, num_replicas=ranks.world, rank=ranks.rank,
                                 shuffle=True, seed=shuffle_seed)
    # drop_last avoids a 1-image batch, which BatchNorm cannot train on.
    return DataLoader(dataset, batch_size=batch_size // ranks.world, sampler=sampler,
                      drop_last=len(dataset) > batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared-dir", type=Path, required=True)
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="per-epoch training state, for resuming after a crash")
    args = parser.parse_args()

    def body() -> None:
        if distributed.relaunch("finetune_full", load_section(DistributedParams,
                                                              "distributed")):
            return
        run = load_section(RunParams, None)
        recipe = Recipe(run.freeze, load_section(BackboneParams, "backbone"),
                        load_section(FinetuneParams, "finetune_full"),
                        load_section(AugmentParams, "augment"), run.select_by,
                        run.class_balance)
        paths = FinetunePaths(args.prepared_dir, args.head, args.model, args.metrics,
                              args.history, args.checkpoint_dir)
        device = distributed.resolve_device(run.device)
        with distributed.process_group(device) as ranks:
            finetune_full(paths, recipe, device, ranks)

    stage.run("finetune_full", body)


if __name__ == "__main__":
    main()
