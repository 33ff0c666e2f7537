"""Figures, table rows, targets; the printed table and the JSON file.

A :class:`Figure` is one quantity measured once per repetition: it is shown as its median with
min and max. A :class:`Row` puts an engarde figure next to the baselines measured in the same
run, the ratio to the reference baseline, and the target (pass/fail).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def to_json(self) -> dict[str, Any]:
        if not self.values:
            return {"n": 0}
        return {"median": self.median, "min": self.min, "max": self.max, "n": len(self.values),
                "values": self.values}


@dataclass(frozen=True)
class Target:
    """``kind``: "ratio_min" (engarde/reference >= limit), "ratio_max" (<= limit),
    "max" (engarde <= limit, in the row's unit), "equal" (engarde == limit for every run)."""

    kind: str
    limit: float
    text: str


@dataclass
class Row:
    scenario: str
    label: str
    unit: str
    engarde: Figure | None
    baselines: dict[str, Figure]
    reference: str | None = None  # the baseline the ratio is taken against
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.engarde is None or not self.engarde.values or self.reference is None:
            return None
        ref = self.baselines.get(self.reference)
        if ref is None or not ref.values or ref.median == 0:
            return None
        return self.engarde.median / ref.median

    @property
    def verdict(self) -> str:
        """PASS / FAIL against the target, "-" without a target, "n/a" without engarde data."""
        if self.target is None:
            return "-"
        if self.engarde is None or not self.engarde.values:
            return "n/a"
        t = self.target
        if t.kind in ("ratio_min", "ratio_max"):
            ratio = self.ratio
            if ratio is None:
                return "n/a"
            ok = ratio >= t.limit if t.kind == "ratio_min" else ratio <= t.limit
        elif t.kind == "max":
            ok = self.engarde.median <= t.limit
        elif t.kind == "equal":
            ok = all(v == t.limit for v in self.engarde.values)
        else:
            raise ValueError(f"unknown target kind {t.kind!r}")
        return "PASS" if ok else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "label": self.label,
            "unit": self.unit,
            "engarde": self.engarde.to_json() if self.engarde is not None else None,
            "baselines": {name: fig.to_json() for name, fig in self.baselines.items()},
            "reference": self.reference,
            "ratio": self.ratio,
            "target": None if self.target is None else {
                "kind": self.target.kind, "limit": self.target.limit, "text": self.target.text},
            "verdict": self.verdict,
            "note": self.note,
        }


def fmt_value(value: float, unit: str) -> str:
    if unit in ("dgram/s", "Mbit/s"):
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f}M"
        if abs(value) >= 1e4:
            return f"{value / 1e3:.1f}k"
        return f"{value:.0f}"
    if unit == "ms" and abs(value) < 10:
        return f"{value:.2f}"
    if unit in ("us", "us/dgram", "ms"):
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:g}"


def fmt_figure(fig: Figure | None, unit: str, spread: bool = True) -> str:
    if fig is None or not fig.values:
        return "-"
    text = fmt_value(fig.median, unit)
    if spread and len(fig.values) > 1:
        text += f" [{fmt_value(fig.min, unit)}-{fmt_value(fig.max, unit)}]"
    return text


def render_table(rows: list[Row]) -> str:
    header = ["scenario", "unit", "engarde median [min-max]", "baselines median [min-max]",
              "ratio", "target", "result"]
    lines = [header]
    for row in rows:
        base = "; ".join(f"{name} {fmt_figure(fig, row.unit)}"
                         for name, fig in row.baselines.items())
        ratio = row.ratio
        lines.append([
            row.label,
            row.unit,
            fmt_figure(row.engarde, row.unit) if row.engarde is not None else "(skipped)",
            base or "-",
            f"{ratio:.2f}" if ratio is not None else "-",
            row.target.text if row.target else "-",
            row.verdict,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": cpu, "python": platform.python_version(), "git_rev": rev}


def write_json(doc: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write results/<timestamp>.json and results/latest.json; return the first path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"{stamp}.json"
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    for target in (path, results_dir / "latest.json"):
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path


def _fmt_json_figure(fig: dict[str, Any] | None, unit: str) -> str:
    if not fig or not fig.get("n"):
        return "-"
    return fmt_figure(Figure(list(fig["values"])), unit)


def render_markdown(doc: dict[str, Any]) -> str:
    """The table of a results JSON document as Markdown (for docs/performance.md)."""
    lines = ["| scenario | unit | engarde | baselines | ratio | target | result |",
             "|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        unit = row["unit"]
        base = "; ".join(f"{name} {_fmt_json_figure(fig, unit)}"
                         for name, fig in row["baselines"].items())
        ratio = row.get("ratio")
        target = row.get("target") or {}
        lines.append("| " + " | ".join([
            row["label"], unit, _fmt_json_figure(row.get("engarde"), unit), base or "-",
            f"{ratio:.2f}" if ratio is not None else "-", target.get("text", "-"),
            row["verdict"],
        ]) + " |")
    return "\n".join(lines)
