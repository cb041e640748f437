"""Command line: `python -m imgpipe predict IMAGES... [--model ...] [--out ...]`."""

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
    from imgpipe.predict import Predictor, expand_inputs

    files = expand_inputs(args.images)
    if not files:
        raise PipelineError(f"no image files in {', '.join(map(str, args.images))}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise PipelineError(f"{missing[0]} not found ({len(missing)} missing input(s))")
    predictor = Predictor(args.model)
    predictions = predictor.predict(files, args.batch_size)
    table = pd.DataFrame({
        "path": [str(f) for f in files],
        "predicted": [p.predicted for p in predictions],
        "probability": [round(p.probability, 6) for p in predictions],
        "top_k": [";".join(f"{name}:{prob:.4f}" for name, prob in p.top(args.top_k))
                  for p in predictions],
    })
    with atomic_path(args.out) as temporary:
        table.to_csv(temporary, index=False)
    _logger.info("wrote %d predictions to %s", len(table), args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imgpipe", description="imgpipe tools")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify new images with a trained model")
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument("--model", type=Path, default=Path("models/model.pt"))
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"))
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[imgpipe] %(message)s")
    try:
        predict_command(args)
    except PipelineError as error:
        print(f"[imgpipe] error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
