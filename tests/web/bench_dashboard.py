"""Does the dashboard slow the relay, and does a busy relay starve the dashboard?

    sudo .venv/bin/python tests/web/bench_dashboard.py [--rate 5000] [--duration 8] [--reps 3]

Builds a lab (2 uplinks), runs ``python -m engarde server`` (server namespace, forwarding to a C
sink on 127.0.0.1:59301) and ``python -m engarde client`` with its dashboard on 127.0.0.1:8080
(client namespace), and the C udpgen (bench/c) offering a fixed load to the client. Phases:

  relay               the load alone: delivered, loss, one-way delay p50/p99
  relay + 5 pages     the same with five live pages open (event streams)
  relay + API flood   the same while 4 connections request /api/v2/status back to back
  page, idle relay    GET /api/v1/get-list at 20/s: latency, and the event stream's tick gaps
  page, relay flood   the same while udpgen sends as fast as it can through the relay

Prints a table and writes JSON next to it (--json). Figures and their reading: docs/web.md.
Not part of the test suite (timing belongs in benchmarks, not assertions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.build import build_tools  # noqa: E402
from bench.procs import busy_cores  # noqa: E402
from lab import Lab  # noqa: E402

PORT = 8080
AUTH = "bench:bench-password"
PROBE = str(REPO / "tests" / "web" / "bench_probe.py")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_json(proc: subprocess.Popen[Any], timeout_s: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"no JSON from {proc.args!r}: {out!r} {err!r}") from exc
    return result


class Bench:
    def __init__(self, lab: Lab, udpgen: str, rate: int, duration: float) -> None:
        self.lab = lab
        self.udpgen = udpgen
        self.rate = rate
        self.duration = duration
        self.client: subprocess.Popen[Any] | None = None

    def start_engarde(self) -> None:
        lab = self.lab
        config = lab.workdir / "engarde.yml"
        user, password = AUTH.split(":")
        config.write_text(
            textwrap.dedent(
                f"""\
                server:
                  listenAddr: "0.0.0.0:59402"
                  dstAddr: "127.0.0.1:59301"
                client:
                  listenAddr: "127.0.0.1:59401"
                  dstAddr: "{lab.service_addr}:59402"
                  webManager:
                    listenAddr: "127.0.0.1:{PORT}"
                    username: "{user}"
                    password: "{password}"
                """
            )
        )
        for ns, role in ((lab.server_ns, "server"), (lab.client_ns, "client")):
            with (lab.workdir / f"{role}.log").open("wb") as log:
                proc = lab.popen_python(
                    ns, "-m", "engarde", role, str(config), stdout=log, stderr=subprocess.STDOUT
                )
            if role == "client":
                self.client = proc
        # udpgen's datagrams look like WireGuard transport data (1024 B: 32 + a multiple of
        # 16), which the server's default strict mode requires.
        deadline = time.monotonic() + 20
        while True:
            probe = self.probe("get", "--duration", "0.2", "--rate", "5")
            if probe["errors"] == 0 and probe["count"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError((lab.workdir / "client.log").read_text())
            time.sleep(0.3)

    def probe(self, mode: str, *args: str) -> dict[str, Any]:
        return wait_json(self.start_probe(mode, *args), 60)

    def start_probe(self, mode: str, *args: str) -> subprocess.Popen[Any]:
        return self.lab.popen(
            self.lab.client_ns,
            sys.executable,
            PROBE,
            mode,
            "--port",
            str(PORT),
            "--auth",
            AUTH,
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start_sink(self) -> subprocess.Popen[str]:
        """The C sink where WireGuard would be, for one phase (it ends after going idle)."""
        return self.lab.popen(
            self.lab.server_ns,
            self.udpgen,
            "sink",
            "--bind",
            "127.0.0.1:59301",
            "--duration",
            str(self.duration + 3),
            "--idle-ms",
            "1500",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def relay(self, rate: int, *, load: list[str] | None = None) -> dict[str, Any]:
        """Offer `rate` datagrams/s (0: as fast as possible) for `duration`, with an optional
        dashboard load running alongside; returns what the sink saw and engarde's CPU."""
        lab = self.lab
        assert self.client is not None
        sink = self.start_sink()
        time.sleep(0.3)
        extra = None
        if load is not None:
            extra = self.start_probe(load[0], "--duration", str(self.duration), *load[1:])
            time.sleep(0.5)
        cpu0, t0 = cpu_seconds(self.client.pid), time.monotonic()
        send = lab.popen(
            lab.client_ns,
            self.udpgen,
            "send",
            "--to",
            "127.0.0.1:59401",
            "--rate",
            str(rate),
            "--size",
            "1024",
            "--duration",
            str(self.duration - 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        sent = wait_json(send, self.duration + 10)
        cpu = (cpu_seconds(self.client.pid) - cpu0) / (time.monotonic() - t0)
        sunk = wait_json(sink, self.duration + 10)
        out: dict[str, Any] = {
            "sent": sent["sent"],
            "offered_rate": round(sent["rate"]),
            "delivered": sunk["unique"],
            "loss_pct": round(100.0 * (1 - sunk["unique"] / max(1, sent["sent"])), 3),
            "delay_us": {k: sunk["delay_us"][k] for k in ("p50", "p99", "max")},
            "client_cpu_pct": round(100 * cpu, 1),
        }
        if extra is not None:
            out["load"] = wait_json(extra, self.duration + 20)
        return out

    def page(self, flood: bool) -> dict[str, Any]:
        """Dashboard latency and event-stream regularity, with or without a relay flood."""
        lab = self.lab
        get = self.start_probe("get", "--duration", str(self.duration), "--rate", "20")
        sse = self.start_probe("sse", "--duration", str(self.duration), "--streams", "1")
        sink = send = None
        if flood:
            sink = self.start_sink()
            send = lab.popen(
                lab.client_ns,
                self.udpgen,
                "send",
                "--to",
                "127.0.0.1:59401",
                "--rate",
                "0",
                "--size",
                "1024",
                "--duration",
                str(self.duration),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        out: dict[str, Any] = {"get": wait_json(get, 60), "sse": wait_json(sse, 60)}
        if send is not None and sink is not None:
            sent = wait_json(send, 60)
            sunk = wait_json(sink, 60)
            out["flood"] = {"offered_rate": round(sent["rate"]), "delivered": sunk["unique"]}
        return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the repetitions."""
    out: dict[str, Any] = {
        "delivered": _median([r["delivered"] for r in runs]),
        "loss_pct": _median([r["loss_pct"] for r in runs]),
        "delay_us": {k: _median([r["delay_us"][k] for r in runs]) for k in ("p50", "p99")},
        "client_cpu_pct": _median([r["client_cpu_pct"] for r in runs]),
        "runs": runs,
    }
    loads = [r["load"] for r in runs if "load" in r]
    if loads and loads[0]["mode"] == "sse":
        out["load"] = f"{_median([x['events'] for x in loads]):.0f} events, gap p99 " + (
            f"{_median([x['gap_ms']['p99'] for x in loads]):.0f} ms"
        )
    elif loads:
        out["load"] = f"{_median([x['rate'] for x in loads]):.0f} req/s served"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000, help="offered datagrams/s")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--wait-idle", type=float, default=120, help="wait up to this long for other work to stop"
    )
    args = parser.parse_args()
    tools = build_tools()
    deadline = time.monotonic() + args.wait_idle
    busy = busy_cores(1.0)
    while busy > 0.3 and time.monotonic() < deadline:
        busy = busy_cores(2.0)
    load_before = os.getloadavg()
    phases: dict[str, list[str] | None] = {
        "relay": None,
        "relay + 5 pages": ["sse", "--streams", "5"],
        "relay + API flood": ["hammer", "--path", "/api/v2/status", "--concurrency", "4"],
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    pages: dict[str, list[dict[str, Any]]] = {"page, idle relay": [], "page, relay flood": []}
    with Lab(2) as lab:
        bench = Bench(lab, tools.udpgen, args.rate, args.duration)
        bench.start_engarde()
        bench.relay(2000)  # warm-up: sockets, caches, the server learns the client addresses
        for _ in range(args.reps):  # interleaved, so drift affects every phase alike
            for name, load in phases.items():
                runs[name].append(bench.relay(args.rate, load=load))
            pages["page, idle relay"].append(bench.page(flood=False))
            pages["page, relay flood"].append(bench.page(flood=True))
    results: dict[str, Any] = {
        "rate": args.rate,
        "duration_s": args.duration,
        "reps": args.reps,
        "busy_cores_before": round(busy, 2),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(
        f"offered {args.rate} datagrams/s of 1024 B for {args.duration:g} s through 2 uplinks; "
        f"medians of {args.reps}; other work before: {busy:.2f} CPUs busy; load average "
        f"before/after {load_before[0]:.2f}/{results['loadavg_after'][0]:.2f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'phase':<20} {'delivered':>10} {'loss %':>7} {'p50 us':>8} {'p99 us':>8} "
        f"{'client CPU':>10}  dashboard load"
    )
    for name in phases:
        r = results[name] = summarize(runs[name])
        print(
            f"{name:<20} {r['delivered']:>10} {r['loss_pct']:>7} {r['delay_us']['p50']:>8.0f} "
            f"{r['delay_us']['p99']:>8.0f} {r['client_cpu_pct']:>9}%  {r.get('load', '')}"
        )
    for name, page_runs in pages.items():
        get = {k: _median([p["get"]["ms"][k] for p in page_runs]) for k in ("p50", "p99", "max")}
        gap = {k: _median([p["sse"]["gap_ms"][k] for p in page_runs]) for k in ("p50", "max")}
        floods = [p["flood"]["offered_rate"] for p in page_runs if "flood" in p]
        results[name] = {"get_ms": get, "event_gap_ms": gap, "runs": page_runs}
        extra = f"; relay flood {_median(floods):.0f} datagrams/s offered" if floods else ""
        print(
            f"{name:<20} GET get-list p50 {get['p50']:.1f} ms, p99 {get['p99']:.1f} ms, max "
            f"{get['max']:.1f} ms; event gaps p50 {gap['p50']:.0f} ms, max {gap['max']:.0f} ms"
            f"{extra}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
