"""Run prepare, extract, train_head and one epoch of fine-tuning in a fresh process.

tests/test_torch_kernels.py runs this under forced PyTorch kernel paths
(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), which apply only when
set before torch loads. Writes `<out>/features/` and `<out>/model.pt`; prints one JSON
object with the CPU capability torch reports and the fine-tuning history.

    python tests/torch_child.py --images <ImageFolder> --out <dir>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from imgpipe.params import BackboneParams  # noqa: E402
from imgpipe.params_finetune import FinetuneParams  # noqa: E402
from stages.extract import extract  # noqa: E402
from stages.finetune_full import FinetunePaths, Recipe, finetune_full  # noqa: E402
from stages.prepare import prepare  # noqa: E402
from stages.train_head import train_head  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out
    prepare(source=args.images, out_dir=out / "prepared", metrics_path=out / "prepare.json",
            report_path=out / "skipped.csv", seed=0, val_fraction=0.2, test_fraction=0.2,
            image_size=64, shard_size=1000)
    extract(prepared_dir=out / "prepared", features_dir=out / "features",
            backbone_name="efficientnet_lite0", pretrained=True, weights=None, batch_size=16)
    train_head(features_dir=out / "features", head_path=out / "head.pt",
               metrics_path=out / "train_head.json", sweep_path=out / "sweep.csv",
               c_grid=[0.1, 1.0], max_iter=500)
    finetune_full(FinetunePaths(out / "prepared", out / "head.pt", out / "model.pt",
                                out / "finetune.json", out / "history.csv"),
                  Recipe("partial", BackboneParams("efficientnet_lite0", True, None),
                         FinetuneParams(trainable_blocks=1, epochs=1, batch_size=8)))
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "head": (out / "head.pt").read_bytes().hex()[-64:],
                      "history": pd.read_csv(out / "history.csv").fillna(-1).to_dict("list")}))


if __name__ == "__main__":
    main()
