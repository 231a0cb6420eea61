"""
Sub-commands that need the whole pipeline: replay, check-config, run, demo, bans,
notify-test.  ``cli`` imports this module only when one of them runs, so that
``jfwatch parse`` does not pay for pydantic, SQLite and the detector.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config, load_config
from jfwatch.detect.decisions import Alert, Ban, Decision, Unban
from jfwatch.detect.detector import Detector, DetectorSettings, settings_from_config
from jfwatch.detect.rules import Rule, load_rules
from jfwatch.detect.state import StateStore
from jfwatch.events import Event
from jfwatch.sources.lines import LineStats

if TYPE_CHECKING:
    from jfwatch.piped import Backfill


def load_all(config_path: Path | None, rules_dir: list[Path] | None
             ) -> tuple[Config, Path | None, list[Rule]]:
    """Config and rules together, so every problem of both is reported in one go."""
    problems: list[str] = []
    cfg, used = Config(), None
    rule_dirs: list[Path] | None = None
    try:
        cfg, used = load_config(config_path)
    except ConfigError as exc:
        problems += exc.problems
        rule_dirs = _raw_rule_dirs(config_path)  # still check the rules the file names
    rules: list[Rule] = []
    try:
        rules = load_rules([*(cfg.rules_dirs if rule_dirs is None else rule_dirs),
                            *(rules_dir or [])])
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return cfg, used, rules


def _raw_rule_dirs(config_path: Path | None) -> list[Path]:
    """``rules_dirs`` from a config file that failed validation, if it can be read."""
    from jfwatch.config.yaml_lines import load_yaml

    if config_path is None:
        return []
    try:
        data, _ = load_yaml(config_path)
    except ValueError:
        return []
    dirs = data.get("rules_dirs") if isinstance(data, dict) else None
    if not isinstance(dirs, list):
        return []
    return [config_path.parent / d for d in dirs if isinstance(d, str)]


def _report(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
    return 2


def _load_or_report(args: argparse.Namespace) -> tuple[Config, Path | None, list[Rule]] | int:
    try:
        return load_all(args.config, getattr(args, "rules", None))
    except ConfigError as exc:
        return _report(exc)


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, used, rules = loaded
    where = str(used) if used else "built-in defaults"
    print(f"config OK ({where}): {len(cfg.sources)} source(s), {len(rules)} rule(s) enabled, "
          f"{len(cfg.notify.urls)} notification URL(s)")
    secrets = [path for path, holds in ((used, bool(cfg.notify.urls)),
                                        (cfg.notify.config_file, True)) if path and holds]
    for path in secrets:
        try:
            readable_by_others = os.stat(path).st_mode & 0o004
        except OSError:
            continue
        if readable_by_others:
            print(f"warning: {path} holds notification secrets (tokens in Apprise URLs) and "
                  f"is readable by every user: chmod 0640 {path}", file=sys.stderr)
    return 0


def replay(files: list[str], cfg: Config, rules: list[Rule], fmt: str, stats: LineStats,
           state: Path | None = None, backfill: Backfill | None = None) -> list[Decision]:
    """
    The whole pipeline over files, in event time: as if every event were sorted by time
    (ties in file order) and fed to one detector.

    Without a state file, the detector works on the events a helper process pipes over
    while it parses the rest (``piped``), holding back the last few minutes of each
    piece so that lines a little out of order are still fed in order.  That equals
    sorting everything first as long as no event is older than one already fed, which
    holds for logs given in the order they were written; when one is, detection starts
    over on everything, sorted.  With a state file, bans would be recorded twice by a
    second start, so everything is sorted first.
    """
    from jfwatch.piped import Backfill

    tz = ZoneInfo(cfg.timezone)
    if backfill is None:
        backfill = Backfill.start(files, fmt, tz)
    newest = newest_plausible_time(files)
    try:
        return _replay(backfill, rules, settings_from_config(cfg), stats, state, lambda: newest)
    finally:
        backfill.cancel()  # a no-op once all was read; otherwise the helper is not needed


def newest_plausible_time(files: list[str]) -> datetime:
    """
    The time a replay takes as "now": no line was written after its file was last
    modified, so a line dated later is forged or wrongly clocked (the detector takes
    it at this time).  The newest modification time of the inputs, never later than
    the wall clock; the wall clock when one input is stdin.
    """
    now = datetime.now(UTC)
    newest = None
    for name in files:
        try:
            modified = os.stat(name).st_mtime if name != "-" else None
        except OSError:
            modified = None
        if modified is None:
            return now
        newest = modified if newest is None else max(newest, modified)
    return now if newest is None else min(now, datetime.fromtimestamp(newest, UTC))


def _replay(backfill: Backfill, rules: list[Rule], settings: DetectorSettings, stats: LineStats,
            state: Path | None, clock: Callable[[], datetime]) -> list[Decision]:
    from jfwatch.detect.memory_state import MemoryState
    from jfwatch.piped import StartOver

    def in_memory() -> Detector:
        return Detector(rules, settings, MemoryState(), clock)

    events: list[Event] = []  # every event so far, in file order: to sort or start over
    detector = None if state else in_memory()
    release = _Release()
    decisions: list[Decision] = []
    for piece in backfill.pieces(stats):
        if isinstance(piece, StartOver):  # the helper failed; the pieces start again
            events.clear()
            decisions.clear()
            release = _Release()
            detector = None if detector is None else in_memory()
            continue
        events += piece
        if detector is None:
            continue
        ready = release.take(piece)
        if ready is None:  # older than what was fed: sort everything first after all
            detector = None
            decisions.clear()
            continue
        for event in ready:
            decisions += detector.feed(event)
    if detector is not None:
        for event in release.rest():
            decisions += detector.feed(event)
        stats.future = detector.future_events
        return decisions
    detector = Detector(rules, settings, StateStore(state) if state else MemoryState(), clock)
    for event in sorted(events, key=_time):  # stable: ties keep file order
        decisions += detector.feed(event)
    stats.future = detector.future_events
    return decisions


# The sort key of events (attrgetter: a C call, where a def costs a Python frame per event).
_time: Callable[[Event], datetime] = attrgetter("time")


class _Release:
    """
    Releases the events of in-order pieces in time order, holding back the last
    ``HOLD`` of event time: a log's lines may be a little out of order across pieces.
    """

    HOLD = timedelta(minutes=5)

    def __init__(self) -> None:
        self._pending: list[Event] = []
        self._last: datetime | None = None  # the time of the last event released

    def take(self, piece: list[Event]) -> list[Event] | None:
        """The events now safe to feed, in time order; None if one is older than an
        event already released (the order cannot be kept)."""
        pending = self._pending
        pending += piece
        pending.sort(key=_time)  # stable: ties keep file order
        if not pending:
            return []
        if self._last is not None and pending[0].time < self._last:
            return None
        cut = bisect_right(pending, pending[-1].time - self.HOLD, key=_time)
        ready = pending[:cut]
        del pending[:cut]
        if ready:
            self._last = ready[-1].time
        return ready

    def rest(self) -> list[Event]:
        rest, self._pending = self._pending, []
        return rest


def cmd_replay(args: argparse.Namespace, backfill: Backfill | None = None) -> int:
    """``backfill``: the files' parsing, started early with an unvalidated timezone."""
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        if backfill is not None:
            backfill.cancel()
        return loaded
    cfg, _, rules = loaded
    if backfill is not None and backfill.tz != ZoneInfo(cfg.timezone):
        backfill.cancel()  # parsed in the wrong zone: start again in the right one
        backfill = None
    from jfwatch.batch import quiet_collector

    quiet_collector()
    # No side effects unless asked: a throw-away state unless --state is given.
    stats = LineStats()
    decisions = replay(args.files, cfg, rules, args.format, stats, args.state, backfill)
    # One encoder for every line; decisions are trees, never cycles, so not checked for any.
    encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
    sys.stdout.writelines(encode(d.to_json()) + "\n" for d in decisions)
    alerts = Counter(d.rule for d in decisions if isinstance(d, Alert))
    bans = [d for d in decisions if isinstance(d, Ban)]
    unbans = [d for d in decisions if isinstance(d, Unban)]
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())) or "none"
    print(f"Lines: {stats.read} read, {stats.matched} matched, {stats.unmatched} unmatched, "
          f"{stats.rejected} rejected\nEvents: {sum(stats.events.values())} ({kinds})\n"
          f"Alerts: {sum(alerts.values())}", file=sys.stderr)
    for rule, n in sorted(alerts.items()):
        print(f"  {rule}: {n}", file=sys.stderr)
    print(f"Bans: {len(bans)} issued ({len({b.ip for b in bans})} addresses), "
          f"{len(unbans)} lifted", file=sys.stderr)
    if stats.future:
        print(f"Future-dated: {stats.future} event(s) dated after the newest input was "
              "written, taken at that time", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from jfwatch.engine import log
    from jfwatch.engine.daemon import Daemon

    log.configure(args.log_level)
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, used, rules = loaded
    logger = log.get("jfwatch")
    logger.info("starting", config=str(used) if used else "built-in defaults",
                rules=len(rules), sources=len(cfg.sources))

    def reload() -> tuple[Config, list[Rule]]:
        new_cfg, _, new_rules = load_all(args.config, getattr(args, "rules", None))
        return new_cfg, new_rules

    try:
        daemon = Daemon(cfg, rules, used, reload)
    except OSError as exc:
        logger.error("cannot_start", problem=str(exc))
        return 1
    daemon.install_signals()
    return daemon.run()


def cmd_bans(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, _, _ = loaded
    store = StateStore(cfg.state_dir / "state.db")
    if args.action == "unban":
        from datetime import UTC

        from jfwatch.actions.banfeed import BanFeed

        row = store.remove_ban(args.ip)
        if row is None:
            print(f"{args.ip} is not banned", file=sys.stderr)
            return 1
        if cfg.ban_feed.enabled:
            feed = BanFeed(cfg.ban_feed.path, cfg.ban_feed.list_path)
            now = datetime.now(UTC)
            feed.write(Unban(row.ip, row.rule, now, "manual"), now)
            feed.write_list([b.ip for b in store.bans()])
        print(f"unbanned {row.ip} (was banned by {row.rule} until {row.until.isoformat()})")
        return 0
    for row in store.bans():
        print(f"{row.ip}\t{row.rule}\tuntil {row.until.isoformat()}\tlevel {row.level}")
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from jfwatch.actions.notify import Outbox

    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, _, _ = loaded
    outbox = Outbox(StateStore(":memory:"), cfg.notify, cfg.server_name)
    if not outbox.enabled:
        print("no notification targets configured (notify.urls or notify.config_file)")
        return 1
    results = outbox.test()
    for name, ok in results:
        print(f"{name}: {'delivered' if ok else 'FAILED'}")
    return 0 if all(ok for _, ok in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from jfwatch.engine.demo import run_demo

    return run_demo(keep=args.keep, port=args.port, pace=args.pace)
