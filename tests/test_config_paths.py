"""Every path in a config file is relative to the file, by one mechanism, wherever the
command runs: systemd starts the daemon in ``/``, an admin runs check-config in /etc/jfwatch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jfwatch.actions.notify import Outbox
from jfwatch.config.model import load_config
from jfwatch.engine.commands import load_all
from jfwatch.state import StateStore

CONFIG = """\
state_dir: state
rules_dirs: [rules.d]
events_file: out/events.jsonl
sources:
  - path: logs/log_*.log
jellyfin_api:
  - url: http://127.0.0.1:8096
    api_key_file: keys/jellyfin.key
ban_feed:
  path: feed/bans.log
  fail2ban_socket: run/fail2ban.sock
crowdsec:
  credentials_file: keys/lapi.yaml
  bouncer_key_file: keys/bouncer.key
notify:
  config_file: apprise.yml
geo:
  mmdb: [geo/city.mmdb]
"""


def _write(folder: Path) -> Path:
    folder.mkdir()
    (folder / "apprise.yml").write_text("urls:\n  - json://127.0.0.1:9/\n")
    (folder / "keys").mkdir()
    (folder / "keys" / "jellyfin.key").write_text("0123456789abcdef0123456789abcdef\n")
    cfg = folder / "jfwatch.yml"
    cfg.write_text(CONFIG)
    return cfg


def test_every_relative_path_is_taken_from_the_config_folder_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = _write(tmp_path / "etc")
    monkeypatch.chdir("/")
    cfg, _ = load_config(here)
    base = here.parent
    assert cfg.state_dir == base / "state"
    assert cfg.rules_dirs == [base / "rules.d"]
    assert cfg.events_file == base / "out/events.jsonl"
    assert cfg.sources[0].path == str(base / "logs/log_*.log")
    assert cfg.jellyfin_api[0].api_key_file == base / "keys/jellyfin.key"
    assert (cfg.ban_feed.path, cfg.ban_feed.list_path, cfg.ban_feed.fail2ban_socket) == (
        base / "feed/bans.log", base / "feed/banned.txt", base / "run/fail2ban.sock")
    assert (cfg.crowdsec.credentials_file, cfg.crowdsec.bouncer_key_file) == (
        base / "keys/lapi.yaml", base / "keys/bouncer.key")
    assert cfg.notify.config_file == base / "apprise.yml"
    assert cfg.geo.mmdb == [base / "geo/city.mmdb"]
    # ... and the file is used from there: the Apprise file's one target is loaded.
    outbox = Outbox(StateStore(":memory:"), cfg.notify, "test")
    assert len(outbox.targets) == 1


def test_a_config_named_relative_to_the_cwd_gives_absolute_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "etc")
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config(Path("etc/jfwatch.yml"))
    assert cfg.notify.config_file == tmp_path / "etc" / "apprise.yml"
    assert cfg.state_dir.is_absolute()


def test_runtime_checks_name_the_option_by_file_and_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that do not open are found by the one runtime check, located in the config."""
    here = _write(tmp_path / "etc")
    (here.parent / "apprise.yml").unlink()
    monkeypatch.chdir("/")
    with pytest.raises(Exception) as caught:
        load_all(here, None, "files")
    problems = caught.value.problems  # type: ignore[attr-defined]
    assert any(p.startswith(f"{here}:16: notify.config_file: cannot read") for p in problems)
    assert any(p.startswith(f"{here}:18: geo.mmdb: cannot open") for p in problems)
    # Not asked for: the same config loads for commands that do not use those files.
    assert load_all(here, None, "none")[0].notify.config_file == here.parent / "apprise.yml"


@pytest.mark.system
def test_check_config_from_the_root_directory(tmp_path: Path) -> None:
    here = _write(tmp_path / "etc")
    here.write_text(CONFIG.replace("geo:\n  mmdb: [geo/city.mmdb]\n", "")
                    .replace("crowdsec:\n  credentials_file: keys/lapi.yaml\n"
                             "  bouncer_key_file: keys/bouncer.key\n", ""))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "jfwatch", "check-config", "--config",
                             str(here)], cwd="/", capture_output=True, text=True, check=False,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
