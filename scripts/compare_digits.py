"""The digits comparison in the README: four runs, one epoch budget, one table.

Renders scikit-learn's 1,797 digits into data/digits (once), then runs, each as a DVC
experiment on that dataset: the linear probe (freeze=all), freeze=partial, freeze=none,
and freeze=none from random init (backbone.pretrained=false). Every run shares one recipe:
the same epoch budget, input size and augmentation. Prints a Markdown table of val and
test accuracy and wall time. Run from the repository root, with the venv on PATH:

    python scripts/compare_digits.py --epochs 5 --input-size 96 --rotation 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Every row sets every key any row changes: `dvc exp run` leaves its params in the
# workspace (staged), so a key left out would silently keep the previous row's value.
_PRETRAINED = {"backbone.pretrained": "true", "finetune_full.bn_stats": "frozen",
               "finetune_full.head_init": "probe"}
RUNS = (
    ("linear probe (`freeze=all`)", {"freeze": "all", **_PRETRAINED}),
    ("`freeze=partial` (last 3 blocks)", {"freeze": "partial", **_PRETRAINED}),
    ("`freeze=none`", {"freeze": "none", **_PRETRAINED}),
    # From scratch, BatchNorm must learn its statistics (a random network's running
    # statistics are not those of any data) and the head starts fresh: a probe on random
    # features, folded into raw-feature weights, makes the first steps explode.
    ("`freeze=none`, random init", {"freeze": "none", "backbone.pretrained": "false",
                                    "finetune_full.bn_stats": "update",
                                    "finetune_full.head_init": "xavier"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs, every run")
    parser.add_argument("--input-size", type=int, default=96,
                        help="backbone.input_size: the scans are 8x8, 224 px adds only cost")
    parser.add_argument("--rotation", type=float, default=10.0, help="augment.rotation")
    parser.add_argument("--data", type=Path, default=Path("data/digits"))
    parser.add_argument("--only", type=int, nargs="*", help="run only these rows (1-4)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more params for every row, e.g. finetune_full.label_smoothing=0.1")
    args = parser.parse_args()
    if not args.data.exists():
        subprocess.run([sys.executable, "scripts/make_digits.py", "--out", str(args.data)],
                       check=True)
    rows = []
    for number, (label, overrides) in enumerate(RUNS, start=1):
        if args.only and number not in args.only:
            continue
        settings = [f"data.source={args.data}", f"finetune_full.epochs={args.epochs}",
                    f"backbone.input_size={args.input_size}",
                    f"augment.rotation={args.rotation}",
                    *args.set, *[f"{key}={value}" for key, value in overrides.items()]]
        command = ["dvc", "exp", "run", *[a for s in settings for a in ("-S", s)]]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        test = json.loads(Path("metrics/evaluate.json").read_text())
        tuned = json.loads(Path("metrics/finetune_full.json").read_text())
        rows.append(f"| {label} | `dvc exp run {' '.join(command[3:])}` | "
                    f"{tuned['val_accuracy']:.4f} (epoch {tuned['best_epoch']}) | "
                    f"{test['accuracy']:.4f} | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    print("\n| run | command | val accuracy (kept epoch) | test accuracy | wall time |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
