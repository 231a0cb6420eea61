"""``jfwatch check-config``: exit 0 when valid, 2 with every problem named by file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jfwatch", "check-config", *args],
                          capture_output=True, text=True, check=False, timeout=60)


def test_defaults_are_valid() -> None:
    result = _check()
    assert result.returncode == 0, result.stderr
    assert "rule(s) enabled" in result.stdout


def test_all_errors_reported_with_file_and_line(tmp_path: Path) -> None:
    """Bad config and bad rule files: every problem at once, with file:line and field."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "bad.yaml").write_text("name: bad\ndescription: a bad rule\ntype: threshold\n"
                                    "threshold: zero\nwindow: 10 parsecs\ncolour: red\n")
    (rules / "broken.yaml").write_text("name: ok\ndescription: [unclosed\n")
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text(f"timezone: Mars/Olympus\nrules_dirs: [{rules}]\nallow: [not-a-net]\n"
                   "notify:\n  urls: ['tgram://123:SECRETTOKEN/456']\n  bogus: 1\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    err = result.stderr
    assert f"{cfg}:1: timezone" in err
    assert f"{cfg}:3: allow" in err
    assert f"{cfg}:6: notify.bogus: unknown key" in err
    assert f"{rules / 'bad.yaml'}:4: threshold" in err
    assert f"{rules / 'bad.yaml'}:5: window" in err
    assert f"{rules / 'bad.yaml'}:6: colour: unknown key" in err
    assert f"{rules / 'broken.yaml'}:3: invalid YAML" in err
    assert "SECRETTOKEN" not in err + result.stdout


def test_user_rule_overrides_and_disables(tmp_path: Path) -> None:
    """A user file with a shipped rule's name replaces it; enabled: false turns it off."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "admin-targeted.yaml").write_text(
        "name: admin-targeted\ndescription: turned off\ntype: trigger\nenabled: false\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"rules_dirs: [{rules}]\n")
    before = _check().stdout
    after = _check("--config", str(cfg)).stdout
    count = lambda s: int(s.split(" rule(s)")[0].rsplit(" ", 1)[1])  # noqa: E731
    assert count(after) == count(before) - 1
