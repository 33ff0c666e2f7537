"""HTTP load and latency probe for the dashboard bench (stdlib only; runs inside a namespace).

    python tests/web/bench_probe.py get    --port P --path /api/v1/get-list --rate 20 --duration 8
    python tests/web/bench_probe.py hammer --port P --path /api/v2/status --concurrency 4 ...
    python tests/web/bench_probe.py sse    --port P --streams 5 --duration 8

Prints one JSON object: request latencies (get), requests served (hammer), or the gaps between
server-sent events (sse). Used by tests/web/bench_dashboard.py, not by the test suite.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import threading
import time
from typing import Any


def _headers(auth: str | None) -> dict[str, str]:
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"p50": q(0.5), "p99": q(0.99), "max": round(ordered[-1], 3)}


def run_get(args: argparse.Namespace) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    headers = _headers(args.auth)
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / args.rate
    start = time.monotonic()
    next_at = start
    while time.monotonic() - start < args.duration:
        t0 = time.monotonic()
        try:
            conn.request("GET", args.path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        latencies.append((time.monotonic() - t0) * 1000)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {"mode": "get", "count": len(latencies), "errors": errors, "ms": _quantiles(latencies)}


def run_hammer(args: argparse.Namespace) -> dict[str, Any]:
    counts = [0] * args.concurrency
    headers = _headers(args.auth)
    stop_at = time.monotonic() + args.duration

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        while time.monotonic() < stop_at:
            conn.request("GET", args.path, headers=headers)
            conn.getresponse().read()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(counts)
    return {"mode": "hammer", "requests": total, "rate": round(total / args.duration, 1)}


def run_sse(args: argparse.Namespace) -> dict[str, Any]:
    gaps: list[float] = []
    events = [0] * args.streams
    lock = threading.Lock()
    stop_at = time.monotonic() + args.duration

    def reader(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        conn.request("GET", "/api/v2/events", headers=_headers(args.auth))
        response = conn.getresponse()
        last = None
        while time.monotonic() < stop_at:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"event: update"):
                now = time.monotonic()
                with lock:
                    events[i] += 1
                    if last is not None:
                        gaps.append((now - last) * 1000)
                last = now
        conn.close()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"mode": "sse", "events": sum(events), "gap_ms": _quantiles(gaps)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_probe")
    parser.add_argument("mode", choices=("get", "hammer", "sse"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/v1/get-list")
    parser.add_argument("--auth", help="user:password")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--streams", type=int, default=5)
    args = parser.parse_args(argv)
    run = {"get": run_get, "hammer": run_hammer, "sse": run_sse}[args.mode]
    sys.stdout.write(json.dumps(run(args)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
