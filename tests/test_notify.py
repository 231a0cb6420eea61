"""The outbox with real Apprise to a local receiver: folding, quiet hours, message text."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from jfwatch.actions.enforce import request_rows
from jfwatch.actions.notify import Outbox, render
from jfwatch.config.model import NotifyConfig
from jfwatch.detect.decisions import Alert, Ban
from jfwatch.state import StateStore

from http_receiver import Receiver, free_port

T0 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


def _alert(rule: str, ip: str, severity: str = "high", minute: int = 0) -> Alert:
    t = T0 + timedelta(minutes=minute)
    return Alert(rule=rule, description="Repeated failed logins", severity=severity, time=t,
                 key={"ip": ip}, ip=ip, user="admin", count=5, window_seconds=600,
                 first_time=t - timedelta(minutes=2), last_time=t, tags=("security",),
                 ban_until=t + timedelta(hours=4))


def _outbox(tmp_path: Path, port: int, **cfg: object) -> Outbox:
    config = NotifyConfig(urls=[SecretStr(f"json://127.0.0.1:{port}/")], **cfg)  # type: ignore[arg-type]
    return Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: T0)


def test_flood_folds_into_one_digest_per_rule_and_hour(tmp_path: Path) -> None:
    """Past max_per_rule_per_hour, one rule's alerts of an hour become one digest, sent
    once when the hour is over, whatever else is delivered meanwhile."""
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    now = [T0]
    try:
        config = NotifyConfig(urls=[SecretStr(f"json://127.0.0.1:{port}/")],
                              max_per_rule_per_hour=3)
        outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: now[0])
        for i in range(20):
            outbox.enqueue(_alert("brute-force-ip", f"203.0.113.{i}", minute=i % 20))
        assert outbox.deliver_due() == 3
        for minute in range(1, 29):  # the flood goes on; deliveries are tried every minute
            now[0] = T0 + timedelta(minutes=minute)
            outbox.enqueue(_alert("brute-force-ip", f"198.51.100.{minute}", minute=minute))
            assert outbox.deliver_due() == 0
        now[0] = T0 + timedelta(minutes=30, seconds=1)  # 00:00:01, the hour is over
        assert outbox.deliver_due() == 1
        now[0] += timedelta(hours=2)
        assert outbox.deliver_due() == 0
    finally:
        receiver.stop()
    titles = [m["title"] for m in receiver.messages]
    assert len(titles) == 4
    digests = [m for m in receiver.messages if "digest" in m["title"]]
    assert len(digests) == 1
    for ip in ("203.0.113.3", "203.0.113.19", "198.51.100.1", "198.51.100.28"):
        assert ip in digests[0]["message"]


def test_past_dated_alerts_are_capped_and_held_on_the_wall_clock(tmp_path: Path) -> None:
    """
    Alerts of lines dated years ago (a forged header, a lagging clock, a backfill) count
    against this hour's cap and wait out tonight's quiet hours: 201 critical alerts dated
    2020 give max_per_rule_per_hour pushes and one digest after the hour, not 201; and
    non-critical ones enqueued in quiet hours are held, whatever their own hour.
    """
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    now = [T0]
    try:
        config = NotifyConfig(urls=[SecretStr(f"json://127.0.0.1:{port}/")],
                              max_per_rule_per_hour=5, quiet_hours="23:00-07:00")
        outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: now[0])
        past = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)
        for i in range(201):
            alert = _alert("injection-attempt", f"203.0.113.{i % 250}", severity="critical")
            outbox.enqueue(replace(alert, time=past + timedelta(hours=i)))
        for i in range(100):
            alert = _alert("brute-force-ip", f"198.51.100.{i}")
            outbox.enqueue(replace(alert, time=past + timedelta(hours=i)))
        assert outbox.deliver_due() == 5  # quiet hours: only the critical ones, capped
        assert outbox.deliver_due() == 0
        now[0] = T0 + timedelta(minutes=31)  # the hour is over: its digest goes
        assert outbox.deliver_due() == 1
        assert outbox.counts["quiet"] >= 5
    finally:
        receiver.stop()
    assert len(receiver.messages) == 6
    assert not any("brute-force-ip" in m["title"] for m in receiver.messages)


def test_quiet_hours_hold_all_but_critical(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    try:
        outbox = _outbox(tmp_path, port, quiet_hours="23:00-07:00")
        outbox.enqueue(_alert("brute-force-ip", "203.0.113.1"))
        outbox.enqueue(_alert("injection-attempt", "203.0.113.2", severity="critical"))
        assert outbox.deliver_due() == 1
        assert outbox.depth() == 1
        outbox.clock = lambda: T0 + timedelta(hours=8)
        assert outbox.deliver_due() == 1
    finally:
        receiver.stop()
    assert [m["title"] for m in receiver.messages] == [
        "[media] injection-attempt: 203.0.113.2", "[media] brute-force-ip: 203.0.113.1"]
    assert outbox.counts["quiet"] == 1


def test_message_is_short_titled_and_actionable() -> None:
    title, body = render(_alert("brute-force-ip", "203.0.113.9"), "media")
    assert len(title) <= 80
    assert "Address: 203.0.113.9" in body and "User: admin" in body
    assert "Count: 5 within 10 min" in body and "Banned until 2026-03-02 03:30 UTC" in body
    assert "Rule: brute-force-ip (severity high) on media" in body


def test_usernames_cannot_inject_into_messages() -> None:
    """Control characters were escaped by the parser; secrets in text are redacted here."""
    alert = _alert("brute-force-ip", "203.0.113.9")
    object.__setattr__(alert, "user", "x?pw=hunter2")
    _, body = render(alert, "media")
    assert "hunter2" not in body


def test_prune_keeps_pending_alerts_and_active_history(tmp_path: Path) -> None:
    """Old delivered alerts and stale offender history go; undelivered ones and bans stay."""
    store = StateStore(tmp_path / "s.db")
    old = T0 - timedelta(days=400)
    with store.transaction() as db:
        db.execute("INSERT INTO outbox (created, dedup, rule, severity, tags, title, body, "
                   "delivered) VALUES (?, 'a', 'r', 'high', '', 't', 'b', ?)",
                   (old.isoformat(), old.isoformat()))
        db.execute("INSERT INTO outbox (created, dedup, rule, severity, tags, title, body) "
                   "VALUES (?, 'b', 'r', 'high', '', 't', 'b')", (old.isoformat(),))
    store.record_ban("203.0.113.1", "bf", old, old + timedelta(hours=1), 0)
    store.remove_ban("203.0.113.1")
    store.record_ban("203.0.113.2", "bf", old, T0 + timedelta(days=1), 0)
    for ip, until in (("203.0.113.1", old + timedelta(hours=1)),
                      ("203.0.113.2", T0 + timedelta(days=1))):
        request_rows(store, ["crowdsec"], Ban(ip, "bf", old, until, 0))
    with store.transaction() as db:
        db.execute("UPDATE enforcements SET accepted=?", (old.isoformat(),))
    assert store.prune(T0) == 3  # an alert, a long-over ban's request, stale history
    assert [r[0] for r in store.db.execute("SELECT ip FROM enforcements")] == ["203.0.113.2"]
    assert [r[0] for r in store.db.execute("SELECT dedup FROM outbox")] == ["b"]
    assert store.ban_count("203.0.113.1") == 0
    assert store.ban_count("203.0.113.2") == 1


def test_retries_back_off_on_the_outbox_clock_then_deliver_once(tmp_path: Path) -> None:
    """A target that is down: retried at 1 s, 2 s, 4 s... of the outbox's clock (no
    sleeping), delivered once when it is back, never again after."""
    port = free_port()
    now = [T0]
    config = NotifyConfig(urls=[SecretStr(f"json://127.0.0.1:{port}/")])
    outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: now[0])
    outbox.enqueue(_alert("brute-force-ip", "203.0.113.1"))
    assert outbox.deliver_due() == 0  # nothing listens: failed, retry in 1 s
    assert outbox.counts["retried"] == 1
    assert outbox.deliver_due() == 0 and outbox.counts["retried"] == 1  # not due yet
    now[0] += timedelta(seconds=1)
    assert outbox.deliver_due() == 0 and outbox.counts["retried"] == 2  # next in 2 s
    now[0] += timedelta(seconds=1)
    assert outbox.deliver_due() == 0 and outbox.counts["retried"] == 2  # not due yet
    receiver = Receiver(port)
    receiver.start()
    try:
        now[0] += timedelta(seconds=1)
        assert outbox.deliver_due() == 1
        now[0] += timedelta(hours=1)
        assert outbox.deliver_due() == 0
    finally:
        receiver.stop()
    assert len(receiver.messages) == 1 and outbox.depth() == 0


def test_an_alert_is_given_up_after_give_up_after(tmp_path: Path) -> None:
    port = free_port()  # nothing ever listens here
    now = [T0]
    config = NotifyConfig(urls=[SecretStr(f"json://127.0.0.1:{port}/")], give_up_after="1h",
                          retry_max="10m")
    outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: now[0])
    outbox.enqueue(_alert("brute-force-ip", "203.0.113.1"))
    for _ in range(30):  # bounded: each pass moves the clock past the next retry
        outbox.deliver_due()
        now[0] += timedelta(minutes=10)
        if outbox.counts["dropped"]:
            break
    assert outbox.counts["dropped"] == 1 and outbox.depth() == 0


def test_quiet_hours_are_read_in_the_configured_zone_across_a_dst_change(tmp_path: Path) -> None:
    """Quiet 23:00-07:00 in Europe/Berlin: 22:30 UTC is 23:30 in winter (quiet) and 00:30
    after the clocks went forward (quiet); 05:30 UTC is 06:30 in winter (quiet) but 07:30
    in summer (not).  The message gives its times in that zone."""
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    config = NotifyConfig(urls=[SecretStr("json://127.0.0.1:9/")], quiet_hours="23:00-07:00")
    outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", tz=berlin)
    cases = {datetime(2026, 3, 28, 21, 30, tzinfo=UTC): False,  # 22:30 CET
             datetime(2026, 3, 28, 22, 30, tzinfo=UTC): True,   # 23:30 CET
             datetime(2026, 3, 29, 5, 30, tzinfo=UTC): False,   # 07:30 CEST (after the change)
             datetime(2026, 3, 28, 5, 30, tzinfo=UTC): True}    # 06:30 CET (before it)
    assert {when: outbox._quiet(when) for when in cases} == cases
    alert = _alert("brute-force-ip", "203.0.113.1")  # 23:30 UTC on 1 March: 00:30 CET
    _, body = render(alert, "media", berlin)
    assert "00:28:00-00:30:00 CET" in body and "Banned until 2026-03-02 04:30 CET" in body


def test_severity_reaches_the_phone_as_the_services_priority(tmp_path: Path) -> None:
    """An ntfy server (a local receiver speaking its API) gets the urgent priority for a
    critical alert and its default for an info one; a URL's own priority is kept."""
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    try:
        config = NotifyConfig(urls=[SecretStr(f"ntfy://127.0.0.1:{port}/alerts")])
        outbox = Outbox(StateStore(tmp_path / "s.db"), config, "media", clock=lambda: T0)
        outbox.enqueue(_alert("injection-attempt", "203.0.113.1", severity="critical"))
        outbox.enqueue(_alert("new-ip-for-user", "203.0.113.2", severity="info"))
        assert outbox.deliver_due() == 2
        pinned = NotifyConfig(urls=[SecretStr(f"ntfy://127.0.0.1:{port}/alerts?priority=low")])
        outbox = Outbox(StateStore(tmp_path / "p.db"), pinned, "media", clock=lambda: T0)
        outbox.enqueue(_alert("injection-attempt", "203.0.113.3", severity="critical"))
        assert outbox.deliver_due() == 1
    finally:
        receiver.stop()
    priority = {m["title"].rsplit(" ", 1)[1]: h.get("X-Priority")
                for m, h in zip(receiver.messages, receiver.headers, strict=True)}
    assert priority == {"203.0.113.1": "max", "203.0.113.2": None, "203.0.113.3": "low"}


def test_critical_alerts_pass_quiet_hours_behind_any_number_of_held_ones(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    try:
        outbox = _outbox(tmp_path, port, quiet_hours="23:00-07:00", max_per_rule_per_hour=100)
        for i in range(60):  # more than one batch of held, non-critical alerts
            outbox.enqueue(_alert("brute-force-ip", f"203.0.113.{i}"))
        outbox.enqueue(_alert("injection-attempt", "198.51.100.1", severity="critical"))
        assert outbox.deliver_due() == 1
        assert outbox.counts["quiet"] == 60
    finally:
        receiver.stop()
    assert [m["title"].rsplit(" ", 1)[1] for m in receiver.messages] == ["198.51.100.1"]
