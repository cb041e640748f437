"""What a benchmark target reports, its verdict, and the report files (JSON and Markdown)."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

MET, MISSED, NOT_AVAILABLE = "met", "missed", "not available"
_OPERATORS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None  # None: could not be measured (see the target's notes)
    unit: str


@dataclass(frozen=True)
class Check:
    """A goal on one figure: `figure op bound`, e.g. speedup >= 2.0."""

    figure: str
    op: str  # "<=" or ">="
    bound: float

    def passed(self, figures: list[Figure]) -> bool | None:
        value = next(f.value for f in figures if f.name == self.figure)
        return None if value is None else bool(_OPERATORS[self.op](value, self.bound))


@dataclass
class Target:
    name: str
    goal: str  # the words
    unit: str  # unit of the figures the checks judge
    checks: list[Check]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float | None, unit: str | None = None) -> None:
        self.figures.append(Figure(name, None if value is None else float(value),
                                   unit or self.unit))

    @property
    def verdict(self) -> str:
        return verdict(self.checks, self.figures)


def verdict(checks: list[Check], figures: list[Figure]) -> str:
    """met when every check passes; not available when a checked figure is missing."""
    results = [check.passed(figures) for check in checks]
    if any(result is None for result in results):
        return NOT_AVAILABLE
    return MET if all(results) else MISSED


def target_json(target: Target) -> dict:
    return {"name": target.name, "goal": target.goal, "unit": target.unit,
            "checks": [{**asdict(c), "passed": c.passed(target.figures)} for c in target.checks],
            "figures": [asdict(f) for f in target.figures],
            "verdict": target.verdict, "notes": target.notes}


def write_report(out_dir: Path, targets: list[Target], growth: dict | None,
                 context: dict) -> tuple[Path, Path]:
    """Write report.json and report.md into `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**context, "targets": [target_json(t) for t in targets], "growth": growth}
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown(data))
    return json_path, md_path


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def markdown(data: dict) -> str:
    """The report as Markdown: a summary table, each target's figures, the growth table."""
    lines = ["# imgpipe benchmark", "", f"Command: `{data['command']}`", "",
             f"Machine: {data['machine']}; load average at the end "
             f"{', '.join(map(str, data.get('load_average_at_save', [])))}; "
             f"{data.get('elapsed_s', 0):.0f} s in all", "",
             "| target | goal | figure | verdict |",
             "| --- | --- | --- | --- |"]
    for target in data["targets"]:
        judged = [c["figure"] for c in target["checks"]]
        shown = "; ".join(f"{f['name']} {_number(f['value'])}" for f in target["figures"]
                          if f["name"] in judged)
        lines.append(f"| {target['name']} | {target['goal']} | {shown} | "
                     f"**{target['verdict']}** |")
    for target in data["targets"]:
        lines += ["", f"## {target['name']}: {target['verdict']}", "", target["goal"], "",
                  "| figure | value | unit |", "| --- | --- | --- |"]
        lines += [f"| {f['name']} | {_number(f['value'])} | {f['unit']} |"
                  for f in target["figures"]]
        lines += [""] + [f"- {note}" for note in target["notes"]]
    if data.get("growth"):
        lines += ["", growth_markdown(data["growth"], data["command"])]
    return "\n".join(lines) + "\n"


def growth_markdown(growth: dict, command: str) -> str:
    """The README's cost-growth table: wall time of each stage at each dataset size."""
    sizes = growth["sizes"]
    header = "| stage | " + " | ".join(f"N = {n:,}" for n in sizes) + " |"
    lines = ["## Cost growth", "",
             f"Wall time of each stage function (s) and its process's peak RSS (MiB): "
             f"{growth['notes']}. Produced by `{command}`.", "",
             header, "| --- |" + " --- |" * len(sizes)]
    for stage, by_size in growth["seconds"].items():
        lines.append(f"| {stage} | " + " | ".join(
            f"{_number(by_size.get(str(n)))} s" for n in sizes) + " |")
    for stage, by_size in growth["peak_rss_mb"].items():
        lines.append(f"| {stage} peak RSS | " + " | ".join(
            f"{_number(by_size.get(str(n)))} MiB" for n in sizes) + " |")
    for folder, by_size in growth.get("files", {}).items():
        lines.append(f"| files in {folder} | " + " | ".join(
            _number(by_size.get(str(n))) for n in sizes) + " |")
    for folder, by_size in growth.get("disk_mb", {}).items():
        lines.append(f"| disk used by {folder} | " + " | ".join(
            f"{_number(by_size.get(str(n)))} MiB" for n in sizes) + " |")
    return "\n".join(lines)
