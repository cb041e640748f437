"""bf16 against f32 on the digits: the linear probe's val and test accuracy from features
extracted by OpenVINO in each precision (same prepared images, same probe recipe)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from scripts.make_digits import render_digits

from imgpipe.errors import ParamsError
from imgpipe.features import load_split
from imgpipe.head import load_head
from imgpipe.runtimes import check_precision
from stages.extract import extract
from stages.prepare import prepare
from stages.train_head import train_head

_logger = logging.getLogger(__name__)


def measure(work: Path, per_class: int | None, batch_size: int, c_grid: list[float],
            max_iter: int) -> dict[str, float | None]:
    """Figures by name: val/test accuracy per precision, and the features' largest
    difference relative to their largest value. None where bf16 cannot run."""
    root = work / "bf16_digits"
    if not root.exists():
        render_digits(root / "images", classes=list(range(10)), per_class=per_class, size=64)
        prepare(source=root / "images", out_dir=root / "prepared",
                metrics_path=root / "prepare.json", report_path=root / "skipped.csv",
                seed=0, val_fraction=0.15, test_fraction=0.15, image_size=224,
                shard_size=1000)
    figures: dict[str, float | None] = {}
    features = {}
    for precision in ("f32", "bf16"):
        out = root / precision
        try:
            check_precision("openvino", precision)
        except ParamsError as error:
            _logger.warning("bf16 probe: %s", error)
            figures.update({f"probe {split} accuracy {precision}": None
                            for split in ("val", "test")})
            continue
        extract(prepared_dir=root / "prepared", features_dir=out / "features",
                backbone_name="efficientnet_lite0", pretrained=True, weights=None,
                batch_size=batch_size, runtime="openvino", precision=precision)
        metrics = train_head(features_dir=out / "features", head_path=out / "head.pt",
                             metrics_path=out / "train_head.json", sweep_path=out / "sweep.csv",
                             c_grid=c_grid, max_iter=max_iter)
        head, _, _ = load_head(out / "head.pt")
        test = load_split(out / "features", "test")
        with torch.no_grad():
            predicted = head(torch.from_numpy(test.features)).argmax(1).numpy()
        figures[f"probe val accuracy {precision}"] = metrics["val_accuracy"]
        figures[f"probe test accuracy {precision}"] = float(np.mean(predicted == test.labels))
        features[precision] = test.features
    if len(features) == 2:
        diff = np.abs(features["bf16"] - features["f32"]).max()
        figures["bf16 feature difference"] = float(diff / np.abs(features["f32"]).max())
    else:
        figures["bf16 feature difference"] = None
    figures["digits images"] = float(sum(1 for _ in (root / "images").rglob("*.png")))
    return figures
