"""A real CrowdSec Local API for tests: Debian's ``crowdsec`` run as the LAPI only
(``-no-cs``), on 127.0.0.1 and a free port, with its own config and SQLite database in a
temp directory; a machine for jfwatch, one for cscli, and a bouncer registered by cscli."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import require_tool
from http_receiver import free_port

MACHINE_PASSWORD = "jfwatch-test-Passw0rd-1234567890"
BOUNCER_KEY = "jfwatchtestbouncerkey0123456789"


class Lapi:
    def __init__(self, work: Path) -> None:
        self.crowdsec = require_tool("crowdsec")
        self.cscli = require_tool("cscli")
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for d in ("data", "hub", "notifications"):
            (work / d).mkdir(parents=True, exist_ok=True)
        self.config = work / "config.yaml"
        self.config.write_text(f"""\
common: {{daemonize: false, log_media: stdout, log_level: info, working_dir: .}}
config_paths:
  config_dir: {work}/
  data_dir: {work}/data/
  simulation_path: {work}/simulation.yaml
  hub_dir: {work}/hub/
  index_path: {work}/hub/.index.json
  notification_dir: {work}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service: {{acquisition_path: {work}/acquis.yaml}}
cscli: {{output: human}}
db_config: {{log_level: info, type: sqlite, db_path: {work}/data/crowdsec.db, use_wal: true}}
plugin_config: {{user: nobody, group: nogroup}}
api:
  client: {{credentials_path: {work}/cscli-credentials.yaml}}
  server:
    log_level: info
    listen_uri: 127.0.0.1:{self.port}
    profiles_path: {work}/profiles.yaml
    trusted_ips: ["127.0.0.1", "::1"]
prometheus: {{enabled: false}}
""")
        (work / "simulation.yaml").write_text("simulation: off\n")
        (work / "profiles.yaml").write_text(
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && "
            "Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\n"
            "on_success: break\n")
        self.credentials = work / "jfwatch-credentials.yaml"
        self._cscli("machines", "add", "jfwatch", "--password", MACHINE_PASSWORD,
                    "-f", str(self.credentials), "--url", self.url)
        self._cscli("machines", "add", "cscli", "--auto", "-f",
                    str(work / "cscli-credentials.yaml"), "--url", self.url)
        self._cscli("bouncers", "add", "test-bouncer", "-k", BOUNCER_KEY)
        self.bouncer_key_file = work / "bouncer.key"
        self.bouncer_key_file.write_text(BOUNCER_KEY + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / "lapi.log"

    def _cscli(self, *args: str) -> str:
        done = subprocess.run([self.cscli, "-c", str(self.config), *args], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(f"cscli {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start(self) -> Lapi:
        self.proc = subprocess.Popen([self.crowdsec, "-c", str(self.config), "-no-cs"],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"crowdsec exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        raise AssertionError("the LAPI did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def decisions(self) -> list[dict[str, Any]]:
        """``cscli decisions list -a -o json``: the active decisions of every alert."""
        out = self._cscli("decisions", "list", "-a", "-o", "json")  # -a: every origin
        alerts = json.loads(out) if out.strip() else None
        return [d for a in alerts or [] for d in a.get("decisions") or []]

    def add_decision(self, ip: str, duration: str = "1h") -> None:
        self._cscli("decisions", "add", "--ip", ip, "--duration", duration,
                    "--reason", "another host")

    def bouncer_view(self, ip: str) -> list[dict[str, Any]]:
        """What a bouncer gets for ``ip`` (``GET /v1/decisions``)."""
        request = urllib.request.Request(f"{self.url}/v1/decisions?ip={ip}",
                                         headers={"X-Api-Key": BOUNCER_KEY})
        with urllib.request.urlopen(request, timeout=10) as answer:
            found = json.loads(answer.read() or b"null")
        return found or []


def seconds(go_duration: str) -> float:
    """A Go duration as LAPI prints it (``3h59m58.1s``) in seconds."""
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    i = 0
    while i < len(go_duration):
        c = go_duration[i]
        if c.isdigit() or c in ".-":
            number += c
        elif go_duration[i:i + 2] == "ms":
            total += float(number) / 1000
            number = ""
            i += 1
        elif c in units:
            total += float(number) * units[c]
            number = ""
        i += 1
    return total
