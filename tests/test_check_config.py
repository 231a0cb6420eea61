"""``jfwatch check-config``: exit 0 when valid, 2 with every problem named by file and line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jfwatch.config.errors import ConfigError
from jfwatch.config.yaml_lines import YamlRefused, guard_yaml
from jfwatch.detect.rules import load_rules

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)


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


def test_out_of_range_numbers_are_file_line_errors(tmp_path: Path) -> None:
    """Numbers that once passed and then crashed the daemon (OverflowError, a traceback
    with exit 1) are errors with file:line and exit 2, all of them at once."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "huge.yaml").write_text(
        "name: huge\ndescription: hostile numbers\ntype: threshold\n"
        "threshold: 99999999999999999999999999\nwindow: 99999999999999w\ncooldown: -1s\n"
        "actions:\n  ban: {duration: 1e400s}\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"rules_dirs: [{rules}]\nban: {{max: 99999999999999w, factor: .inf}}\n"
                   "max_groups: 10000000000\nmax_line: 0\nfuture_tolerance: 30d\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err
    for where in (f"{cfg}:2: ban.max", f"{cfg}:2: ban.factor", f"{cfg}:3: max_groups",
                  f"{cfg}:4: max_line", f"{cfg}:5: future_tolerance",
                  f"{rules / 'huge.yaml'}:4: threshold", f"{rules / 'huge.yaml'}:5: window",
                  f"{rules / 'huge.yaml'}:6: cooldown",
                  f"{rules / 'huge.yaml'}:8: actions.ban.duration"):
        assert where in err, (where, err)


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """A 283-byte "billion laughs" file in a rules directory is refused in under a
    second, naming the line of the first alias; so is an alias in the config."""
    rules = tmp_path / "rules.d"
    rules.mkdir()
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghij", "bcdefghijk", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (rules / "bomb.yaml").write_text("\n".join(levels) + "\n")
    began = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        load_rules([rules])
    assert time.monotonic() - began < 1
    assert any("bomb.yaml:2: YAML aliases" in p for p in refused.value.problems)
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"rules_dirs: [{rules}]\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert f"{rules / 'bomb.yaml'}:2: YAML aliases" in result.stderr
    cfg.write_text("allow: &nets [10.0.0.0/8]\ntrusted_proxies: *nets\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert f"{cfg}:2: YAML aliases" in result.stderr


@pytest.mark.parametrize("name", ["apprise.yml", "apprise.txt"])
def test_an_alias_bomb_in_the_apprise_config_file_is_refused_at_once(tmp_path: Path,
                                                                     name: str) -> None:
    """Apprise's config file (353 bytes, an alias bomb Apprise itself would expand to
    gigabytes) passes the guards of every YAML jfwatch reads before Apprise sees it:
    check-config refuses it in under a second, whatever the file's suffix (Apprise
    detects YAML by content), and so does the daemon."""
    levels = ['urls: &a ["json://127.0.0.1:9/","json://127.0.0.1:9/","json://127.0.0.1:9/"]']
    for prev, label in zip("abcdefghij", "bcdefghijk", strict=True):
        levels.append(f"{label}: &{label} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / name
    bomb.write_text("\n".join(levels) + "\n")
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nnotify:\n  config_file: {bomb}\n")
    began = time.monotonic()
    with pytest.raises(YamlRefused):
        guard_yaml(bomb)
    assert time.monotonic() - began < 1
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert f"{bomb}:2: YAML aliases" in result.stderr and "notify.config_file" in result.stderr
    run = subprocess.run([sys.executable, "-m", "jfwatch", "run", "--config", str(cfg)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 2 and "YAML aliases" in run.stderr


def test_an_apprise_url_that_cannot_load_is_an_error_without_its_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text("notify:\n  urls:\n    - 'json://127.0.0.1:9/'\n    - 'tgram://SECRETTOKEN/123'\n"
                   "    - 'nosuchservice://user:SECRETPW@host'\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert f"{cfg}:4: notify.urls.1: " in result.stderr and "tgram://" in result.stderr
    assert f"{cfg}:5: notify.urls.2: " in result.stderr and "nosuchservice://" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr


def test_an_apprise_config_file_entry_that_cannot_load_is_an_error(tmp_path: Path) -> None:
    apprise_file = tmp_path / "apprise.yml"
    apprise_file.write_text("urls:\n  - json://127.0.0.1:9/:\n      tag: critical\n"
                            "  - tgram://SECRETTOKEN/1\n  - ntfy://127.0.0.1/topic\n")
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text(f"notify:\n  config_file: {apprise_file}\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert "notify.config_file" in result.stderr and "entry 2 (tgram://)" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    apprise_file.write_text("critical=json://127.0.0.1:9/\nntfy://127.0.0.1/topic\n")
    apprise_file.rename(tmp_path / "apprise.txt")
    cfg.write_text(f"notify:\n  config_file: {tmp_path / 'apprise.txt'}\n")
    assert _check("--config", str(cfg)).returncode == 0


def test_unreadable_api_key_and_lapi_credentials_are_named(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are read when the daemon starts: check-config reads them too, names where it
    looked, never what it found."""
    monkeypatch.delenv("JFWATCH_TEST_UNSET_KEY", raising=False)
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text("crowdsec: {enabled: true, credentials_file: missing-credentials.yaml}\n"
                   "jellyfin_api:\n  - {url: 'http://127.0.0.1:8096', "
                   "api_key_env: JFWATCH_TEST_UNSET_KEY}\n"
                   "  - {url: 'http://127.0.0.1:8097', name: second, api_key_file: key}\n")
    (tmp_path / "key").write_text("")
    result = _check("--config", str(cfg))
    assert result.returncode == 2
    assert "JFWATCH_TEST_UNSET_KEY" in result.stderr and "is empty" in result.stderr
    assert "missing-credentials.yaml" in result.stderr
    assert "3 problem(s)" in result.stderr
    (tmp_path / "key").write_text("0123456789abcdef\n")
    cfg.write_text("crowdsec: {enabled: false}\nnftables: {enabled: true}\n"
                   "jellyfin_api:\n  - {url: 'http://127.0.0.1:8097', api_key_file: key}\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "1 Activity Log source(s)" in result.stdout
    assert "bans enforced by fail2ban, nftables" in result.stdout
    assert "0123456789abcdef" not in result.stdout + result.stderr


def test_an_api_key_sent_in_clear_text_or_unverified_is_warned_about(tmp_path: Path) -> None:
    """Plain HTTP to another host and verify_tls: false expose an administrator's key:
    check-config warns (the config is still valid); HTTP to a container name, the LAN
    or this host does not."""
    key = tmp_path / "jf.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text(f"state_dir: {tmp_path}\njellyfin_api:\n"
                   f"  - {{url: 'http://media.example.net:8096', api_key_file: {key}, "
                   "name: far}\n"
                   f"  - {{url: 'https://media.example.net', api_key_file: {key}, "
                   "verify_tls: false, name: unverified}\n"
                   f"  - {{url: 'http://jellyfin:8096', api_key_file: {key}, name: container}}\n"
                   f"  - {{url: 'http://192.168.1.20:8096', api_key_file: {key}, name: lan}}\n")
    result = _check("--config", str(cfg))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert "jellyfin_api far: http://media.example.net:8096 is plain HTTP" in warnings[0]
    assert "jellyfin_api unverified: verify_tls is off" in warnings[1]
