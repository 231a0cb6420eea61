"""
Every expression of the shipped Grafana dashboard, evaluated by a real Prometheus that
scraped a real daemon, gives the true numbers of what the daemon was fed (counters that
exist from the start at zero are what makes increase() exact).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, require_tool
from daemon_helper import append, denied, start_daemon
from http_receiver import free_port

pytestmark = pytest.mark.system

DASHBOARD = ROOT / "contrib" / "grafana" / "jfwatch-dashboard.json"


def _query(port: int, expr: str) -> dict[str, float]:
    """Each result series of an instant query, keyed by its labels (sorted), as a float."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        data = json.load(response)
    assert data["status"] == "success", data
    return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in
                     ("instance", "job", "__name__")): float(r["value"][1])
            for r in data["data"]["result"]}


def _wait_for_scrapes(port: int, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = _query(port, 'count_over_time(up{job="jfwatch"}[5m])')
            if got and max(got.values()) >= at_least:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"Prometheus did not scrape {at_least} times")


def test_dashboard_expressions_give_the_true_numbers(tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    jf_port, prom_port = free_port(), free_port()
    run, log = start_daemon(tmp_path, metrics_port=jf_port)
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      "scrape_configs:\n  - job_name: jfwatch\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{jf_port}']\n")
    prom = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_scrapes(prom_port, 3)  # the zero state, scraped
        now = datetime.now(UTC)
        stamp = f"{now:%Y-%m-%d %H:%M:%S}.000"
        append(log, "".join(denied(f"u{i}", ip="203.0.113.90", ts=stamp) for i in range(6))
               + "not an event\n")
        run.wait_users(Counter({f"u{i}": 1 for i in range(6)}))
        def status() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{jf_port}/status",
                                        timeout=5) as response:
                return dict(json.load(response))

        # The daemon's gauges and /status refresh once a second: wait for the one that
        # counted the six users.
        run.wait_for(lambda: status().get("tracked_groups", 0) > 0, what="status refreshed")
        groups = status()["tracked_groups"]
        scraped = _query(prom_port, 'count_over_time(up{job="jfwatch"}[5m])')
        _wait_for_scrapes(prom_port, int(max(scraped.values())) + 3)
        decisions = [json.loads(line) for line in run.log_text().splitlines()
                     if line.startswith("{") and '"event": "alert"' in line]
        alerts = Counter(d["rule"] for d in decisions)
        bans = run.log_text().count('"event": "ban"')
        panels = {}
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel.get("targets", []):
                panels[target["expr"]] = _query(prom_port, target["expr"])
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        run.stop()
    source = str(log.parent / "log_*.log")
    per_minute = 6 / 300 * 60  # 6 events in a 5-minute window

    def one(expr: str) -> float:
        [value] = panels[expr].values()
        return value

    assert round(one('sum(increase(jfwatch_attempts_total{kind=~"auth_failure|auth_blocked|'
                     'mfa_failure"}[1h]))')) == 6
    assert round(one("sum(increase(jfwatch_alerts_total[24h]))")) == sum(alerts.values()) > 0
    assert one("sum(jfwatch_bans_active)") == 1
    assert one("count(jfwatch_source_readable == 0) or vector(0)") == 0
    by_kind = panels["sum by (kind) (rate(jfwatch_events_total[5m])) * 60"]
    assert by_kind["kind=auth_failure"] == pytest.approx(per_minute, rel=0.1)
    assert by_kind["kind=mfa_failure"] == 0  # there from the start, at zero
    by_source = panels["sum by (source) (rate(jfwatch_events_total[5m])) * 60"]
    assert by_source == pytest.approx({f"source={source}": per_minute}, rel=0.1)
    top = panels["topk(10, sum by (rule) (increase(jfwatch_alerts_total[1h])))"]
    assert {k.removeprefix("rule="): round(v) for k, v in top.items() if round(v)} == alerts
    assert round(one("sum(increase(jfwatch_bans_total[1h]))")) == bans
    notified = panels["sum by (outcome) (increase(jfwatch_notifications_total[15m]))"]
    assert notified and set(notified.values()) == {0}
    assert one("sum(jfwatch_outbox_depth)") == 0
    lines = panels["sum by (source, outcome) (rate(jfwatch_lines_total[5m]))"]
    assert lines[f"outcome=matched,source={source}"] * 300 == pytest.approx(6, rel=0.1)
    assert lines[f"outcome=unmatched,source={source}"] * 300 == pytest.approx(1, rel=0.1)
    since = panels["time() - jfwatch_last_event_timestamp_seconds"]
    assert 0 <= since[f"source={source}"] < 120
    lag = panels["jfwatch_tail_lag_bytes"]
    assert lag == {f"file={log},source={source}": 0}
    assert one("jfwatch_tracked_groups") == groups > 0
    assert one("rate(jfwatch_group_evictions_total[5m])") == 0
    assert len(panels) == 15  # every expression of the dashboard was checked above
