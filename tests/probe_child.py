"""Fit the linear probe in a fresh process and report its bytes and the BLAS that ran.

tests/test_head_kernels.py runs this under forced BLAS kernels and thread counts: the
environment (OPENBLAS_CORETYPE, NPY_DISABLE_CPU_FEATURES, ...) only applies when set
before numpy loads, hence a process per setting. Prints one JSON object:
`head_sha256` (the saved head file), `blas` (threadpoolctl's view of every BLAS loaded),
and writes the unrounded coefficients of every C to `<out>/unrounded.npz`.

    python tests/probe_child.py --out /tmp/x [--features-dir data/features] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
from numpy._core._multiarray_umath import __cpu_features__
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imgpipe import head  # noqa: E402
from imgpipe import probe as fitting  # noqa: E402
from imgpipe.backbone_info import BackboneInfo  # noqa: E402
from imgpipe.features import FeatureSet, load_split  # noqa: E402
from imgpipe.manifest import read_classes  # noqa: E402

INFO = BackboneInfo("efficientnet_lite0", True, None, 5, 224, [0.5] * 3, [0.5] * 3)
C_GRID = [0.01, 1.0, 100.0]  # weak regularisation included: the flattest objective


def synthetic(seed: int, n_per_class: int) -> FeatureSet:
    """5 classes of ReLU-like features in 256 dims, more dims than train images, as a
    backbone's pooled features on a small dataset: separable, so weak L2 is flat."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(5, 256))
    labels = np.repeat(np.arange(5), n_per_class)
    features = np.maximum(centres[labels] + rng.normal(scale=1.5, size=(len(labels), 256)), 0)
    features *= np.random.default_rng(8).uniform(0.1, 3.0, size=256)  # mixed scales
    return FeatureSet(features.astype(np.float32), labels.astype(np.int64),
                      np.array([f"id{i}" for i in range(len(labels))]))


def libm_fingerprint() -> str:
    """Hash of libm's exp, log and sin on fixed inputs: tells which kernel variant runs."""
    values = np.linspace(-20.0, 20.0, 20001)
    digest = hashlib.sha256()
    for value in values.tolist():
        digest.update(np.float64(math.exp(value) + math.log(abs(value) + 1e-3)
                                 + math.sin(value)).tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, help="real features; default synthetic")
    parser.add_argument("--threads", type=int, default=1, help="the caller's BLAS threads")
    args = parser.parse_args()
    if args.features_dir:
        classes = read_classes(args.features_dir)
        train, val = load_split(args.features_dir, "train"), load_split(args.features_dir, "val")
        c_grid = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    else:
        classes, train, val, c_grid = list("abcde"), synthetic(0, 40), synthetic(1, 20), C_GRID
    unrounded: list[np.ndarray] = []
    margin = fitting.boundary_margin

    def record(values: np.ndarray) -> float:  # fit_linear_probe passes the unrounded fit
        unrounded.append(np.array(values, dtype=np.float64))
        return margin(values)

    fitting.boundary_margin = record
    with threadpool_limits(args.threads):
        probe = fitting.fit_linear_probe(train, val, len(classes), c_grid, max_iter=1000)
    args.out.mkdir(parents=True, exist_ok=True)
    head.save_head(args.out / "head.pt", probe, classes, INFO)
    np.savez(args.out / "unrounded.npz", *unrounded)
    print(json.dumps({
        "head_sha256": hashlib.sha256((args.out / "head.pt").read_bytes()).hexdigest(),
        "best_c": probe.best_c,
        "sweep": [[p.c, p.train_accuracy, p.val_accuracy, p.val_loss] for p in probe.sweep],
        "margins": [margin(values) for values in unrounded],
        "blas": [{key: info.get(key) for key in ("internal_api", "architecture", "filepath")}
                 for info in threadpool_info() if info.get("user_api") == "blas"],
        "numpy_simd": sorted(name for name, on in __cpu_features__.items() if on),
        "libm": libm_fingerprint(),
    }))


if __name__ == "__main__":
    main()
