"""The benchmark (bench/run.py): verdicts follow from figures, and a tiny run reports
every target with a figure and a verdict computed from it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from bench.report import MET, MISSED, NOT_AVAILABLE, Check, Figure, verdict  # noqa: E402

TARGETS = {"extraction_throughput", "head_training", "incremental_caches", "dvc_noop",
           "memory"}


@pytest.mark.parametrize(("value", "expected"), [(2.5, MET), (2.0, MET), (1.99, MISSED),
                                                 (None, NOT_AVAILABLE)])
def test_verdict_is_met_only_when_every_checked_figure_is_within_its_bound(
        value: float | None, expected: str) -> None:
    figures = [Figure("speedup", value, "x"), Figure("seconds", 1.0, "s")]
    checks = [Check("speedup", ">=", 2.0), Check("seconds", "<=", 3.0)]
    assert verdict(checks, figures) == expected


def test_one_missed_check_makes_the_target_missed() -> None:
    figures = [Figure("speedup", 5.0, "x"), Figure("seconds", 3.5, "s")]
    assert verdict([Check("speedup", ">=", 2.0), Check("seconds", "<=", 3.0)],
                   figures) == MISSED


def _recomputed(check: dict, figures: dict[str, float]) -> bool:
    value = figures[check["figure"]]
    return value <= check["bound"] if check["op"] == "<=" else value >= check["bound"]


@pytest.mark.slow
def test_tiny_run_reports_every_target_with_figures_and_verdicts_from_them(
        tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--sizes", "40", "80",
         "--rounds", "1", "--throughput-images", "40", "--digits-per-class", "8",
         "--out", str(out),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())

    targets = {target["name"]: target for target in report["targets"]}
    assert set(targets) == TARGETS
    for name, target in targets.items():
        figures = {figure["name"]: figure["value"] for figure in target["figures"]}
        assert target["checks"], name
        for check in target["checks"]:
            value = figures[check["figure"]]
            assert value is not None and math.isfinite(value), (name, check)
            assert check["passed"] == _recomputed(check, figures), (name, check)
        passed = [_recomputed(check, figures) for check in target["checks"]]
        assert target["verdict"] == (MET if all(passed) else MISSED), name
        assert target["goal"] and target["unit"] and target["notes"], name

    # Every figure of the extraction target is computed (bf16's only where the CPU has it).
    throughput = {f["name"]: f["value"] for f in targets["extraction_throughput"]["figures"]}
    assert {"whole-stage speedup vs eager resnet18", "whole-stage speedup vs eager lite0",
            "network-only lite0 share of roof", "matmul roof", "decode and normalise alone",
            "whole-stage speedup from overlapping decode",
            "network-only onnxruntime lite0", "network-only bf16 speedup vs f32",
            "probe test accuracy f32", "probe test accuracy bf16"} <= set(throughput)
    for name, value in throughput.items():
        if value is None and "bf16" in name and not _cpu_has_bf16():
            continue
        assert value is not None and math.isfinite(value) and value > 0, name

    growth = report["growth"]
    assert growth["sizes"] == [40, 80]
    for stage in ("prepare", "extract", "train_head"):
        assert all(growth["seconds"][stage][n] > 0 for n in ("40", "80")), stage
        assert all(growth["peak_rss_mb"][stage][n] > 0 for n in ("40", "80")), stage
    for folder in ("data/prepared", ".cache/imgpipe"):
        # 40 or 80 images: a shard or two, and one store per stage plus key.json files.
        assert all(3 < growth["files"][folder][n] < 12 for n in ("40", "80")), growth["files"]
        assert growth["disk_mb"][folder]["40"] < growth["disk_mb"][folder]["80"]
    incremental = {f["name"]: f["value"] for f in targets["incremental_caches"]["figures"]}
    assert 0 < incremental["prepared bytes dvc push uploads"] <= 1
    markdown = (out / "report.md").read_text()
    for name, target in targets.items():
        assert f"## {name}: {target['verdict']}" in markdown
    assert "| stage | N = 40 | N = 80 |" in markdown


def _cpu_has_bf16() -> bool:
    from imgpipe.errors import ParamsError
    from imgpipe.runtimes import check_precision

    try:
        check_precision("openvino", "bf16")
    except ParamsError:
        return False
    return True
