"""The probe's saved bytes under other BLAS kernels, SIMD paths and thread counts.

Each setting runs tests/probe_child.py in its own process: OpenBLAS reads
OPENBLAS_CORETYPE, numpy NPY_DISABLE_CPU_FEATURES and glibc GLIBC_TUNABLES only when
they load. threadpoolctl, numpy and a libm fingerprint report what actually ran, so a
switch that silently did nothing fails the test instead of passing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgpipe.probe import COEF_DECIMALS

# Child processes running whole stages: in `make test` and CI, not `make test-fast`.
pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("probe_child.py")
# name -> (environment added, the caller's BLAS threads)
SETTINGS = {
    "as_is": ({}, 1),
    "two_threads": ({}, 2),
    "haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, 1),  # AVX2 + FMA kernels
    "sandybridge": ({"OPENBLAS_CORETYPE": "SandyBridge"}, 1),  # AVX, no FMA
    "prescott": ({"OPENBLAS_CORETYPE": "Prescott"}, 1),  # SSE3
    # numpy's baseline SIMD loops instead of AVX2, and libm without its FMA variants
    "no_avx2_numpy_libm": ({"NPY_DISABLE_CPU_FEATURES": "X86_V3",
                            "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA"}, 1),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each setting's report, plus its unrounded coefficients per C under `unrounded`."""
    reports = {}
    for name, (extra, threads) in SETTINGS.items():
        out = tmp_path_factory.mktemp(name)
        result = subprocess.run(
            [sys.executable, str(CHILD), "--out", str(out), "--threads", str(threads)],
            env={**os.environ, **extra}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        with np.load(out / "unrounded.npz") as unrounded:
            report["unrounded"] = [unrounded[key] for key in unrounded.files]
        reports[name] = report
    return reports


def test_the_forced_kernels_really_ran(runs: dict[str, dict]) -> None:
    architectures = {name: {blas["architecture"] for blas in runs[name]["blas"]}
                     for name in ("haswell", "sandybridge", "prescott")}
    assert architectures["haswell"] == {"Haswell"}  # numpy's and scipy's OpenBLAS alike
    assert all(len(found) == 1 for found in architectures.values())
    assert len(set(map(frozenset, architectures.values()))) == 3
    assert "X86_V3" not in runs["no_avx2_numpy_libm"]["numpy_simd"]
    assert runs["no_avx2_numpy_libm"]["libm"] != runs["haswell"]["libm"]


def test_the_saved_head_is_the_same_bytes_under_every_kernel(runs: dict[str, dict]) -> None:
    reference = runs["as_is"]
    for name, report in runs.items():
        assert report["head_sha256"] == reference["head_sha256"], name
        assert report["sweep"] == reference["sweep"], name


def test_kernels_move_the_fit_far_less_than_the_rounding_grid(runs: dict[str, dict]) -> None:
    """The unrounded fits do differ (else the test above proves nothing), by < 1e-3 step."""
    reference = runs["as_is"]["unrounded"]
    largest = max(float(np.abs(a - b).max()) for report in runs.values()
                  for a, b in zip(reference, report["unrounded"]))
    assert 0 < largest < 1e-3 * 10.0**-COEF_DECIMALS
