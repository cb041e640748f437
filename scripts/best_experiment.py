"""Pick the best DVC experiment on val, the rule the stages use, and apply it if asked.

After a sweep on the queue (README, "Recipe search"), every experiment's
`metrics/finetune_full.json` holds the val scores of its kept model (the probe included,
as epoch 0). This reads the experiments through DVC's Python API, ranks them by the val
score `--by` (then lower val loss, as `imgpipe.scores.best_index` does), prints the
ranking, and with `--apply` runs `dvc exp apply` on the winner. Test scores are shown but
never used to choose.

    python scripts/best_experiment.py --by macro_f1 --apply
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from typing import Any

from imgpipe.scores import best_index

_logger = logging.getLogger(__name__)
FINETUNE, EVALUATE = "metrics/finetune_full.json", "metrics/evaluate.json"


def value(row: dict[str, Any], file: str, name: str) -> Any:
    """A column of `dvc.api.exp_show()`: DVC prefixes a name with its file (`file:name`)
    only when another file has the same name, so look for both."""
    return row.get(f"{file}:{name}", row.get(name))


def finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The experiments (not the baseline commit) whose val scores exist."""
    return [row for row in rows if row.get("typ") != "baseline"
            and isinstance(value(row, FINETUNE, "val_loss"), (int, float))]


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
    parser.add_argument("--apply", action="store_true",
                        help="run `dvc exp apply` on the best experiment")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import dvc.api

    rows = finished(dvc.api.exp_show())
    if not rows:
        sys.exit("no finished experiment with metrics/finetune_full.json: run a sweep first "
                 "(README, Recipe search)")
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
