"""
Sub-commands that need the config: replay, check-config, run, bans, notify-test, demo.
``cli`` imports this module only when one of them runs, so that ``jfwatch parse`` does
not pay for pydantic, SQLite and the detector.
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config, load_config
from jfwatch.detect.rules import Rule, load_rules
from jfwatch.engine.preflight import runtime_problems
from jfwatch.sources.files import nearby_logs
from jfwatch.state import StateStore, StateUnusable

Loaded = tuple[Config, Path | None, list[Rule]]


# What a command checks beyond the config's own validity (``preflight``): nothing, the
# files the config names (Apprise config file, .mmdb), or those and the keys.
Runtime = Literal["none", "files", "all"]


def load_all(config_path: Path | None, rules_dir: list[Path] | None, runtime: Runtime = "none"
             ) -> tuple[Config, Path | None, list[Rule]]:
    """Config, rules and the runtime checks together, so every problem is reported in
    one go."""
    problems: list[str] = []
    cfg, used = Config(), None
    rule_dirs: list[Path] | None = None
    try:
        cfg, used = load_config(config_path)
    except ConfigError as exc:
        problems += exc.problems
        rule_dirs = _raw_rule_dirs(config_path)  # still check the rules the file names
    else:
        if runtime != "none":
            problems += runtime_problems(cfg, keys=runtime == "all")
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


Command = Callable[[argparse.Namespace, Loaded], int]


def _with_config(runtime: Runtime) -> Callable[[Command], Callable[[argparse.Namespace], int]]:
    """A command that runs on a valid config and rules (and passes the ``runtime``
    checks); otherwise every problem is printed and it exits 2."""

    def wrap(command: Command) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                loaded = load_all(args.config, getattr(args, "rules", None), runtime)
            except ConfigError as exc:
                return _report(exc)
            try:
                return command(args, loaded)
            except StateUnusable as exc:
                print(f"error: state file unusable: {exc}", file=sys.stderr)
                return 2

        return run

    return wrap


@_with_config(runtime="all")
def cmd_check_config(args: argparse.Namespace, loaded: Loaded) -> int:
    cfg, used, rules = loaded
    where = str(used) if used else "built-in defaults"
    print(f"config OK ({where}): {len(cfg.sources)} source(s), "
          f"{len(cfg.jellyfin_api)} Activity Log source(s), {len(rules)} rule(s) enabled, "
          f"{len(cfg.notify.urls)} notification URL(s); bans enforced by "
          f"{', '.join(cfg.enforcers) or 'nobody (alerts only)'}")
    travel = [r.name for r in rules if r.type == "impossible_travel"]
    if travel and not (cfg.geo.enabled and cfg.geo.mmdb):
        print(f"note: {', '.join(travel)} stays silent without city data: set geo.mmdb to a "
              "City database (GeoLite2-City, DB-IP City Lite)", file=sys.stderr)
    for src in cfg.sources:  # a source that matches nothing watches nothing
        if glob.glob(src.path) or not os.path.isdir(os.path.dirname(src.path) or "."):
            continue
        found = nearby_logs(src.path)
        print(f"note: 0 files match {src.path}" + (f"; found {', '.join(found)}" if found else ""),
              file=sys.stderr)
    for api in cfg.jellyfin_api:
        for warning in api.transport_warnings():
            print(f"warning: {warning}", file=sys.stderr)
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


@_with_config(runtime="files")
def cmd_replay(args: argparse.Namespace, loaded: Loaded) -> int:
    from jfwatch.engine.oneshot import DecisionPrinter, replay

    cfg, _, rules = loaded
    printer = replay(args.files, cfg, rules, args.format, state=args.state,
                     printer=DecisionPrinter(sys.stdout), explain=args.explain or ())
    print(printer.summary(), file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from jfwatch import log

    log.configure(args.log_level)
    return _run(args)


@_with_config(runtime="all")
def _run(args: argparse.Namespace, loaded: Loaded) -> int:
    from jfwatch import log
    from jfwatch.engine.daemon import Daemon

    cfg, used, rules = loaded
    logger = log.get("jfwatch")
    logger.info("starting", config=str(used) if used else "built-in defaults",
                rules=len(rules), sources=len(cfg.sources))

    def reload() -> tuple[Config, list[Rule]]:
        new_cfg, _, new_rules = load_all(args.config, getattr(args, "rules", None), "files")
        return new_cfg, new_rules

    try:
        daemon = Daemon(cfg, rules, used, reload)
    except StateUnusable as exc:
        state = cfg.state_dir / "state.db"
        logger.error("state_unusable", path=str(state), problem=str(exc),
                     fix=f"if it is damaged, move it aside (mv {state} {state}.broken) and "
                         "start again: read offsets, bans and queued alerts start empty; "
                         "if it is read-only, give the service user write access")
        return 2
    except OSError as exc:
        logger.error("cannot_start", problem=str(exc))
        return 1
    except ConfigError as exc:  # found only when starting (an API key that cannot be read)
        logger.error("cannot_start", problems=exc.problems)
        return 2
    daemon.install_signals()
    return daemon.run()


@_with_config(runtime="none")
def cmd_status(args: argparse.Namespace, loaded: Loaded) -> int:
    """How the daemon is: asked over its metrics port; from the state when it is down.
    Exit 0 when it runs, 3 when it does not (as ``systemctl status``)."""
    import orjson

    cfg = loaded[0]
    status = _status_from_daemon(cfg) or _status_from_state(cfg)
    if args.output == "json":
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_status_text(status))
    return 0 if status.get("running") else 3


def _status_from_daemon(cfg: Config) -> dict[str, Any] | None:
    import urllib.request

    import orjson

    if not cfg.metrics.enabled:
        return None
    # A daemon listening on every interface is asked on the loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(  # noqa: S104 - a name compared, not bound
        cfg.metrics.listen, cfg.metrics.listen)
    url = f"http://{f'[{host}]' if ':' in host else host}:{cfg.metrics.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = orjson.loads(response.read())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("running") else None


def _status_from_state(cfg: Config) -> dict[str, Any]:
    path = cfg.state_dir / "state.db"
    status: dict[str, Any] = {"running": False, "state": str(path)}
    if not path.exists():
        return status | {"note": "no state yet: jfwatch has never run with this config"}
    store = StateStore(path, read_only=True)
    return status | {"bans_active": store.bans_active(), "outbox_waiting": store.outbox_waiting(),
                     "files": [{"path": row.path, "offset": row.offset}
                               for row in sorted(store.offsets(), key=lambda r: r.path)]}


def _status_text(status: dict[str, Any]) -> str:
    if status.get("running"):
        head = f"jfwatch is running (pid {status['pid']}): " + \
            ("healthy" if status["healthy"] else f"NOT healthy: {status['health']}")
    else:
        head = f"jfwatch is not running (from the state {status['state']})"
    lines = [head]
    if status.get("note"):
        return "\n".join([*lines, status["note"]])
    for src in status.get("sources", []):
        state = "readable" if src["readable"] else f"NOT readable: {src['problem']}"
        lines.append(f"source {src['path']} ({src['format']}): {state}, "
                     f"{len(src['files'])} file(s) followed"
                     + (f", {src['skipped']} beyond max_open_files" if src["skipped"] else ""))
    for f in status.get("files", []):
        lag = f", {f['lag_bytes']} bytes behind" if "lag_bytes" in f else ""
        lines.append(f"  {f['path']}: offset {f['offset']}{lag}")
    for api in status.get("activity_logs", []):
        state = "answering" if api["readable"] else f"NOT answering: {api['problem']}"
        lines.append(f"activity log {api['name']} ({api['url']}): {state}, "
                     f"last entry {api['last_id']}")
    lines.append(f"bans active: {status.get('bans_active', 0)}; alerts waiting to be sent: "
                 f"{status.get('outbox_waiting', 0)}")
    for target in status.get("failing_targets", []):
        lines.append(f"  {target['target']}: {target['waiting']} waiting, last error: "
                     f"{target['last_error']}")
    return "\n".join(lines)


@_with_config(runtime="files")
def cmd_notify_test(args: argparse.Namespace, loaded: Loaded) -> int:
    from jfwatch.actions.notify import Outbox

    cfg, _, _ = loaded
    outbox = Outbox(StateStore(":memory:"), cfg.notify, cfg.server_name,
                    tz=ZoneInfo(cfg.timezone))
    if not outbox.enabled:
        print("no notification targets configured (notify.urls or notify.config_file)")
        return 1
    results = outbox.test()
    for name, ok, reason in results:
        print(f"{name}: delivered" if ok else f"{name}: FAILED: {reason}")
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from jfwatch.engine.demo import run_demo

    return run_demo(keep=args.keep, port=args.port, pace=args.pace)
