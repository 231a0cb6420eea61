"""
Each shipped rule has a replay fixture (tests/golden/rules/<rule>/): a log, the alerts
it must raise and those it must not.  A rule without a fixture fails the suite.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert, Ban, Unban
from jfwatch.detect.rules import load_rules, shipped_rules_dir
from jfwatch.engine.oneshot import replay
from jfwatch.enrich.shared_bans import SharedBans

from conftest import ROOT
from mmdb import write_db

FIXTURES = ROOT / "tests" / "golden" / "rules"
SHIPPED = sorted(p.stem for p in shipped_rules_dir().glob("*.yaml"))


def _matches(alert: Alert, want: dict[str, Any]) -> bool:
    return all(getattr(alert, k) == v for k, v in want.items())


@pytest.mark.parametrize("name", SHIPPED)
def test_rule_fixture(name: str, tmp_path: Path) -> None:
    """The fixture's logs (every ``*.log``, each in its own format: a proxy's beside
    Jellyfin's) raise every expected alert and none of the forbidden ones.  A fixture's
    ``geo`` (network -> place) becomes a real City database for its replay; its
    ``config`` is the config it is replayed with."""
    case_dir = FIXTURES / name
    assert (case_dir / "case.yaml").exists(), f"rule {name} has no replay fixture"
    case = yaml.safe_load((case_dir / "case.yaml").read_text())
    rules = load_rules([])
    settings = dict(case.get("config", {}))
    if "geo" in case:
        db = write_db(tmp_path / "city.mmdb", case["geo"])
        settings["geo"] = {"mmdb": [str(db)]}
    cfg = Config.model_validate(settings)
    inputs = sorted(str(p) for p in case_dir.glob("*.log"))
    enrichers = []
    if "crowdsec_decisions" in case:  # what a LAPI's decisions stream would answer
        shared = SharedBans("http://127.0.0.1:9", "unused")
        shared.apply({"new": case["crowdsec_decisions"], "deleted": None}, startup=True)
        enrichers.append(shared)
    alerts = [d for d in replay(inputs, cfg, rules, enrichers=enrichers).decisions
              if isinstance(d, Alert)]
    for want in case["must"]:
        assert want["rule"] == name
        assert any(_matches(a, want) for a in alerts), f"missing {want}; got {alerts}"
    for unwanted in case["must_not"]:
        assert not any(_matches(a, unwanted) for a in alerts), f"unexpected {unwanted}"


def test_rule_names_equal_file_names() -> None:
    """One rule per file, named like its file (override-by-name relies on it)."""
    for path in shipped_rules_dir().glob("*.yaml"):
        rule = yaml.safe_load(path.read_text())
        assert path.stem == rule["name"]


def test_no_orphan_fixtures() -> None:
    """Every fixture directory belongs to a shipped rule."""
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == SHIPPED


def _as_json(decisions: list[Any]) -> list[str]:
    return [orjson.dumps(d.to_json(), option=orjson.OPT_SORT_KEYS).decode() for d in decisions]


def _days_of_attacks(path: Path) -> Path:
    """Bursts over four days: bans, expiries, a repeat offender's escalated ban (back
    within the day Fail2Ban remembers its bans), one back after it forgot them."""
    um = "Jellyfin.Server.Implementations.Users.UserManager"
    lines = []
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for days, host in ((0, 1), (0.5, 2), (0.75, 1), (3, 3), (4, 1)):  # .1 comes back
        t = start + timedelta(days=days)
        for i in range(9):
            t += timedelta(seconds=20)
            lines.append(f"[{t:%Y-%m-%d %H:%M:%S}.000 +00:00] [INF] [7] {um}: Authentication "
                         f'request for "user{i}" has been denied (IP: "198.51.100.{host}").')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", [*SHIPPED, "days"])
def test_replay_state_in_memory_equals_state_file(name: str, tmp_path: Path) -> None:
    """A replay's throw-away state (dicts) decides exactly as the SQLite state file."""
    logs = [str(_days_of_attacks(tmp_path / "log_20260301.log"))] if name == "days" else \
        sorted(str(p) for p in (FIXTURES / name).glob("*.log"))
    rules = load_rules([])
    in_memory = replay(logs, Config(), rules).decisions
    in_file = replay(logs, Config(), rules, state=tmp_path / "s.db").decisions
    assert _as_json(in_memory) == _as_json(in_file)
    if name == "days":
        assert any(isinstance(d, Unban) for d in in_memory), "no ban expired"
        assert any(isinstance(d, Ban) and d.level > 0 for d in in_memory), "no escalation"
