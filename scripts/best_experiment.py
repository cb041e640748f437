"""Pick the best DVC experiment on val, the rule the stages use, and apply it if asked.

After a sweep on the queue (README, "Recipe search"), every experiment's
`metrics/finetune_full.json` holds the val scores of its kept model (the probe included,
as epoch 0). This reads the experiments through DVC's Python API, ranks them by the val
score `--by` (then lower val loss, as `imgpipe.scores.best_index` does), prints the
ranking, and with `--apply` runs `dvc exp apply` on the winner. Test scores are shown but
never used to choose. Val scores compare only on the same val split, so only experiments
on one dataset and split compete: those whose `data` and `prepare` params equal the
workspace's params.yaml (`--source` picks another `data.source`, as a sweep with
`-S data.source=...` sets it).

    python scripts/best_experiment.py --by macro_f1 --apply
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from imgpipe.scores import best_index

_logger = logging.getLogger(__name__)
FINETUNE, EVALUATE = "metrics/finetune_full.json", "metrics/evaluate.json"


def value(row: dict[str, Any], file: str, name: str) -> Any:
    """A column of `dvc.api.exp_show()`: DVC prefixes a name with its file (`file:name`)
    only when another file has the same name, so look for both."""
    return row.get(f"{file}:{name}", row.get(name))


def finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The experiments (not the baseline commit) that ran to the end with val scores.

    A failed queued experiment is listed with its baseline's metrics: its State says so.
    """
    return [row for row in rows if row.get("typ") != "baseline"
            and row.get("State") not in ("Failed", "Queued", "Running")
            and isinstance(value(row, FINETUNE, "val_loss"), (int, float))]


def same_split(rows: list[dict[str, Any]], split: dict[str, Any]) -> list[dict[str, Any]]:
    """The experiments whose val split is the one `split` (param -> value) makes."""
    return [row for row in rows
            if all(_same(value(row, "params.yaml", key), wanted) for key, wanted in split.items())]


def _same(shown: Any, wanted: Any) -> bool:
    """exp_show gives numbers as floats and None as 'None': compare as it shows them."""
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return isinstance(shown, (int, float)) and float(shown) == float(wanted)
    return shown == wanted or str(shown) == str(wanted)


def split_params(params: dict[str, Any], source: str | None) -> dict[str, Any]:
    """The params that decide the val split (dataset and prepare's), as exp_show names
    them, from a parsed params.yaml; `source` replaces `data.source` when given."""
    flat = {f"data.{key}": value for key, value in params["data"].items()}
    flat.update({f"prepare.{key}": value for key, value in params["prepare"].items()
                 if key != "on_error"})
    if source is not None:
        flat["data.source"] = source
    return flat


def rank(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """`rows` best first: highest val `by`, then lowest val loss, then listed first."""
    remaining, ranked = list(rows), []
    while remaining:
        points = [{f"val_{by}": value(row, FINETUNE, f"val_{by}") or float("-inf"),
                   "val_loss": value(row, FINETUNE, "val_loss")} for row in remaining]
        ranked.append(remaining.pop(best_index(points, by)))
    return ranked


def _table(rows: list[dict[str, Any]], by: str) -> str:
    lines = [f"| experiment | val {by} | val loss | test accuracy | test macro-F1 | freeze |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        scores = [value(row, FINETUNE, f"val_{by}"), value(row, FINETUNE, "val_loss"),
                  value(row, EVALUATE, "accuracy"), value(row, EVALUATE, "macro_f1")]
        cells = " | ".join("-" if s is None else f"{s:.4f}" for s in scores)
        lines.append(f"| {row.get('Experiment') or row['rev'][:7]} | {cells} | "
                     f"{value(row, 'params.yaml', 'freeze')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by", choices=["accuracy", "balanced_accuracy", "macro_f1"],
                        default="accuracy", help="val score to rank by (default accuracy)")
    parser.add_argument("--source", default=None,
                        help="rank the experiments on this data.source (default: the "
                             "workspace's params.yaml)")
    parser.add_argument("--apply", action="store_true",
                        help="run `dvc exp apply` on the best experiment")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import dvc.api

    done = finished(dvc.api.exp_show())
    split = split_params(yaml.safe_load(Path("params.yaml").read_text()), args.source)
    rows = same_split(done, split)
    if not rows:
        sys.exit(f"no finished experiment with metrics/finetune_full.json on data.source "
                 f"{split['data.source']!r} with the workspace's prepare params ({len(done)} on "
                 "other data or splits): run a sweep first (README, Recipe search), or name "
                 "its dataset with --source")
    if len(rows) < len(done):
        _logger.info("left out %d experiment(s) on another dataset or split",
                     len(done) - len(rows))
    ranked = rank(rows, args.by)
    print(_table(ranked, args.by))
    best = ranked[0].get("Experiment") or ranked[0]["rev"]
    if args.apply:
        subprocess.run(["dvc", "exp", "apply", best], check=True)
        _logger.info("applied %s: `dvc repro` is up to date; commit to keep it", best)
    else:
        _logger.info("best on val %s: %s; apply it with `dvc exp apply %s`", args.by, best, best)


if __name__ == "__main__":
    main()
