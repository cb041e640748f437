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
from torch.utils.data import DataLoader, DistributedSampler, Subset

from imgpipe import distributed, stage
from imgpipe.augment import train_transform
from imgpipe.backbone_info import BackboneInfo
from imgpipe.backbones import build_backbone
from imgpipe.data import ImageDataset
from imgpipe.distributed import ALONE, Ranks
from imgpipe.errors import DataError, ParamsError
from imgpipe.finetune import Progress, evaluate_epoch, fit, parameter_counts, set_trainable
from imgpipe.head import init_head, load_head
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import MANIFEST_NAME, read_manifest, read_preprocess
from imgpipe.model import ImageClassifier, save_model
from imgpipe.optim import make_optimizer, make_schedule
from imgpipe.params import (
    AugmentParams,
    BackboneParams,
    ClassBalance,
    FinetuneParams,
    SelectBy,
    load_params,
)
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
    model = ImageClassifier(backbone.trunk, head).to(device)
    frozen = set_trainable(model, backbone, freeze, params.trainable_blocks,
                           params.trainable_patterns)
    counts = parameter_counts(model)
    _logger.info("parameters: %d total, %d trainable, %d frozen", counts["total"],
                 counts["trainable"], counts["frozen"])

    val_loader = _loader(prepared_dir, "val", eval_transform(
        backbone.input_size, backbone.mean, backbone.std), params.batch_size, ranks)
    start = evaluate_epoch(model, val_loader, device)
    history = [{"epoch": 0, **{key: None for key in start.row("train")}, **start.row("val")}]
    progress = Progress(history, copy.deepcopy(model.state_dict()), history[0])
    _logger.info("epoch 0 (linear probe): val acc %.4f  val loss %.4f", start.accuracy,
                 start.loss)
    if freeze == "all":
        _logger.info("freeze=all: no end-to-end training, the linear-probe model is final")
    else:
        torch.manual_seed(params.seed + ranks.rank)  # augmentation differs across workers
        train_loader = _loader(prepared_dir, "train", train_transform(
            backbone.input_size, backbone.mean, backbone.std, **asdict(augment)),
            params.batch_size, ranks, shuffle_seed=params.seed)
        optimizer = make_optimizer(model, params)
        criterion = torch.nn.CrossEntropyLoss(
            weight=_class_weights(prepared_dir, len(classes)) if class_balance == "weights"
            else None, label_smoothing=params.label_smoothing).to(device)
        schedule = make_schedule(optimizer, params, steps_per_epoch=len(train_loader))
        key = _run_key(freeze, backbone_params, params, augment, head_path, prepared_dir)
        checkpoint = None if checkpoint_dir is None else checkpoint_dir / f"finetune-{key}.pt"
        progress = fit(model, frozen, train_loader=train_loader, val_loader=val_loader,
                       optimizer=optimizer, schedule=schedule, epochs=params.epochs,
                       bn_stats=params.bn_stats, progress=progress, checkpoint=checkpoint,
                       criterion=criterion, select_by=select_by, patience=params.patience,
                       device=device, ranks=ranks,
                       scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"))
    best_state, best, history = progress.best_state, progress.best, progress.history
    metrics = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
               "val_balanced_accuracy": best["val_balanced_accuracy"],
               "val_macro_f1": best["val_macro_f1"], "val_loss": best["val_loss"],
               "params_trainable": counts["trainable"], "params_total": counts["total"]}
    if not ranks.main:
        return metrics
    model.load_state_dict(best_state)
    save_model(model_path, model, classes=classes, info=info,
               extra={"freeze": freeze, "best_epoch": best["epoch"],
                      "preprocess": read_preprocess(prepared_dir)})
    with atomic_path(history_path) as temporary:
        pd.DataFrame(history).to_csv(temporary, index=False)
    write_json(metrics_path, metrics)
    _logger.info("kept epoch %d: val acc %.4f", best["epoch"], best["val_accuracy"])
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # done: nothing left to resume
    return metrics


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


def _loader(prepared_dir: Path, split: str, transform, batch_size: int, ranks: Ranks,
            shuffle_seed: int | None = None) -> DataLoader:
    """This worker's share of a split, `batch_size / world` images per step.

    Train (with `shuffle_seed`): a DistributedSampler, whose permutation depends only on
    the seed and the epoch, so the workers' steps together make the batches of one
    process. Val: every world-th image in manifest order.
    """
    table = read_manifest(prepared_dir, split)
    dataset = ImageDataset(table["file"], table["label_index"].tolist(), transform)
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
        params = load_params()
        if distributed.relaunch("finetune_full", params.distributed.nproc_per_node):
            return
        device = distributed.resolve_device(params.device)
        with distributed.process_group(device) as ranks:
            finetune_full(prepared_dir=args.prepared_dir, head_path=args.head,
                          model_path=args.model, metrics_path=args.metrics,
                          history_path=args.history, freeze=params.freeze,
                          backbone_params=params.backbone, params=params.finetune_full,
                          augment=params.augment, checkpoint_dir=args.checkpoint_dir,
                          device=device, ranks=ranks, select_by=params.select_by,
                          class_balance=params.class_balance)

    stage.run("finetune_full", body)


if __name__ == "__main__":
    main()
