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
import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from imgpipe import distributed, frozen_prefix, stage
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
from imgpipe.head import init_head, load_head, load_probe_penalty
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import MANIFEST_NAME, read_manifest, read_preprocess
from imgpipe.model import ImageClassifier, save_model
from imgpipe.optim import make_optimizer, make_schedule
from imgpipe.params import (
    BackboneParams,
    ClassBalance,
    DistributedParams,
    RunParams,
    SelectBy,
    load_section,
)
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)


def finetune_full(*, prepared_dir: Path, head_path: Path, model_path: Path, metrics_path: Path,
                  history_path: Path, freeze: str, backbone_params: BackboneParams,
                  params: FinetuneParams, augment: AugmentParams | None = None,
                  checkpoint_dir: Path | None = None, device: torch.device | None = None,
                  ranks: Ranks = ALONE, select_by: SelectBy = "accuracy",
                  class_balance: ClassBalance = "none") -> dict:
    """Build backbone + probe head, fine-tune per `freeze`, save the best-on-val model.

    The best epoch is the one with the highest val `select_by`;
    `class_balance="weights"` weighs each image's loss by the inverse frequency of its
    class in train.

    With `checkpoint_dir`, training state is saved there after every epoch and an
    interrupted run with the same params, head and data resumes from it. Collective
    under torchrun: every worker trains, rank 0 writes.
    """
    augment = augment or AugmentParams()
    device = device or torch.device("cpu")
    if params.batch_size % ranks.world:
        raise ParamsError(f"finetune_full.batch_size: {params.batch_size} images cannot be "
                          f"shared equally by {ranks.world} processes; use a multiple of "
                          "distributed.nproc_per_node")
    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    backbone, model, classes = _probe_model(head_path, freeze, backbone_params, params)
    model = model.to(device)
    frozen = set_trainable(model, backbone, freeze, params.trainable_blocks,
                           params.trainable_patterns)
    counts = parameter_counts(model)
    _logger.info("parameters: %d total, %d trainable, %d frozen", counts["total"],
                 counts["trainable"], counts["frozen"])
    loaders = _loaders(prepared_dir, model, backbone, freeze, params, augment, device, ranks)
    start = evaluate_epoch(loaders.net or model, loaders.val, device)
    history = [{"epoch": 0, **{key: None for key in start.row("train")}, **start.row("val")}]
    progress = Progress(history, copy.deepcopy(model.state_dict()), history[0])
    _logger.info("epoch 0 (linear probe): val acc %.4f  val loss %.4f", start.accuracy,
                 start.loss)
    if freeze == "all":
        _logger.info("freeze=all: no end-to-end training, the linear-probe model is final")
    else:
        training = _training(model, frozen, params, head_path, prepared_dir, len(classes),
                             class_balance, device, len(loaders.train))
        key = _run_key(freeze, backbone_params, params, augment, head_path, prepared_dir)
        checkpoint = None if checkpoint_dir is None else checkpoint_dir / f"finetune-{key}.pt"
        torch.manual_seed(params.seed + ranks.rank)  # augmentation differs across workers
        progress = fit(model, training, loaders, Selection(params.epochs, select_by,
                       params.patience), progress, checkpoint, ranks)
    best = progress.best
    metrics = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
               "val_balanced_accuracy": best["val_balanced_accuracy"],
               "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
               "params_trainable": counts["trainable"], "params_total": counts["total"]}
    if not ranks.main:
        return metrics
    model.load_state_dict(progress.best_state)
    save_model(model_path, model, classes=classes,
               info=BackboneInfo.of(backbone, backbone_params.pretrained, backbone_params.weights),
               extra={"freeze": freeze, "best_epoch": best["epoch"],
                      "preprocess": read_preprocess(prepared_dir)})
    with atomic_path(history_path) as temporary:
        pd.DataFrame(progress.history).to_csv(temporary, index=False)
    write_json(metrics_path, metrics)
    _logger.info("kept epoch %d: val acc %.4f", best["epoch"], best["val_accuracy"])
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # done: nothing left to resume
    return metrics


def _probe_model(head_path: Path, freeze: str, backbone_params: BackboneParams,
                 params: FinetuneParams) -> tuple[Backbone, ImageClassifier, list[str]]:
    """The pretrained backbone with train_head's head (or the head_init one) on top."""
    backbone = build_backbone(backbone_params.name, backbone_params.pretrained,
                              backbone_params.weights, backbone_params.input_size)
    info = BackboneInfo.of(backbone, backbone_params.pretrained, backbone_params.weights)
    head, classes, head_info = load_head(head_path)
    if not head_info.same_network(info):
        raise DataError(f"{head_path} was fitted on features of {head_info.name} "
                        f"(pretrained={head_info.pretrained}, {head_info.input_size} px) but "
                        f"backbone is {info.name} (pretrained={info.pretrained}, "
                        f"{info.input_size} px): run `dvc repro` to refit it")
    if freeze == "all" and params.head_init != "probe":
        raise ParamsError(f"finetune_full.head_init: {params.head_init!r} with freeze=all would "
                          "leave an untrained head; use head_init: probe, or freeze partial/none")
    init_head(head, params.head_init, classes, params.imagenet_rows, params.negative_class,
              backbone.imagenet_head)
    return backbone, ImageClassifier(backbone.trunk, head), classes


def _training(model: ImageClassifier, frozen: list[torch.nn.Module], params: FinetuneParams,
              head_path: Path, prepared_dir: Path, num_classes: int,
              class_balance: ClassBalance, device: torch.device,
              steps_per_epoch: int) -> Training:
    """Optimizer, schedule and loss: cross-entropy (class-weighted, smoothed per params),
    plus the probe's own L2 on the head with `head_penalty: probe`."""
    optimizer = make_optimizer(model, params)
    criterion: torch.nn.Module = torch.nn.CrossEntropyLoss(
        weight=_class_weights(prepared_dir, num_classes) if class_balance == "weights"
        else None, label_smoothing=params.label_smoothing).to(device)
    if params.head_penalty == "probe" and params.head_init == "probe":
        criterion = PenalisedLoss(criterion, load_probe_penalty(head_path).to(device),
                                  model.head)
    return Training(optimizer, make_schedule(optimizer, params, steps_per_epoch), criterion,
                    frozen, params.bn_stats, device,
                    torch.amp.GradScaler("cuda", enabled=device.type == "cuda"))


def _loaders(prepared_dir: Path, model: ImageClassifier, backbone: Backbone, freeze: str,
             params: FinetuneParams, augment: AugmentParams, device: torch.device,
             ranks: Ranks) -> Loaders:
    """Train and val batches: of images, or of the frozen blocks' cached outputs when
    `freeze=partial` and the trunk can be split (frozen_prefix)."""
    evaluation = eval_transform(backbone.input_size, backbone.mean, backbone.std)
    training = train_transform(backbone.input_size, backbone.mean, backbone.std, augment)
    images = Loaders(
        _loader(_dataset(prepared_dir, "train", training), params.batch_size, ranks,
                shuffle_seed=params.seed),
        _loader(_dataset(prepared_dir, "val", evaluation), params.batch_size, ranks))
    if freeze != "partial" or params.cached_views == 0 or params.trainable_patterns:
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


def _class_weights(prepared_dir: Path, num_classes: int) -> torch.Tensor:
    """n / (classes x n_class) per class, from the train split (sklearn's "balanced")."""
    labels = read_manifest(prepared_dir, "train")["label_index"].to_numpy()
    counts = torch.bincount(torch.from_numpy(labels), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).float()


def _run_key(freeze: str, backbone_params: BackboneParams, params: FinetuneParams,
             augment: AugmentParams, head_path: Path, prepared_dir: Path) -> str:
    """What a checkpoint must match to be resumed: params, head and dataset."""
    digest = hashlib.sha256(json.dumps(
        [freeze, asdict(backbone_params), asdict(params), asdict(augment)],
        sort_keys=True).encode())
    digest.update(head_path.read_bytes())
    digest.update((prepared_dir / MANIFEST_NAME).read_bytes())
    return digest.hexdigest()[:16]


def _dataset(prepared_dir: Path, split: str, transform) -> ImageDataset:
    table = read_manifest(prepared_dir, split)
    return ImageDataset(table["file"], table["label_index"].tolist(), transform)


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
                                                              "distributed").nproc_per_node):
            return
        run = load_section(RunParams, None)
        device = distributed.resolve_device(run.device)
        with distributed.process_group(device) as ranks:
            finetune_full(prepared_dir=args.prepared_dir, head_path=args.head,
                          model_path=args.model, metrics_path=args.metrics,
                          history_path=args.history, freeze=run.freeze,
                          backbone_params=load_section(BackboneParams, "backbone"),
                          params=load_section(FinetuneParams, "finetune_full"),
                          augment=load_section(AugmentParams, "augment"),
                          checkpoint_dir=args.checkpoint_dir, device=device, ranks=ranks,
                          select_by=run.select_by, class_balance=run.class_balance)

    stage.run("finetune_full", body)


if __name__ == "__main__":
    main()
