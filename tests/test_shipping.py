"""What ships: the wheel (rules and demo inside), the systemd unit, the container files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, require_tool

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)


@pytest.fixture(scope="module", name="installed")
def _installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel and install it into a fresh virtualenv; return its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next((work / "dist").glob("jfwatch-*.whl"))
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return bin_dir


def test_wheel_runs_check_config_and_demo(installed: Path, tmp_path: Path) -> None:
    """The rules and the demo logs are inside the wheel: both commands work from it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run([str(installed / "jfwatch"), "check-config"], capture_output=True,
                           text=True, check=False, timeout=120, cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    shipped = len(list((ROOT / "rules").glob("*.yaml")))
    assert f"{shipped} rule(s) enabled" in check.stdout
    demo = subprocess.run([str(installed / "jfwatch"), "demo", "--keep", str(tmp_path / "demo"),
                           "--pace", "0.002"], capture_output=True, text=True, check=False,
                          timeout=180, cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for rule in ("brute-force-ip", "user-enumeration", "mfa-failure-after-password",
                 "injection-attempt", "proxy-misconfigured"):
        assert f" {rule}: " in demo.stdout, demo.stdout
    # Polled from the demo's Activity Log server: where alice's new login comes from.
    assert " new-country-for-user: 133.242.0.1 (JP, user alice)" in demo.stdout, demo.stdout
    feed = (tmp_path / "demo" / "out" / "bans.log").read_text()
    assert " BAN 203.0.113.50 rule=brute-force-ip " in feed
    assert "172.18.0.2" not in feed  # the misconfigured proxy is never banned


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (with this machine's jfwatch path)."""
    analyze = require_tool("systemd-analyze")
    jfwatch = shutil.which("jfwatch") or str(Path(sys.executable).parent / "jfwatch")
    unit = (ROOT / "systemd" / "jfwatch.service").read_text()
    (tmp_path / "jfwatch.service").write_text(unit.replace("/usr/local/bin/jfwatch", jfwatch))
    result = subprocess.run([analyze, "verify", str(tmp_path / "jfwatch.service")],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    security = subprocess.run([analyze, "security", "--offline=true",
                               str(tmp_path / "jfwatch.service")],
                              capture_output=True, text=True, check=False, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level[1]) <= 1.3  # the figure the README states


def test_dockerfile_paths_exist() -> None:
    """Every file the image copies exists, and every path its config uses is created."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for part in src.split():
            assert (ROOT / part).exists(), part
    config = (ROOT / "docker" / "jfwatch.container.yml").read_text()
    mkdir = re.search(r"mkdir -p ([^&]+)", dockerfile)
    assert mkdir is not None
    created = mkdir[1].split()
    def strings(node: object) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    used = [v for v in strings(yaml.safe_load(config)) if v.startswith("/")]
    assert used
    for path in used:
        assert any(path == d or path.startswith(d + "/") for d in created), path
    assert "HEALTHCHECK" in dockerfile and 'CMD ["python"' in dockerfile
    assert "/health" in (ROOT / "docker" / "healthcheck.py").read_text()
    assert re.search(r"^USER \d+:\d+$", dockerfile, re.M)  # numeric: runAsNonRoot accepts it


def test_container_entrypoint_checks_then_runs(tmp_path: Path) -> None:
    """The entrypoint validates the config, then execs the daemon (which stops on SIGTERM)."""
    config = (ROOT / "docker" / "jfwatch.container.yml").read_text()
    for path in ("/var/lib/jfwatch", "/var/log/jfwatch", "/etc/jfwatch", "/logs"):
        config = config.replace(path, str(tmp_path / path.strip("/").replace("/", "_")))
    config = config.replace("listen: 0.0.0.0", "listen: 127.0.0.1").replace("port: 9725", "port: 0")
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text(config)
    env = dict(os.environ, JFWATCH_CONFIG=str(cfg),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["sh", str(ROOT / "docker" / "entrypoint.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "config OK" in out and "watching" in out


def test_example_config_is_valid_and_complete() -> None:
    """contrib/jfwatch.example.yml validates and mentions every top-level option."""
    from jfwatch.config.model import Config

    example = ROOT / "contrib" / "jfwatch.example.yml"
    result = subprocess.run([sys.executable, "-m", "jfwatch", "check-config", "--config",
                             str(example)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    text = example.read_text()
    for field in Config.model_fields:
        assert re.search(rf"^{field}:", text, re.MULTILINE), field


def test_hadolint_accepts_the_dockerfile() -> None:
    """No warning from hadolint: pinned build tools, a numeric user, exec-form checks."""
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_dockerignore_keeps_only_what_the_image_builds_from() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("jfwatch", "rules", "demo", "docker", "pyproject.toml", "README.md"):
        assert needed not in ignored
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_unit_does_not_restart_on_a_config_error_nor_need_a_jellyfin_group() -> None:
    unit = (ROOT / "systemd" / "jfwatch.service").read_text()
    assert "RestartPreventExitStatus=2" in unit
    groups = re.search(r"^SupplementaryGroups=(.*)$", unit, re.M)
    assert groups is not None and "jellyfin" not in groups[1].split()
