"""The measurements. Each scenario builds its own lab, runs every path variant once per
repetition (variants interleaved, relays restarted each time), and returns table rows plus raw
data for the JSON file. Datagrams have WireGuard's transport-data shape and size (32 + 16 k
bytes: "1400" is 1408 B, "100" is 112 B) because engarde's server drops, by default, what cannot
be WireGuard. Every run records how many CPUs other processes used meanwhile ("foreign_cpus").

throughput-SIZE  Highest offered rate whose loss at the sink stays <= 1 %, found by a short
                 search (a first probe at the sender's maximum rate gives the starting point, then
                 x1.25 up / x0.75 down until bracketed, then geometric bisection to within 7 %).
                 The figure is the unique datagrams/s delivered at that rate, computed over the
                 longer of the send time and the sink's receive span (a relay that only keeps up
                 by filling its buffers is not credited). CPU per datagram of each relay process
                 at that rate is "at saturation".
cpu-10k          Steady 10k datagrams/s (one per wake-up, 1408 B, 3 uplinks): CPU time of each relay
                 process from /proc/PID/stat over the run, divided by the datagrams sent.
latency          Ping-pong at 1k/s (112 B, 3 uplinks) against an echo that drops duplicates like
                 WireGuard; the figure is the RTT quantile minus the median over the same run's
                 repetitions of the direct path's quantile.
memory           VmRSS of each relay process after start and after a period at 10k/s.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.build import Tools
from bench.paths import CRelayPath, DirectPath, EngardePath, PathFailed, RelayPath
from bench.procs import BenchError, ForeignCpu, Tool, busy_cores, run_tool
from bench.report import Figure, Row, Target
from lab import Lab, LabError

DRAIN_S = 0.2  # after the sender stops: in-flight datagrams reach the sink
UP = 1.25
DOWN = 0.75
BRACKET = 1.07
SEND_TICK_US = 200  # throughput probes: wake the sender at most every 200 us
PINGPONG_TIMEOUT_MS = 100
FOREIGN_CPUS_MAX = 0.15  # other work using more than this during a run makes it unreliable
STEAL_CPUS_MAX = 0.05  # so does a hypervisor giving our CPUs to other guests


def wg_size(nominal: int) -> int:
    """The smallest valid WireGuard transport-data size (32 + 16 k bytes) >= ``nominal``.

    engarde's server drops, by default, datagrams that cannot be WireGuard messages, so the load
    must have WireGuard's shape: 1400 -> 1408, 100 -> 112.
    """
    return 32 + max(0, -(-(nominal - 32) // 16)) * 16


@dataclass(frozen=True)
class Settings:
    mode: str
    reps: int
    probe_s: float  # one throughput probe
    max_probes: int
    steady_s: float  # cpu-10k run
    latency_s: float
    memory_s: float  # time at load before the second RSS reading
    loss_max: float = 0.01
    steady_rate: int = 10_000
    steady_size: int = 1400
    latency_rate: int = 1000
    latency_size: int = 100


QUICK = Settings("quick", reps=3, probe_s=1.0, max_probes=8, steady_s=3.0, latency_s=3.0,
                 memory_s=30.0)
FULL = Settings("full", reps=5, probe_s=2.0, max_probes=10, steady_s=10.0, latency_s=20.0,
                memory_s=300.0)


@dataclass
class Context:
    settings: Settings
    tools: Tools
    engarde_ok: bool
    engarde_why: str
    notes: list[str] = field(default_factory=list)
    verbose: bool = True
    retry_busy: int = 1  # re-run a repetition disturbed by other work up to this many times
    wait_idle_s: float = 0.0  # before such a re-run (and each scenario), wait this long for quiet

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.log(f"NOTE: {msg}")


@dataclass(frozen=True)
class Variant:
    kind: str  # "direct" | "crelay" | "engarde"
    n_uplinks: int

    @property
    def key(self) -> str:
        return self.kind if self.kind == "direct" else f"{self.kind}-x{self.n_uplinks}"

    def make(self, lab: Lab, tools: Tools) -> RelayPath:
        cls = {"direct": DirectPath, "crelay": CRelayPath, "engarde": EngardePath}[self.kind]
        return cls(lab, tools, self.n_uplinks)


ScenarioResult = tuple[list[Row], dict[str, Any]]


def run_variants(
    ctx: Context,
    name: str,
    variants: list[Variant],
    measure: Callable[[Lab, RelayPath, Variant, int], dict[str, Any]],
    n_uplinks: int = 3,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``measure`` for every variant and repetition in one lab; raw results by variant key.

    A failing engarde variant is noted and skipped for the rest of the scenario; a failing
    baseline is an error of the bench itself and propagates.
    """
    results: dict[str, list[dict[str, Any]]] = {v.key: [] for v in variants}
    broken: set[str] = set()
    if not ctx.engarde_ok:
        broken.update(v.key for v in variants if v.kind == "engarde")
    with Lab(n_uplinks) as lab:
        for rep in range(ctx.settings.reps):
            for variant in variants:
                if variant.key in broken:
                    continue
                discarded: list[dict[str, Any]] = []
                try:
                    for attempt in range(ctx.retry_busy + 1):
                        if attempt:
                            wait_quiet(ctx, ctx.wait_idle_s)
                        result = run_once(ctx, name, lab, variant, rep, measure)
                        if not disturbed(result):
                            break
                        if attempt < ctx.retry_busy:
                            ctx.log(f"  disturbed run ({disturbed(result)}): measuring it again")
                            discarded.append(result)
                except (PathFailed, BenchError, LabError) as exc:
                    if variant.kind != "engarde":
                        raise
                    ctx.note(f"{name}: {variant.key} failed in repetition {rep + 1}, skipped "
                             f"from here on: {exc}")
                    broken.add(variant.key)
                    continue
                if discarded:
                    result["discarded"] = discarded
                if disturbed(result):
                    ctx.note(f"{name}: {variant.key} repetition {rep + 1}: "
                             f"{disturbed(result)} (figures unreliable)")
                invalid = result.get("invalid")
                if invalid:
                    ctx.note(f"{name}: {variant.key} repetition {rep + 1} not counted: {invalid}")
                results[variant.key].append(result)
    return results


def cpu_per_dgram(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], sent: int
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """us of CPU per datagram sent, by role: (exact from schedstat, from utime+stime)."""
    exact: dict[str, float | None] = {}
    ticks: dict[str, float | None] = {}
    for role in before:
        exact[role] = (after[role][0] - before[role][0]) / sent * 1e6 if sent else None
        ticks[role] = (after[role][1] - before[role][1]) / sent * 1e6 if sent else None
    return exact, ticks


def run_once(
    ctx: Context,
    name: str,
    lab: Lab,
    variant: Variant,
    rep: int,
    measure: Callable[[Lab, RelayPath, Variant, int], dict[str, Any]],
) -> dict[str, Any]:
    """Start the path, measure, stop it; the result with "foreign_cpus" and "stopped" added."""
    path = variant.make(lab, ctx.tools)
    foreign = ForeignCpu()
    path.start()
    try:
        foreign.start()
        result = measure(lab, path, variant, rep)
        result["foreign_cpus"] = round(foreign.cores(), 3)
        result["steal_cpus"] = round(foreign.steal(), 3)
    finally:
        stopped = path.stop()
    result["stopped"] = stopped  # relay counters, exit codes
    bad_exit = {role: info["exit_code"] for role, info in stopped.items()
                if info.get("exit_code") not in (None, 0, -15)}
    if bad_exit:
        ctx.note(f"{name}: {path.label} repetition {rep + 1}: exit codes on SIGTERM "
                 f"{bad_exit}: {stopped}")
    return result


def disturbed(result: dict[str, Any]) -> str:
    """Why a run's figures are not trustworthy (other work, hypervisor steal), or ""."""
    why = []
    if result["foreign_cpus"] > FOREIGN_CPUS_MAX:
        why.append(f"other processes used {result['foreign_cpus']:.2f} CPUs")
    if result["steal_cpus"] > STEAL_CPUS_MAX:
        why.append(f"the hypervisor stole {result['steal_cpus']:.2f} CPUs")
    return ", ".join(why)


def wait_quiet(ctx: Context, wait_s: float) -> float:
    """CPUs busy with other work (1 s sample); waits up to ``wait_s`` for it to drop."""
    deadline = time.monotonic() + wait_s
    background = busy_cores(1.0)
    while background > FOREIGN_CPUS_MAX and time.monotonic() < deadline:
        ctx.log(f"waiting for a quiet machine: {background:.2f} CPUs busy with other work")
        background = busy_cores(2.0)
    return background


def figure(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> Figure:
    """One value per valid run (runs marked "invalid" are kept in the JSON, not in figures)."""
    values = [v for v in (get(r) for r in runs if not r.get("invalid")) if v is not None]
    return Figure(values)


def engarde_figure(ctx: Context, runs: list[dict[str, Any]],
                   get: Callable[[dict[str, Any]], float | None]) -> Figure | None:
    if not ctx.engarde_ok:
        return None
    return figure(runs, get)


# ---------------------------------------------------------------------------------------------
# throughput


def throughput_probe(ctx: Context, lab: Lab, path: RelayPath, size: int, rate: float,
                     duration_s: float) -> dict[str, Any]:
    """Send at ``rate`` (0 = as fast as possible) for ``duration_s``; what arrived, CPU used."""
    udpgen = ctx.tools.udpgen
    rid = random.randrange(1, 2**31)
    sink = Tool(lab, lab.server_ns, [udpgen, "sink", "--bind", path.sink_bind, "--rid",
                                     str(rid)], "sink")
    try:
        sink.wait_ready("udpgen: ready")
        cpu0 = path.cpu()
        argv = [udpgen, "send", "--to", path.send_to, "--rate", f"{rate:.0f}", "--size",
                str(size), "--duration", str(duration_s), "--rid", str(rid), "--tick-us",
                str(SEND_TICK_US)]
        sent_info = run_tool(lab, lab.client_ns, argv, "sender", timeout_s=duration_s + 30)
        time.sleep(DRAIN_S)
        cpu1 = path.cpu()
        got = sink.finish()
    except BaseException:
        sink.kill()
        raise
    path.check_alive()
    sent = int(sent_info["sent"])
    unique = int(got["unique"])
    span = max(float(sent_info["elapsed_s"]), float(got["rx_span_s"]))
    delivered = unique / span if span > 0 else 0.0
    exact, ticks = cpu_per_dgram(cpu0, cpu1, sent)
    return {
        "offered": rate,
        "send_rate": float(sent_info["rate"]),
        "sent": sent,
        "unique": unique,
        "duplicates": int(got["duplicates"]),
        "loss": (sent - unique) / sent if sent else 1.0,
        "delivered": delivered,
        "mbit": delivered * size * 8 / 1e6,
        "cpu_us_per_dgram": exact,
        "cpu_stat_us_per_dgram": ticks,
        "delay_us": got["delay_us"],
    }


def find_max_rate(ctx: Context, lab: Lab, path: RelayPath, size: int,
                  start_rate: float | None) -> dict[str, Any]:
    """The search described in the module docstring; returns the best passing probe and all."""
    s = ctx.settings
    probes: list[dict[str, Any]] = []
    if start_rate is None:
        first = throughput_probe(ctx, lab, path, size, 0, s.probe_s / 2)
        first["max_rate_probe"] = True
        probes.append(first)
        start_rate = max(first["delivered"], 1000.0)
    rate = start_rate
    best: dict[str, Any] | None = None
    lo: float | None = None
    hi: float | None = None
    for _ in range(s.max_probes):
        p = throughput_probe(ctx, lab, path, size, rate, s.probe_s)
        probes.append(p)
        ok = p["loss"] <= s.loss_max
        sender_limited = p["send_rate"] < 0.97 * rate
        ctx.log(f"  {path.label} {size} B: offered {rate:,.0f}/s -> delivered "
                f"{p['delivered']:,.0f}/s, loss {p['loss']:.2%}"
                f"{' (sender-limited)' if sender_limited else ''} {'ok' if ok else 'too much'}")
        if ok:
            if best is None or p["delivered"] > best["delivered"]:
                best = p
            lo = rate if lo is None else max(lo, rate)
            if sender_limited:
                best["sender_limited"] = True
                break
        else:
            hi = rate if hi is None else min(hi, rate)
        if hi is None:
            rate *= UP
        elif lo is None:
            rate *= DOWN
        elif hi / lo <= BRACKET:
            break
        else:
            rate = math.sqrt(lo * hi)
    return {"best": best, "probes": probes}


def scenario_throughput(ctx: Context, nominal: int) -> ScenarioResult:
    name = f"throughput-{nominal}"
    size = wg_size(nominal)
    variants = [Variant("direct", 1), Variant("crelay", 1), Variant("crelay", 3),
                Variant("engarde", 1), Variant("engarde", 3)]
    last_rate: dict[str, float] = {}

    def measure(lab: Lab, path: RelayPath, variant: Variant, rep: int) -> dict[str, Any]:
        ctx.log(f"{name} repetition {rep + 1}/{ctx.settings.reps}: {path.label}")
        search = find_max_rate(ctx, lab, path, size, last_rate.get(variant.key))
        best = search["best"]
        if best is None:
            raise PathFailed(f"{path.label}: no rate with loss <= {ctx.settings.loss_max:.0%}")
        last_rate[variant.key] = best["offered"]
        return {"rate": best["delivered"], "mbit": best["mbit"], "offered": best["offered"],
                "loss": best["loss"], "sender_limited": best.get("sender_limited", False),
                "cpu_us_per_dgram": best["cpu_us_per_dgram"], "probes": search["probes"]}

    raw = run_variants(ctx, name, variants, measure)

    def rate(r: dict[str, Any]) -> float:
        return float(r["rate"])

    def mbit(r: dict[str, Any]) -> float:
        return float(r["mbit"])

    rows: list[Row] = []
    for n in (1, 3):
        key_c, key_e = f"crelay-x{n}", f"engarde-x{n}"
        target = Target("ratio_min", 0.85, ">= 0.85 x C relay") if n == 3 else None
        up = "uplink" if n == 1 else "uplinks"
        rows.append(Row(name, f"throughput {size} B, {n} {up}", "dgram/s",
                        engarde_figure(ctx, raw[key_e], rate),
                        {"direct": figure(raw["direct"], rate),
                         "C relay": figure(raw[key_c], rate)},
                        reference="C relay", target=target))
        rows.append(Row(name, f"throughput {size} B, {n} {up}", "Mbit/s",
                        engarde_figure(ctx, raw[key_e], mbit),
                        {"direct": figure(raw["direct"], mbit),
                         "C relay": figure(raw[key_c], mbit)},
                        reference="C relay"))
    for role in ("client", "server"):
        def cpu(r: dict[str, Any], role: str = role) -> float | None:
            value = r["cpu_us_per_dgram"].get(role)
            return None if value is None else float(value)

        rows.append(Row(name, f"CPU/dgram at saturation, {role}, {size} B, 3 uplinks",
                        "us/dgram", engarde_figure(ctx, raw["engarde-x3"], cpu),
                        {"C relay": figure(raw["crelay-x3"], cpu)}, reference="C relay"))
    return rows, {"size": size, "runs": raw}


# ---------------------------------------------------------------------------------------------
# CPU at a steady rate


def scenario_cpu_steady(ctx: Context) -> ScenarioResult:
    s = ctx.settings
    name = "cpu-10k"
    variants = [Variant("crelay", 3), Variant("engarde", 3)]

    def measure(lab: Lab, path: RelayPath, variant: Variant, rep: int) -> dict[str, Any]:
        ctx.log(f"{name} repetition {rep + 1}/{s.reps}: {path.label} at {s.steady_rate}/s")
        udpgen = ctx.tools.udpgen
        rid = random.randrange(1, 2**31)
        sink = Tool(lab, lab.server_ns, [udpgen, "sink", "--bind", path.sink_bind, "--rid",
                                         str(rid)], "sink")
        try:
            sink.wait_ready("udpgen: ready")
            cpu0 = path.cpu()
            sent_info = run_tool(lab, lab.client_ns, [
                udpgen, "send", "--to", path.send_to, "--rate", str(s.steady_rate), "--size",
                str(wg_size(s.steady_size)), "--duration", str(s.steady_s), "--rid", str(rid)],
                "sender", timeout_s=s.steady_s + 30)
            time.sleep(DRAIN_S)
            cpu1 = path.cpu()
            got = sink.finish()
        except BaseException:
            sink.kill()
            raise
        path.check_alive()
        sent = int(sent_info["sent"])
        lost = sent - int(got["unique"])
        per, per_stat = cpu_per_dgram(cpu0, cpu1, sent)
        ctx.log(f"  CPU us/dgram {', '.join(f'{k} {v:.1f}' for k, v in per.items() if v)} "
                f"(utime+stime: {', '.join(f'{k} {v:.1f}' for k, v in per_stat.items() if v)}); "
                f"lost {lost}")
        result = {"sent": sent, "send_rate": sent_info["rate"], "unique": got["unique"],
                  "lost": lost, "cpu_us_per_dgram": per, "cpu_stat_us_per_dgram": per_stat,
                  "delay_us": got["delay_us"]}
        if lost > s.loss_max * sent:
            # CPU per datagram of a relay that drops is no measure of relaying
            result["invalid"] = f"lost {lost} of {sent} datagrams"
        return result

    raw = run_variants(ctx, name, variants, measure)
    rows = []
    for role in ("client", "server"):
        def cpu(r: dict[str, Any], role: str = role) -> float:
            return float(r["cpu_us_per_dgram"][role])

        rows.append(Row(name, f"CPU/dgram at {s.steady_rate // 1000}k/s, {role}, 3 uplinks",
                        "us/dgram", engarde_figure(ctx, raw["engarde-x3"], cpu),
                        {"C relay": figure(raw["crelay-x3"], cpu)}, reference="C relay",
                        target=Target("ratio_max", 1.5, "<= 1.5 x C relay")))
    return rows, {"rate": s.steady_rate, "size": wg_size(s.steady_size), "runs": raw}


# ---------------------------------------------------------------------------------------------
# latency


def scenario_latency(ctx: Context) -> ScenarioResult:
    s = ctx.settings
    name = "latency"
    variants = [Variant("direct", 1), Variant("crelay", 3), Variant("engarde", 3)]

    def measure(lab: Lab, path: RelayPath, variant: Variant, rep: int) -> dict[str, Any]:
        udpgen = ctx.tools.udpgen
        echo = Tool(lab, lab.server_ns, [udpgen, "echo", "--bind", path.sink_bind, "--dedup"],
                    "echo")
        try:
            echo.wait_ready("udpgen: ready")
            pp = run_tool(lab, lab.client_ns, [
                udpgen, "pingpong", "--to", path.send_to, "--rate", str(s.latency_rate),
                "--size", str(wg_size(s.latency_size)), "--duration", str(s.latency_s),
                "--timeout-ms", str(PINGPONG_TIMEOUT_MS)],
                "pingpong", timeout_s=s.latency_s + 30)
            echo_info = echo.finish()
        except BaseException:
            echo.kill()
            raise
        path.check_alive()
        rtt = pp["rtt_us"]
        ctx.log(f"{name} repetition {rep + 1}/{s.reps}: {path.label}: RTT p50 {rtt['p50']:.1f} "
                f"p99 {rtt['p99']:.1f} p999 {rtt['p999']:.1f} us, lost {pp['lost']}")
        result = {"rtt_us": rtt, "sent": pp["sent"], "lost": pp["lost"], "stray": pp["stray"],
                  "echo": echo_info}
        if pp["lost"] > s.loss_max * max(1, pp["sent"]):
            result["invalid"] = f"{pp['lost']} of {pp['sent']} pings unanswered"
        return result

    raw = run_variants(ctx, name, variants, measure)
    direct = raw["direct"]

    def added(runs: list[dict[str, Any]], q: str) -> list[float]:
        # Reference: the median over this run's repetitions of the direct path's quantile. One
        # direct repetition with a bad tail (other work on the machine) would otherwise make
        # "added" negative for its pair.
        ref = [d["rtt_us"][q] for d in direct if not d.get("invalid")]
        if not ref:
            return []
        base = statistics.median(ref)
        return [r["rtt_us"][q] - base for r in runs if not r.get("invalid")]

    rows = []
    for q, target in (("p50", None), ("p99", Target("max", 150.0, "<= 150 us")),
                      ("p999", None)):
        eng = Figure(added(raw["engarde-x3"], q)) if ctx.engarde_ok else None
        rows.append(Row(name, f"added RTT {q}, 3 uplinks, {s.latency_rate // 1000}k/s", "us",
                        eng, {"C relay": Figure(added(raw["crelay-x3"], q)),
                              "direct RTT": Figure([d["rtt_us"][q] for d in direct])},
                        reference="C relay", target=target))
    lost = [r["lost"] for runs in raw.values() for r in runs]
    if any(lost):
        ctx.note(f"{name}: ping-pong lost replies: "
                 f"{ {k: [r['lost'] for r in v] for k, v in raw.items()} }")
    return rows, {"rate": s.latency_rate, "size": wg_size(s.latency_size), "runs": raw}


# ---------------------------------------------------------------------------------------------
# memory


def scenario_memory(ctx: Context) -> ScenarioResult:
    s = ctx.settings
    name = "memory"
    variants = [Variant("crelay", 3), Variant("engarde", 3)]

    def measure(lab: Lab, path: RelayPath, variant: Variant, rep: int) -> dict[str, Any]:
        udpgen = ctx.tools.udpgen
        start_rss = path.rss()
        rid = random.randrange(1, 2**31)
        sink = Tool(lab, lab.server_ns, [udpgen, "sink", "--bind", path.sink_bind, "--rid",
                                         str(rid)], "sink")
        try:
            sink.wait_ready("udpgen: ready")
            ctx.log(f"{name}: {path.label} at {s.steady_rate}/s for {s.memory_s:.0f} s")
            sent_info = run_tool(lab, lab.client_ns, [
                udpgen, "send", "--to", path.send_to, "--rate", str(s.steady_rate), "--size",
                str(wg_size(s.steady_size)), "--duration", str(s.memory_s), "--rid", str(rid)],
                "sender", timeout_s=s.memory_s + 60)
            time.sleep(DRAIN_S)
            load_rss = path.rss()
            got = sink.finish()
        except BaseException:
            sink.kill()
            raise
        path.check_alive()
        sent = int(sent_info["sent"])
        lost = sent - int(got["unique"])
        result = {"rss_kib_start": start_rss, "rss_kib_load": load_rss, "sent": sent,
                  "lost": lost}
        if lost > s.loss_max * sent:
            result["invalid"] = f"lost {lost} of {sent} datagrams: not a run at load"
        return result

    # one long run per variant: memory growth is what matters, not its spread
    single = dataclasses.replace(ctx, settings=dataclasses.replace(s, reps=1))  # same notes
    raw = run_variants(single, name, variants, measure)
    rows = []
    for role in ("client", "server"):
        for when, label in (("start", "after start"),
                            ("load", f"after {s.memory_s:.0f} s at {s.steady_rate // 1000}k/s")):
            def rss(r: dict[str, Any], role: str = role, when: str = when) -> float:
                return float(r[f"rss_kib_{when}"][role]) / 1024

            rows.append(Row(name, f"RSS {role} {label}", "MiB",
                            engarde_figure(ctx, raw["engarde-x3"], rss),
                            {"C relay": figure(raw["crelay-x3"], rss)}, reference="C relay",
                            target=Target("max", 80.0, "<= 80 MiB")))
    return rows, {"duration_s": s.memory_s, "runs": raw}


# ---------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Context], ScenarioResult] | None
    about: str


SCENARIOS: list[Scenario] = [
    Scenario("throughput-1400", lambda ctx: scenario_throughput(ctx, 1400),
             "max datagrams/s with <= 1% loss, 1408 B (\"1400\"), 1 and 3 uplinks"),
    Scenario("throughput-100", lambda ctx: scenario_throughput(ctx, 100),
             "max datagrams/s with <= 1% loss, 112 B (\"100\"), 1 and 3 uplinks"),
    Scenario("cpu-10k", scenario_cpu_steady, "CPU time per datagram at a steady 10k/s"),
    Scenario("latency", scenario_latency, "ping-pong RTT added over the direct path at 1k/s"),
    Scenario("memory", scenario_memory, "RSS after start and after a period at 10k/s"),
    Scenario("hotplug", None, "address appears / link returns -> first copy through it"),
    Scenario("failover", None, "cut, blackhole, stall one of 3 uplinks at 2k/s: loss, p99"),
]
