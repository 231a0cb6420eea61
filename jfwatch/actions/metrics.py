"""
Prometheus metrics (own registry, ``jfwatch_`` prefix) and the HTTP endpoint with
``/metrics`` and ``/health``.  No label ever carries an address or a username.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Info, make_wsgi_app

from jfwatch import __version__
from jfwatch.actions.enforce import EnforcementQueue
from jfwatch.reporting import Totals

# A scrape or a probe takes milliseconds; Prometheus scrapes with one connection at a time.
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT = 5.0  # of silence on a connection
# Of a connection in all: a client sending a byte every few seconds is never silent
# for REQUEST_TIMEOUT, and is cut off here instead.
CONNECTION_DEADLINE = 5.0


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """
    At most MAX_CONNECTIONS connections at once, each cut off CONNECTION_DEADLINE seconds
    after it was accepted.  A connection that finds every place taken takes the place of
    the oldest one (the slowest: a real request is over in milliseconds), so a flood of
    slow or idle clients can neither pile up threads and descriptors nor keep a
    ``/health`` probe out: the probe is served as soon as it arrives, at the expense of
    a slow client.  IPv6 when the address is one (``::1``).
    """

    daemon_threads = True
    # Connections waiting to be accepted: socketserver's 5 drops a probe's SYN while a
    # crowd reconnects, and the kernel retries it only a second later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._lock = threading.Lock()
        self._open: dict[Any, float] = {}  # connection -> when accepted (monotonic)
        self.evicted = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accepting thread: make room, then serve in a thread of its own."""
        with self._lock:
            if len(self._open) >= MAX_CONNECTIONS:
                oldest = min(self._open, key=self._open.__getitem__)
                self._cut(oldest)
                self.evicted += 1
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._lock:
                self._open.pop(request, None)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client cut off or gone mid-request is expected; no traceback on stderr."""

    def service_actions(self) -> None:
        """Called by serve_forever about twice a second: cut off connections past their
        deadline."""
        cutoff = time.monotonic() - CONNECTION_DEADLINE
        with self._lock:
            for conn in [c for c, since in self._open.items() if since < cutoff]:
                self._cut(conn)

    def _cut(self, conn: Any) -> None:
        """Wake the thread serving it (a blocked read or write returns) and forget it;
        that thread closes it.  Called with the lock held."""
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        self._open.pop(conn, None)


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # a silent client is dropped, not waited for

    def log_message(self, *args: Any) -> None:
        return


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.lines = Counter("jfwatch_lines", "Log lines read", ["source", "outcome"], registry=r)
        # source: the configured source (its name:, else its path) on every series;
        # format: the format it is configured with.
        self.events = Counter("jfwatch_events", "Events parsed", ["source", "format", "kind"],
                              registry=r)
        self.attempts = Counter(
            "jfwatch_attempts", "Authentication attempts (the records of one attempt from the "
            "proxy, Jellyfin's log and its Activity Log counted once), by kind", ["kind"],
            registry=r)
        self.alerts = Counter("jfwatch_alerts", "Alerts raised", ["rule", "severity"], registry=r)
        self.bans = Counter("jfwatch_bans", "Bans issued", ["rule"], registry=r)
        self.unbans = Counter("jfwatch_unbans", "Bans lifted", registry=r)
        self.bans_active = Gauge("jfwatch_bans_active", "Addresses currently banned", registry=r)
        self.enforcements = Counter("jfwatch_enforcer_requests", "Bans and unbans delivered "
                                    "to an enforcer, by outcome", ["enforcer", "outcome"],
                                    registry=r)
        self.enforcer_up = Gauge("jfwatch_enforcer_up", "1 while the enforcer accepts "
                                 "requests", ["enforcer"], registry=r)
        self.enforcer_pending = Gauge("jfwatch_enforcer_pending", "Requests waiting for the "
                                      "enforcer", ["enforcer"], registry=r)
        self.notifications = Counter("jfwatch_notifications", "Notification outcomes",
                                     ["outcome"], registry=r)
        self.outbox_depth = Gauge("jfwatch_outbox_depth", "Alerts waiting to be sent", registry=r)
        self.groups = Gauge("jfwatch_tracked_groups", "Detector groups in memory", registry=r)
        self.evictions = Counter("jfwatch_group_evictions", "Groups evicted at the cap",
                                 registry=r)
        self.duplicates = Counter(
            "jfwatch_duplicate_reports", "Second reports of one authentication (Jellyfin's "
            "log and its Activity Log), counted once by rules", registry=r)
        self.future_events = Counter(
            "jfwatch_future_events", "Events dated ahead of the wall clock (forged or wrongly "
            "clocked lines), taken at the current time", registry=r)
        self.clock_lag = Gauge(
            "jfwatch_source_clock_lag_seconds", "How far behind the time they were written "
            "the newest lines of a followed file are dated (a wrong timezone, a lagging "
            "clock); 0 while they agree", ["source"], registry=r)
        self.last_event = Gauge("jfwatch_last_event_timestamp_seconds",
                                "Time of the newest event per source", ["source"], registry=r)
        self.lag = Gauge("jfwatch_tail_lag_bytes", "Bytes written but not yet read",
                         ["source", "file"], registry=r)
        self.files = Gauge("jfwatch_files", "Files followed per source (0: its pattern "
                           "matches nothing)", ["source"], registry=r)
        self.files_skipped = Gauge("jfwatch_files_skipped",
                                   "Matching files not followed (beyond max_open_files)",
                                   ["source"], registry=r)
        self.source_up = Gauge("jfwatch_source_readable", "1 if the source can be read and "
                               "has files to read (or another source in its directory has)",
                               ["source"], registry=r)
        Info("jfwatch_build", "Build information", registry=r).info({"version": __version__})
        # Written by the reading thread, read by the HTTP threads: under this lock.
        self._health_lock = threading.Lock()
        self._unhealthy_since: dict[str, float] = {}
        self._faults: dict[str, str] = {}
        # The daemon's latest snapshot for /status, replaced whole (never changed in place),
        # so the HTTP thread reads it without a lock.
        self.status: dict[str, Any] = {}
        self.faults = Gauge("jfwatch_fault", "1 while a part cannot do its job (ban_feed, "
                            "state): see /health and the log", ["part"], registry=r)
        self.stale_after = 600.0
        self._server: _BoundedServer | None = None
        self._notify_seen: Totals[str] = Totals()
        self._enforce_seen: Totals[tuple[str, str]] = Totals()

    def prepare(self, sources: list[tuple[str, str]], rules: list[tuple[str, str, bool]],
                outcomes: list[str]) -> None:
        """
        Create every series known at start at zero: lines and events per configured
        source (label, format) and kind, alerts per rule and severity, bans per banning
        rule, notifications per outcome.  A counter that appears only at its first
        increment is missed by increase() and rate(), and dashboards undercount.
        """
        from jfwatch.events import EventKind

        for source, fmt in sources:
            for outcome in ("matched", "unmatched", "rejected"):
                self.lines.labels(source, outcome)
            for kind in EventKind:
                self.events.labels(source, fmt, kind.value)
        for kind in EventKind:
            self.attempts.labels(kind.value)
        for rule, severity, bans in rules:
            self.alerts.labels(rule, severity)
            if bans:
                self.bans.labels(rule)
        for outcome in outcomes:
            self.notifications.labels(outcome)

    def source_health(self, source: str, readable: bool) -> None:
        self.source_up.labels(source).set(1 if readable else 0)
        with self._health_lock:
            if readable:
                self._unhealthy_since.pop(source, None)
            else:
                self._unhealthy_since.setdefault(source, time.monotonic())

    def fault(self, what: str, problem: str | None) -> None:
        """A part that cannot do its job now (``ban_feed``, ``state``), or None when it can
        again: ``/health`` says 503 while any is at fault."""
        with self._health_lock:
            if problem is None:
                self._faults.pop(what, None)
            else:
                self._faults[what] = problem
        self.faults.labels(what).set(0 if problem is None else 1)

    def healthy(self) -> tuple[bool, str]:
        now = time.monotonic()
        with self._health_lock:
            bad = [s for s, t in self._unhealthy_since.items() if now - t > self.stale_after]
            faults = sorted(self._faults.items())
        lines = ["unreadable: " + ", ".join(bad)] if bad else []
        lines += [f"{what}: {problem}" for what, problem in faults]
        return (not lines, "\n".join(lines or ["ok"]) + "\n")

    def sync_enforcers(self, queue: EnforcementQueue) -> None:
        """Deliveries to each enforcer (accepted, failed, recovered after a restart), what
        waits, and whether it answers."""
        # Copied in one step: the enforcement thread adds keys as it goes.
        for (enforcer, outcome), total in list(queue.counts.items()):
            delta = self._enforce_seen.take((enforcer, outcome), total)
            if delta:
                self.enforcements.labels(enforcer, outcome).inc(delta)
        for enforcer, problem in list(queue.problems.items()):
            self.enforcer_up.labels(enforcer).set(0 if problem else 1)
            self.enforcer_pending.labels(enforcer).set(queue.pending(enforcer))

    def sync_notify(self, counts: dict[str, int]) -> None:
        """Turn the outbox's running totals into counter increments."""
        for outcome, total in list(counts.items()):
            delta = self._notify_seen.take(outcome, total)
            if delta:
                self.notifications.labels(outcome).inc(delta)

    def serve(self, host: str, port: int) -> int:
        """``/metrics`` by prometheus_client's own exposition (content negotiation, gzip),
        ``/health`` for probes; returns the port (0 picks a free one)."""
        exposition = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path.startswith("/metrics"):
                return cast(Iterable[bytes], exposition(environ, start_response))
            if path.startswith("/health"):
                ok, text = self.healthy()
                start_response("200 OK" if ok else "503 Service Unavailable",
                               [("Content-Type", "text/plain")])
                return [text.encode()]
            if path.startswith("/status"):  # what `jfwatch status` shows (no secrets in it)
                start_response("200 OK", [("Content-Type", "application/json")])
                return [orjson.dumps(self.status)]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"see /metrics, /health and /status\n"]

        self._server = make_server(host, port, app, server_class=_BoundedServer,
                                   handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="jfwatch-metrics",
                         daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
