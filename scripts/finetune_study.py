"""Study fine-tuning recipes in one process: the numbers behind the README's
"What undoes the probe in the first steps" (not a pipeline stage).

Runs prepare, extract and train_head once per work folder (reused afterwards), then
either finetune_full() with a recipe and scores the kept model on test, or, with
`--steps N`, the first N optimisation steps of that recipe on one cached view, logging
train accuracy every 20 steps and val accuracy every 40. The stage functions are the
pipeline's own; only the params come from the command line (JSON overrides of the
`finetune_full` and `augment` sections' defaults):

    python scripts/finetune_study.py --source data/scratches --work /tmp/study/scratches \
        --name partial_default
    python scripts/finetune_study.py --source data/scratches --work /tmp/study/scratches \
        --name sgd --finetune '{"optimizer": "sgd", "lr": 0.001, "head_lr_mult": 1}'
    python scripts/finetune_study.py --source data/scratches --work /tmp/study/scratches \
        --steps 80 --finetune '{"cached_views": 1, "warmup_epochs": 0.5}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "stages"))

from extract import extract  # noqa: E402
from finetune_full import (  # noqa: E402
    FinetunePaths,
    Recipe,
    _batchnorm_folded,
    _loaders,
    _probe_model,
    _start_from_lowest_loss,
    _training,
    finetune_full,
)
from prepare import prepare  # noqa: E402
from train_head import train_head  # noqa: E402

from imgpipe.data import ImageDataset  # noqa: E402
from imgpipe.distributed import ALONE  # noqa: E402
from imgpipe.errors import ParamsError  # noqa: E402
from imgpipe.finetune import (  # noqa: E402
    EpochResult,
    evaluate_epoch,
    set_trainable,
    train_epoch,
)
from imgpipe.io import read_json, write_json  # noqa: E402
from imgpipe.manifest import read_manifest  # noqa: E402
from imgpipe.model import load_model  # noqa: E402
from imgpipe.params import BackboneParams, load_section  # noqa: E402
from imgpipe.params_extract import ExtractParams  # noqa: E402
from imgpipe.params_finetune import AugmentParams, FinetuneParams  # noqa: E402
from imgpipe.params_head import TrainHeadParams  # noqa: E402
from imgpipe.params_prepare import PrepareParams  # noqa: E402
from imgpipe.transforms import eval_transform  # noqa: E402

_logger = logging.getLogger("finetune_study")
PARAMS_FILE = ROOT / "params.yaml"  # prepare, extract and train_head as committed


def probe(source: Path, work: Path, backbone: BackboneParams, select_by: str,
          class_balance: str, params_file: Path = PARAMS_FILE) -> Path:
    """prepare, extract (once per work folder) and train_head with `params_file`'s params,
    the committed ones by default (as `dvc exp run` would, extract's runtime included);
    the head file's path. The prepared split is kept per work folder: give another
    prepare.seed its own `work`."""
    prepared, features, cache = work / "prepared", work / "features", work / "cache"
    split = load_section(PrepareParams, "prepare", params_file)
    extracting = load_section(ExtractParams, "extract", params_file)
    fitting = load_section(TrainHeadParams, "train_head", params_file)
    _same_inputs(work, {"prepare": dataclasses.asdict(split),
                        "extract": dataclasses.asdict(extracting),
                        "input_size": backbone.input_size, "source": str(source)})
    if not prepared.exists():
        prepare(source=source, out_dir=prepared, metrics_path=work / "prepare.json",
                report_path=work / "skipped.csv", seed=split.seed,
                val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                image_size=backbone.input_size or split.image_size,
                shard_size=split.shard_size, on_error=split.on_error, cache_dir=cache)
    if not features.exists():
        extract(prepared_dir=prepared, features_dir=features, backbone_name=backbone.name,
                pretrained=True, weights=None, batch_size=extracting.batch_size,
                input_size=backbone.input_size, cache_dir=cache,
                runtime=extracting.runtime, precision=extracting.precision)
    head = work / f"head-{class_balance}-{select_by}.pt"
    train_head(features_dir=features, head_path=head, metrics_path=head.with_suffix(".json"),
               sweep_path=head.with_suffix(".csv"), c_grid=fitting.c_grid,
               max_iter=fitting.max_iter, select_by=select_by, class_balance=class_balance)
    return head


def _same_inputs(work: Path, inputs: dict) -> None:
    """Record what the work folder's prepared split and features are made from, or refuse
    a run whose prepare or extract params differ from the recorded ones."""
    record = work / "study_inputs.json"
    if not record.is_file():
        write_json(record, inputs)
        return
    made = read_json(record)
    if made != json.loads(json.dumps(inputs)):
        changed = sorted(key for key in inputs if made.get(key) != inputs[key])
        raise ParamsError(f"{work} holds a split and features made with other {changed} "
                          f"({record}): give this run its own --work")


def test_scores(prepared: Path, model_path: Path) -> EpochResult:
    model, record = load_model(model_path)
    info, table = record.backbone, read_manifest(prepared, "test")
    dataset = ImageDataset(table["image"], table["label_index"].tolist(),
                           eval_transform(info.input_size, info.mean, info.std))
    return evaluate_epoch(model, DataLoader(dataset, batch_size=32))


def first_steps(prepared: Path, head: Path, recipe: Recipe, steps: int) -> None:
    """Train `steps` steps from the probe, logging train and val accuracy as it goes."""
    backbone, model, classes = _probe_model(head, recipe)
    model = model.to(memory_format=torch.channels_last)
    params, device = recipe.finetune, torch.device("cpu")
    frozen = set_trainable(model, backbone, recipe.freeze, params.trainable_blocks,
                           params.trainable_patterns)
    loaders = _batchnorm_folded(_loaders(prepared, model, backbone, recipe, device,
                                         ranks=ALONE), model, backbone)
    _start_from_lowest_loss(model, head, recipe, classes, backbone)
    net = loaders.net or model
    paths = FinetunePaths(prepared, head, *(Path("unused"),) * 3)
    training = _training(model, frozen, paths, recipe, len(classes), device,
                         len(loaders.train))
    loaders.train.sampler.set_epoch(1)
    if hasattr(loaders.train.dataset, "set_epoch"):
        loaders.train.dataset.set_epoch(1)
    start = evaluate_epoch(net, loaders.val)
    _logger.info("start: val acc %.4f, train-view acc %.4f (no step taken)", start.accuracy,
                 evaluate_epoch(net, loaders.train).accuracy)
    done, batches = 0, iter(loaders.train)
    while done < steps:
        window = []  # 20 steps a line, into the next pass over the view when one ends
        while len(window) < min(20, steps - done):
            try:
                window.append(next(batches))
            except StopIteration:
                batches = iter(loaders.train)
        result = train_epoch(net, training, window, desc=f"steps {done + 1}-")
        done += len(window)
        line = f"step {done}: train acc (these steps) {result.accuracy:.3f}"
        if done % 40 == 0:
            line += f", val acc {evaluate_epoch(net, loaders.val).accuracy:.4f}"
        _logger.info(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="image folder or CSV")
    parser.add_argument("--work", type=Path, required=True, help="folder for everything made")
    parser.add_argument("--name", default="run", help="sub-folder of this run's model")
    parser.add_argument("--freeze", choices=["all", "partial", "none"], default="partial",
                        help="all: the probe alone, scored on test")
    parser.add_argument("--input-size", type=int, default=None,
                        help="pixels for prepare and the network (default: 224, lite0's)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE,
                        help="params file for prepare, extract and train_head (default: the "
                             "committed one; its data section is not read); another "
                             "prepare.seed needs its own --work")
    parser.add_argument("--select-by", default="accuracy")
    parser.add_argument("--class-balance", default="none")
    parser.add_argument("--finetune", default="{}", help="JSON: finetune_full overrides")
    parser.add_argument("--augment", default="{}", help="JSON: augment overrides")
    parser.add_argument("--steps", type=int, default=0,
                        help="only the first N steps, logged every 20 (0: whole runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    backbone = BackboneParams("efficientnet_lite0", pretrained=True, input_size=args.input_size)
    args.work.mkdir(parents=True, exist_ok=True)
    head = probe(args.source, args.work, backbone, args.select_by, args.class_balance,
                 args.params)
    recipe = Recipe(args.freeze, backbone, FinetuneParams(**json.loads(args.finetune)),
                    AugmentParams(**json.loads(args.augment)), args.select_by,
                    args.class_balance)
    prepared = args.work / "prepared"
    if args.steps:
        first_steps(prepared, head, recipe, args.steps)
        return
    out = args.work / args.name
    out.mkdir(exist_ok=True)
    began = time.monotonic()
    kept = finetune_full(FinetunePaths(prepared, head, out / "model.pt", out / "metrics.json",
                                       out / "history.csv"), recipe)
    result = {"name": args.name, "wall_s": round(time.monotonic() - began, 1), **kept,
              **{f"test_{k}": v for k, v in dataclasses.asdict(
                  test_scores(prepared, out / "model.pt")).items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
