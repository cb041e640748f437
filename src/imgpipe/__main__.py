"""Command line: `python -m imgpipe predict IMAGES...` and `python -m imgpipe sync-mlflow`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from imgpipe.errors import PipelineError
from imgpipe.io import atomic_path

_logger = logging.getLogger("imgpipe")


def predict_command(args: argparse.Namespace) -> None:
    from imgpipe.predict import Predictor, Unreadable, expand_inputs, predict_files

    files = expand_inputs(args.images)
    if not files:
        raise PipelineError(f"no image files in {', '.join(map(str, args.images))}")
    predictor = Predictor(args.model)
    results = predict_files(predictor, files, args.batch_size, args.on_error)
    read = [not isinstance(r, Unreadable) for r in results]
    table = pd.DataFrame({
        "path": [str(f) for f in files],
        "predicted": [None if isinstance(r, Unreadable) else r.predicted for r in results],
        "probability": [None if isinstance(r, Unreadable) else round(r.probability, 6)
                        for r in results],
        "top_k": [None if isinstance(r, Unreadable) else
                  ";".join(f"{name}:{prob:.4f}" for name, prob in r.top(args.top_k))
                  for r in results],
        "error": [r.reason if isinstance(r, Unreadable) else None for r in results],
    })
    with atomic_path(args.out) as temporary:
        table.to_csv(temporary, index=False)
    skipped = len(read) - sum(read)
    for path, result in zip(files, results):
        if isinstance(result, Unreadable):
            _logger.warning("skipped %s: %s", path, result.reason)
    _logger.info("wrote %d predictions to %s%s", sum(read), args.out.resolve(),
                 f" ({skipped} unreadable input(s) skipped, listed with the reason in its "
                 "`error` column)" if skipped else "")


def sync_command(args: argparse.Namespace) -> None:
    from imgpipe.params import load_section
    from imgpipe.params_evaluate import TrackingParams
    from imgpipe.sync import sync_mlflow

    experiment = args.experiment or load_section(TrackingParams, "tracking",
                                                 args.repo / "params.yaml").experiment
    done = sync_mlflow(args.repo, experiment, commits=args.commits)
    counts = {action: sum(d.action == action for d in done)
              for action in ("logged", "adopted", "exists")}
    _logger.info("%d revision(s): %d logged, %d adopted (live runs tagged), %d already in "
                 "MLflow, %d skipped", len(done), counts["logged"], counts["adopted"],
                 counts["exists"], len(done) - sum(counts.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description="imgpipe tools")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="classify new images with a trained model",
        description="Classify images with a model file; writes one CSV row per input.")
    predict.add_argument("images", nargs="+", type=Path,
                         help="image files or folders (searched recursively)")
    predict.add_argument("--model", type=Path, default=Path("models/model.pt"),
                         help="model file written by finetune_full (default: %(default)s)")
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"),
                         help="CSV to write: path, predicted, probability, top_k, error "
                              "(default: %(default)s)")
    predict.add_argument("--top-k", type=int, default=3,
                         help="classes listed in the top_k column, most probable first "
                              "(default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=32,
                         help="images per forward pass (memory and speed; default: "
                              "%(default)s)")
    predict.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                         help="an unreadable or missing image: skip (a row with the reason "
                              "in `error`) or stop (fail naming the file); default: "
                              "%(default)s")
    predict.set_defaults(handler=predict_command)
    sync = commands.add_parser(
        "sync-mlflow", help="log every DVC experiment missing from MLflow, exactly once",
        description="One MLflow run per DVC experiment (and commit) that has run "
                    "evaluate, tagged dvc_rev; runs already there are left alone.")
    sync.add_argument("--repo", type=Path, default=Path(),
                      help="the DVC repository (default: the current folder)")
    sync.add_argument("--commits", type=int, default=1,
                      help="experiments of this many commits back from HEAD, HEAD "
                           "included; -1: all (default: %(default)s)")
    sync.add_argument("--experiment", default=None,
                      help="MLflow experiment (default: tracking.experiment in "
                           "params.yaml)")
    sync.set_defaults(handler=sync_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[imgpipe] %(message)s")
    try:
        args.handler(args)
    except PipelineError as error:
        print(f"[imgpipe] error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
