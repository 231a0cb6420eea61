"""
Metrics of a real ``jfwatch run`` over real files, scraped over HTTP and read with
prometheus-client's own text parser; promtool checks the scrape and the alert rules;
the dashboard and alert queries only use metrics jfwatch exports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, require_tool
from daemon_helper import DaemonRun, append, denied, start_daemon

DASHBOARD = ROOT / "contrib" / "grafana" / "jfwatch-dashboard.json"
ALERTS = ROOT / "contrib" / "prometheus" / "jfwatch-alerts.yml"


def _port(run: DaemonRun) -> int:
    run.wait_for(lambda: "metrics_listening" in run.log_text(), what="metrics port")
    line = next(x for x in run.log_text().splitlines() if "metrics_listening" in x)
    return int(json.loads(line)["port"])


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and set(labels.items()) <= set(lab))


@pytest.mark.system
def test_scrape_matches_what_was_written(tmp_path: Path) -> None:
    run, log = start_daemon(tmp_path, metrics_port=0)
    port = _port(run)
    now = datetime.now(UTC) - timedelta(minutes=1)
    ts = f"{now:%Y-%m-%d %H:%M:%S}.000"
    body = "".join(denied("victim", "203.0.113.77", ts) for _ in range(6))
    append(log, body + "noise line that is not an event\n")
    append(log, b"\xff\xfe invalid utf-8\n")
    run.wait_users(Counter({"victim": 6}))
    source = str(log.parent / "log_*.log")
    run.wait_for(lambda: _value(_samples(_scrape(port)), "jfwatch_lines_total",
                                outcome="rejected") == 1, what="rejected count")
    text = _scrape(port)
    samples = _samples(text)
    assert _value(samples, "jfwatch_lines_total", outcome="matched", source=source) == 6
    assert _value(samples, "jfwatch_lines_total", outcome="unmatched", source=source) >= 1
    assert _value(samples, "jfwatch_lines_total", outcome="rejected", source=source) == 1
    assert _value(samples, "jfwatch_events_total", kind="auth_failure", source=source,
                  format="jellyfin") == 6
    # Every series known at start exists from the start, at zero (increase() sees the
    # first event), and the source's files are counted.
    assert any(name == "jfwatch_alerts_total" and dict(labels) == {
        "rule": "account-locked", "severity": "critical"} for name, labels in samples)
    assert any(name == "jfwatch_events_total" and dict(labels).get("kind") == "mfa_failure"
               for name, labels in samples)
    assert any(name == "jfwatch_notifications_total" for name, _ in samples)
    assert _value(samples, "jfwatch_files", source=source) == 1
    assert _value(samples, "jfwatch_alerts_total", rule="brute-force-ip", severity="high") == 1
    assert _value(samples, "jfwatch_alerts_total", rule="user-enumeration") == 0
    assert _value(samples, "jfwatch_bans_total", rule="brute-force-ip") == 1
    run.wait_for(lambda: _value(_samples(_scrape(port)), "jfwatch_bans_active") == 1,
                 what="bans_active gauge")
    assert _value(samples, "jfwatch_build_info") == 1
    assert _value(samples, "jfwatch_source_readable", source=source) == 1
    # Cardinality: no label value is an address or a username.
    assert "203.0.113.77" not in text and "victim" not in text
    assert _scrape(port, "/health").strip().upper() == "OK"
    assert run.stop() == 0


@pytest.mark.system
def test_health_reports_an_unreadable_source(tmp_path: Path) -> None:
    run = DaemonRun(tmp_path, metrics_port=0, pattern="missing-dir/log_*.log",
                    extra="")
    run.config.write_text(run.config.read_text().replace("metrics: {port: 0}",
                                                         "metrics: {port: 0, stale_after: 1s}"))
    run.start()
    port = _port(run)

    def unhealthy() -> bool:
        try:
            _scrape(port, "/health")
        except urllib.error.HTTPError as exc:
            return exc.code == 503
        return False

    run.wait_for(unhealthy, what="503 from /health")
    assert run.stop() == 0


@pytest.mark.system
def test_promtool_accepts_the_scrape_and_the_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log_20260501.log").write_text("")
    run = DaemonRun(tmp_path, metrics_port=0)
    run.start()
    port = _port(run)
    append(logs / "log_20260501.log", denied("x"))
    run.wait_users(Counter({"x": 1}))
    text = _scrape(port)
    assert run.stop() == 0
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, check=False, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, check=False, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr


def _exported_names() -> set[str]:
    from jfwatch.actions.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update({f"{family.name}_total", f"{family.name}_info"})
    return names


def _referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bjfwatch_[a-z_]+", expr))


def test_dashboard_and_alerts_only_use_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    exprs += re.findall(r"expr: (.+)", ALERTS.read_text())
    used = set().union(*(_referenced(e) for e in exprs))
    assert used, "no jfwatch metric referenced"
    missing = used - _exported_names()
    assert not missing, f"referenced but not exported: {sorted(missing)}"


@pytest.mark.system
def test_promtool_unit_tests_of_every_shipped_alert() -> None:
    """contrib/prometheus/jfwatch-alerts.test.yml: each alert fires on what it is for, a
    quiet healthy source and a busy one do not stall, and every alert has a test."""
    promtool = require_tool("promtool")
    rules = (ROOT / "contrib" / "prometheus" / "jfwatch-alerts.yml").read_text()
    tests = (ROOT / "contrib" / "prometheus" / "jfwatch-alerts.test.yml").read_text()
    for alert in re.findall(r"- alert: (\w+)", rules):
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
    result = subprocess.run([promtool, "test", "rules", "jfwatch-alerts.test.yml"],
                            cwd=ROOT / "contrib" / "prometheus", capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_slow_clients_never_keep_a_health_probe_out() -> None:
    """100 clients that each send a byte of a request every second (never silent long
    enough to time out; each reconnects when cut off): every /health probe among them
    is answered within a second, and no slow client holds a connection past its
    deadline."""
    import socket
    import threading
    import time

    from jfwatch.actions.metrics import CONNECTION_DEADLINE, Metrics

    metrics = Metrics()
    port = metrics.serve("127.0.0.1", 0)
    stop = threading.Event()
    cut_after: list[float] = []

    def slow_client() -> None:
        conn, since = None, 0.0
        while not stop.is_set():
            if conn is None:
                conn, since = socket.create_connection(("127.0.0.1", port), timeout=5), \
                    time.monotonic()
            try:
                conn.sendall(b"G")
                conn.settimeout(0.01)
                if conn.recv(1) == b"":  # cut off by the server
                    raise ConnectionResetError
            except TimeoutError:
                pass
            except OSError:
                cut_after.append(time.monotonic() - since)
                conn.close()
                conn = None
                continue
            stop.wait(1.0)
        if conn is not None:
            conn.close()

    clients = [threading.Thread(target=slow_client, daemon=True) for _ in range(100)]
    for client in clients:
        client.start()
    try:
        time.sleep(2)  # every place taken, over and over
        waits = []
        for _ in range(30):
            began = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                assert r.status == 200 and r.read() == b"ok\n"
            waits.append(time.monotonic() - began)
            time.sleep(0.1)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
        metrics.stop()
    assert max(waits) < 1.0, waits
    assert cut_after and max(cut_after) < CONNECTION_DEADLINE + 2.0


@pytest.mark.slow
def test_health_under_5000_sources_and_concurrent_scrapes() -> None:
    """The reading thread changes every source's health and the faults while HTTP threads
    answer /health and /status: every answer is a real one (200 or 503), never a 500."""
    import threading

    from jfwatch.actions.metrics import Metrics

    metrics = Metrics()
    metrics.stale_after = 0.0  # every unreadable source counts at once
    port = metrics.serve("127.0.0.1", 0)
    stop = threading.Event()
    answers: Counter[int] = Counter()

    def scrape() -> None:
        while not stop.is_set():
            for path in ("/health", "/status"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                                timeout=10) as resp:
                        answers[resp.status] += 1
                except urllib.error.HTTPError as exc:
                    answers[exc.code] += 1

    scrapers = [threading.Thread(target=scrape) for _ in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave as on a busy many-core host
    for t in scrapers:
        t.start()
    try:
        for round_ in range(20):
            for n in range(5000):
                metrics.source_health(f"source-{n}", (n + round_) % 3 != 0)
                if n % 100 == 0:
                    metrics.fault(f"part-{n % 700}", None if round_ % 2 else f"problem {n}")
            metrics.status = {"round": round_}
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        for t in scrapers:
            t.join(timeout=30)
        metrics.stop()
    assert answers[500] == 0, answers
    assert answers[200] + answers[503] > 0
    assert set(answers) <= {200, 503}
