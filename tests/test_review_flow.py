"""The README's review flow as a new user meets it, end to end in real tools.

Results committed, an experiment that runs nothing (`-n probe`: params unchanged, so
evaluate never logs it), one that runs (`-n partial`). Then: `sync-mlflow` puts each in
MLflow exactly once; the short `dvc exp show` fits a terminal; `dvc plots show` draws
offline; MLflow's compare page, in headless Chromium, shows what differs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sys
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from browser import mlflow_server, render
from conftest import REPO_ROOT
from dvc_project import dvc, exp_show, make_project, run

pytestmark = pytest.mark.slow
_VEGA_PLOTS = 4  # train_head sweep, fine-tuning history, per-class recall, confusion


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    project = make_project(tmp_path_factory.mktemp("review") / "project", digits_dir)
    dvc(project, "repro")  # a live run, named `baseline` (params as committed)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "results")
    probe = dvc(project, "exp", "run", "-n", "probe", "-S", "freeze=all")
    assert "Running stage" not in probe.stdout  # nothing ran: no live run for `probe`
    dvc(project, "exp", "run", "-n", "partial", "-S", "freeze=partial")  # a live run
    return project


def _runs(project: Path, store: Path | None = None) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store or project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgpipe")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _sync(project: Path, **env: str) -> str:
    return run(project, sys.executable, "-m", "imgpipe", "sync-mlflow", env=env).stderr


def test_sync_logs_each_experiment_once_and_adopts_live_runs(reviewed: Path) -> None:
    assert {r.info.run_name for r in _runs(reviewed)} == {"baseline", "partial"}
    head = run(reviewed, "git", "rev-parse", "HEAD").stdout.strip()

    output = _sync(reviewed)
    runs = _runs(reviewed)
    by_rev = {r.data.tags["dvc_rev"]: r for r in runs}
    assert len(runs) == 3 and len(by_rev) == 3, output  # HEAD, probe, partial
    assert by_rev[head].info.run_name == "baseline"  # evaluate's run, adopted
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["probe"].data.tags["logged_by"] == "sync-mlflow"
    assert by_name["probe"].data.tags["dvc_exp_name"] == "probe"
    assert by_name["probe"].data.tags["changed_params"] == "none"
    assert by_name["probe"].data.tags["dvc_result"] == by_rev[head].data.tags["dvc_result"]
    assert "logged_by" not in by_name["partial"].data.tags  # evaluate's own, adopted
    assert by_name["partial"].data.tags["freeze"] == "partial"
    experiments = exp_show(reviewed)
    for name in ("probe", "partial"):
        test = experiments[name]["metrics"]["metrics/evaluate.json"]
        assert by_name[name].data.metrics["summary.test_accuracy"] == test["accuracy"]
        tuned = experiments[name]["metrics"]["metrics/finetune_full.json"]
        assert by_name[name].data.metrics["summary.best_epoch"] == tuned["best_epoch"]

    _sync(reviewed)  # again: nothing to do
    assert sorted(r.info.run_id for r in _runs(reviewed)) == sorted(r.info.run_id for r in runs)


def test_sync_fills_an_empty_store_with_models_and_datasets(reviewed: Path, tmp_path: Path,
                                                           digits_dir: Path) -> None:
    """A fresh clone's empty store: every run comes from the commits' files and DVC's cache."""
    import mlflow

    store = tmp_path / "fresh.db"
    _sync(reviewed, MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    runs = {r.info.run_name: r for r in _runs(reviewed, store)}
    head = run(reviewed, "git", "rev-parse", "--short", "HEAD").stdout.strip()
    assert set(runs) == {f"commit {head}", "probe", "partial"}
    partial = runs["partial"]
    assert partial.data.tags["mlflow.note.content"].endswith("- `freeze`: all → partial")
    (dataset,) = partial.inputs.dataset_inputs
    assert dataset.dataset.digest == partial.data.tags["dataset_fingerprint"]
    assert dataset.dataset.name == "data/tiny"
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    model = mlflow.pyfunc.load_model(f"runs:/{partial.info.run_id}/model")
    images = [str(p) for p in sorted((digits_dir / "seven").iterdir())]
    predicted = model.predict(pd.DataFrame({"path": images}))["predicted"]
    assert (predicted == "seven").mean() >= 0.8


def _readme_command(prefix: str) -> list[str]:
    """The README's command line that starts with `prefix`, as arguments."""
    lines = [line for line in (REPO_ROOT / "README.md").read_text().splitlines()
             if line.startswith(prefix)]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("  #")[0])


def test_short_exp_show_from_the_readme_fits_84_columns(reviewed: Path) -> None:
    command = _readme_command("dvc exp show --drop")
    table = dvc(reviewed, *command[1:], env={"COLUMNS": "84"}).stdout
    assert table.strip() and all(len(line) <= 84 for line in table.splitlines()), table
    assert "…" not in table
    rows = list(csv.DictReader(io.StringIO(dvc(reviewed, *command[1:], "--csv").stdout)))
    assert list(rows[0]) == ["Experiment", "best_c", "best_epoch", "accuracy", "macro_f1",
                             "freeze"]
    by_name = {row["Experiment"]: row for row in rows if row["Experiment"]}
    assert by_name["probe"]["freeze"] == "all" and by_name["partial"]["freeze"] == "partial"
    test = exp_show(reviewed)["partial"]["metrics"]["metrics/evaluate.json"]
    assert float(by_name["partial"]["accuracy"]) == pytest.approx(test["accuracy"], abs=5e-4)


def _drawn_plots(dom: str) -> int:
    """Vega plots that drew: a plot div holding vega-embed's canvas of marks."""
    return len(re.findall(r'<canvas[^>]*class="marks"', dom))


def test_plots_draw_offline_in_chromium(reviewed: Path, tmp_path: Path) -> None:
    dvc(reviewed, "plots", "show", "-o", str(tmp_path / "offline"))
    page = (tmp_path / "offline" / "index.html").read_text()
    assert "<script src=" not in page  # nothing to fetch
    dom = render((tmp_path / "offline" / "index.html").as_uri(), offline=True,
                 screenshot=tmp_path / "plots.png", window=(1400, 2400))
    assert _drawn_plots(dom) == _VEGA_PLOTS
    assert dom.count('src="static/') == 2  # the PNG plots: confusion, test grid

    # The check can fail: DVC's own page, which loads Vega from a CDN, draws nothing.
    from dvc_render.html import PAGE_HTML

    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    dvc(reviewed, "plots", "show", "-o", str(tmp_path / "cdn"), "--html-template",
        str(tmp_path / "cdn.html"))
    assert "cdn.jsdelivr.net" in (tmp_path / "cdn" / "index.html").read_text()
    assert _drawn_plots(render((tmp_path / "cdn" / "index.html").as_uri(), offline=True)) == 0


def _text(dom: str) -> str:
    """The words a person reads on the page."""
    import html

    without_styles = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", without_styles)))


def _colours(png: Path) -> int:
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_mlflow_compare_page_shows_named_runs_freeze_and_summary_metrics(
        reviewed: Path, tmp_path: Path) -> None:
    _sync(reviewed)
    runs = {r.info.run_name: r for r in _runs(reviewed)}
    probe, partial = runs["probe"], runs["partial"]
    experiment_id = probe.info.experiment_id
    with mlflow_server(f"sqlite:///{reviewed / 'mlflow.db'}", tmp_path / "server.log") as url:
        table = _text(render(f"{url}/#/experiments/{experiment_id}/runs",
                             screenshot=tmp_path / "runs.png"))
        ids = json.dumps([probe.info.run_id, partial.info.run_id])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps(
            [experiment_id])})
        compare = _text(render(f"{url}/#/compare-runs?{query}", window=(1600, 3000),
                               screenshot=tmp_path / "compare.png"))
    assert "probe" in table and "partial" in table
    assert re.search(r"Run Name: (probe partial|partial probe)", compare), compare[:2000]
    assert re.search(r"\bfreeze (all partial|partial all)\b", compare)
    for metric in ("summary.test_accuracy", "summary.test_macro_f1", "summary.best_epoch",
                   "summary.probe_c"):
        assert metric in compare
    metrics = compare.split("Metrics Show diff only", 1)[1].split("Artifacts", 1)[0]
    # Alphabetical, in a box of a few rows that renders only what it shows: the summary
    # first, then counts, then the curves (vs_c.* before vs_epoch.*).
    assert metrics.index("summary.") < metrics.index("tally.") < metrics.index("vs_")
    assert "per_class" not in metrics
    for screenshot in ("runs.png", "compare.png"):
        assert _colours(tmp_path / screenshot) > 20  # drawn, not a blank page
