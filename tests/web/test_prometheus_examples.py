"""examples/prometheus: every engarde metric that the scrape config, the alert rules and the
Grafana dashboard name is one that /metrics really exports (both roles' expositions, taken from
the app), and every label they group by exists on it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from engarde.web.app import create_app
from tests.web.helpers import FakeClock, index_of, make_client_core, make_server_core, path_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "prometheus"
NAME = re.compile(r"\bengarde_[a-z0-9_]+\b")
BY = re.compile(r"\bby \(([^)]*)\)")
PROMETHEUS_LABELS = {"instance", "job", "le"}  # added by the scrape, or the histogram's


async def exported() -> dict[str, set[str]]:
    """Sample name -> label names, over a client's and a server's /metrics."""
    clock = FakeClock()
    client = make_client_core(clock)
    # make_client_core has copies tracked (the link-quality series); a receive time too:
    path_of(client, index_of(client, "eth0")).stats.last_rx = clock() - 2
    found: dict[str, set[str]] = {}
    for core in (client, make_server_core(clock)):
        response = await create_app(core, None, clock=clock).test_client().get("/metrics")
        assert response.status_code == 200
        for family in text_string_to_metric_families(await response.get_data(as_text=True)):
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)
    return found


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL or text) for everything in the examples that may name a metric."""
    out: list[tuple[str, str]] = []
    rules = yaml.safe_load((EXAMPLES / "engarde-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"]))
            for text in rule.get("annotations", {}).values():
                out.append((f"alert {rule['alert']} annotation", text))

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            here = f"{where} / {node['title']}" if isinstance(node.get("title"), str) else where
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    out.append((here, value))
                walk(value, here)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(json.loads((EXAMPLES / "grafana-dashboard.json").read_text()), "dashboard")
    return out


async def test_every_metric_named_in_the_examples_is_exported() -> None:
    found = await exported()
    exprs = expressions()
    assert len([e for e in exprs if e[0].startswith("dashboard")]) >= 20
    assert len([e for e in exprs if e[0].startswith("alert")]) >= 8
    missing = sorted({
        f"{where}: {name}" for where, text in exprs for name in NAME.findall(text)
        if name not in found
    })  # fmt: skip
    assert not missing, "metrics not exported by engarde/web/metrics.py:\n" + "\n".join(missing)
    used = {name for _, text in exprs for name in NAME.findall(text)}
    # Per-link traffic, drops, state and the link-quality figures are all on the dashboard.
    for wanted in (
        "engarde_uplink_tx_bytes_total",
        "engarde_uplink_tx_dropped_total",
        "engarde_uplink_state",
        "engarde_link_copies_lost_total",
        "engarde_link_lag_seconds_bucket",
    ):
        assert wanted in used, wanted


async def test_grouping_labels_exist() -> None:
    found = await exported()
    wrong = []
    for where, text in expressions():
        names = NAME.findall(text)
        labels = set().union(*(found.get(n, set()) for n in names)) | PROMETHEUS_LABELS
        for group in BY.findall(text):
            wrong += [f"{where}: by {label}" for label in map(str.strip, group.split(","))
                      if label not in labels]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_scrape_config_loads_the_rules() -> None:
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    assert config["rule_files"] == ["engarde-alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"engarde-client", "engarde-server"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
