"""
Each shipped rule has a replay fixture (tests/golden/rules/<rule>/): a log, the alerts
it must raise and those it must not.  A rule without a fixture fails the suite.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from jfwatch.commands import replay
from jfwatch.config import Config
from jfwatch.decisions import Alert
from jfwatch.lines import LineStats
from jfwatch.rules import load_rules, shipped_rules_dir

from conftest import ROOT

FIXTURES = ROOT / "tests" / "golden" / "rules"
SHIPPED = sorted(p.stem for p in shipped_rules_dir().glob("*.yaml"))


def _matches(alert: Alert, want: dict[str, Any]) -> bool:
    return all(getattr(alert, k) == v for k, v in want.items())


@pytest.mark.parametrize("name", SHIPPED)
def test_rule_fixture(name: str) -> None:
    """The fixture's log raises every expected alert and none of the forbidden ones."""
    case_dir = FIXTURES / name
    assert (case_dir / "case.yaml").exists(), f"rule {name} has no replay fixture"
    case = yaml.safe_load((case_dir / "case.yaml").read_text())
    rules = load_rules([])
    alerts = [d for d in replay([str(case_dir / "input.log")], Config(), rules, "auto", LineStats())
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
