"""``python -m bench [--quick | --full] [--only NAME ...] [--reps N] [--memory-duration S]``.

Builds the C tools, checks whether engarde runs (``python -m engarde --version``; when it does
not, the engarde columns are skipped with a note and the baselines are still measured), runs the
selected scenarios, prints the table and writes bench/results/<timestamp>.json and latest.json.
Exit code 0 when every row with a target passed or had no engarde data, 1 if one failed, 2 on a
usage or environment error.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.build import BuildError, build_tools
from bench.paths import engarde_version
from bench.procs import BenchError
from bench.report import (
    RESULTS_DIR,
    Row,
    machine_info,
    render_markdown,
    render_table,
    write_json,
)
from bench.scenarios import FOREIGN_CPUS_MAX, FULL, QUICK, SCENARIOS, Context, Scenario, wait_quiet
from lab import LabError, lab_available


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="short runs, 3 repetitions (default; about 13 minutes)")
    mode.add_argument("--full", action="store_true",
                      help="longer runs, 5 repetitions, 5 minutes of load for memory")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only these scenarios (comma-separated, globs allowed, repeatable): "
                        + ", ".join(s.name for s in SCENARIOS))
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--markdown", type=Path, metavar="JSON",
                   help="print the table of a results file as Markdown and exit")
    p.add_argument("--reps", type=int, help="repetitions per figure (overrides the mode)")
    p.add_argument("--memory-duration", type=float, metavar="S",
                   help="seconds at load before the second RSS reading (quick 30, full 300)")
    p.add_argument("--no-engarde", action="store_true", help="measure the baselines only")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each scenario, wait up to S seconds for other work on the "
                        "machine to stop (default 0: only record and warn)")
    p.add_argument("--retry-busy", type=int, default=1, metavar="N",
                   help="re-run a repetition up to N times when other processes used more than "
                        f"{FOREIGN_CPUS_MAX} CPUs during it (default 1)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def select(patterns: list[str]) -> list[Scenario]:
    wanted = [w.strip() for arg in patterns for w in arg.split(",") if w.strip()]
    if not wanted:
        return list(SCENARIOS)
    chosen = [s for s in SCENARIOS if any(fnmatch.fnmatch(s.name, w) for w in wanted)]
    unknown = [w for w in wanted if not any(fnmatch.fnmatch(s.name, w) for s in SCENARIOS)]
    if unknown:
        names = ", ".join(s.name for s in SCENARIOS)
        raise SystemExit(f"bench: unknown scenario {', '.join(unknown)} (known: {names})")
    return chosen


def run_scenarios(
    ctx: Context,
    scenarios: list[Scenario],
    rows: list[Row],
    raw: dict[str, Any],
    background_by_scenario: dict[str, float],
) -> None:
    """Run each scenario in turn, appending its rows and raw data; notes for what failed."""
    for scenario in scenarios:
        if scenario.run is None:
            ctx.note(f"{scenario.name}: not implemented yet")
            continue
        background = wait_quiet(ctx, ctx.wait_idle_s)
        background_by_scenario[scenario.name] = round(background, 2)
        if background > FOREIGN_CPUS_MAX:
            ctx.note(f"{scenario.name}: other processes kept {background:.2f} CPUs busy before "
                     "it started: its figures are unreliable")
        t0 = time.monotonic()
        ctx.log(f"== {scenario.name}: {scenario.about}")
        try:
            scenario_rows, data = scenario.run(ctx)
        except (LabError, BenchError) as exc:
            ctx.note(f"{scenario.name}: scenario abandoned: {exc}")
            continue
        data["elapsed_s"] = round(time.monotonic() - t0, 1)
        rows += scenario_rows
        raw[scenario.name] = data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(render_markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:16} {s.about}{'' if s.run else '  (not implemented yet)'}")
        return 0
    scenarios = select(args.only)
    settings = FULL if args.full else QUICK
    if args.reps:
        settings = dataclasses.replace(settings, reps=args.reps)
    if args.memory_duration:
        settings = dataclasses.replace(settings, memory_s=args.memory_duration)

    ok, why = lab_available(wireguard=False)
    if not ok:
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    try:
        tools = build_tools()
    except BuildError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.no_engarde:
        engarde_ok, engarde_why = False, "--no-engarde"
    else:
        engarde_ok, engarde_why = engarde_version()
    ctx = Context(settings, tools, engarde_ok, engarde_why, verbose=not args.quiet,
                  retry_busy=args.retry_busy, wait_idle_s=args.wait_idle)
    if not engarde_ok:
        ctx.note(f"engarde not measured: {engarde_why}")
    else:
        ctx.log(f"engarde {engarde_why}")

    started = time.time()
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    background_by_scenario: dict[str, float] = {}
    try:
        run_scenarios(ctx, scenarios, rows, raw, background_by_scenario)
    except KeyboardInterrupt:
        # the labs have been torn down by their context managers on the way out
        print("bench: interrupted; no results written", file=sys.stderr)
        return 130

    doc = {
        "meta": {
            **machine_info(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "mode": settings.mode,
            "settings": dataclasses.asdict(settings),
            "engarde": {"measured": engarde_ok, "version_or_reason": engarde_why},
            "background_cpus_before": background_by_scenario,
        },
        "rows": [row.to_json() for row in rows],
        "notes": ctx.notes,
        "scenarios": raw,
    }
    path = write_json(doc, args.results_dir)
    print(render_table(rows))
    for note in ctx.notes:
        print(f"note: {note}")
    print(f"results: {path} (and latest.json); {doc['meta']['elapsed_s']:.0f} s, "
          f"{settings.mode} mode, {settings.reps} repetitions")
    return 1 if any(row.verdict == "FAIL" for row in rows) else 0
