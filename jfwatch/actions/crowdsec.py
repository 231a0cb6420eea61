"""
The ``crowdsec`` enforcer: bans pushed to a CrowdSec Local API (LAPI) as alerts with one
decision each, the way ``cscli decisions add`` does it, so that every bouncer of that
LAPI (nftables, nginx, Traefik, Caddy, Cloudflare, on any host) enforces them for their
exact duration.

jfwatch logs in as a machine (``cscli machines add jfwatch --auto -f <file>`` writes the
credentials file: url, login, password) and keeps the JWT until shortly before it
expires.  Each pushed alert's message carries ``(ref <server>/<n>)``: after a crash
between the push and its record, the ref is looked up among the address's alerts, so a
ban is pushed once.  An unban deletes the decisions of the alerts jfwatch pushed for the
address, never another host's.  (Reading the LAPI's decisions, with a bouncer key, is
``enrich.shared_bans``.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from jfwatch.config.yaml_lines import load_yaml

SCENARIO_PREFIX = "jfwatch/"
TOKEN_MARGIN = 60.0  # seconds before its expiry a JWT is renewed


class LapiError(Exception):
    """The LAPI could not be reached or refused; the message holds no secret."""


def read_credentials(path: Path) -> tuple[str, str, str]:
    """url, machine id and password from a ``cscli machines add -f`` file."""
    try:
        data = load_yaml(path)[0]  # the size and alias guards of every YAML jfwatch reads
    except ValueError as exc:
        raise LapiError(f"cannot read the credentials file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k)
                                             for k in ("url", "login", "password")):
        raise LapiError(f"the credentials file {path} needs url, login and password "
                        "(cscli machines add jfwatch --auto -f <file> writes them)")
    return data["url"], data["login"], data["password"]


def go_duration(seconds: float) -> str:
    """A duration as Go parses it (what LAPI expects)."""
    return f"{max(1, round(seconds))}s"


class LapiClient:
    def __init__(self, url: str, machine_id: str, password: str, *, timeout: float = 10.0,
                 origin: str = "crowdsec") -> None:
        """``origin`` of the decisions pushed: ``crowdsec`` (a machine's detection, which
        ``cscli decisions list`` shows on every version) or ``jfwatch`` (told apart with
        ``--origin jfwatch``, but CrowdSec 1.4 lists it only with ``-a``)."""
        self.origin = origin
        self.machine_id = machine_id
        self._password = password
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                  follow_redirects=False)
        self._token: str | None = None
        self._token_until = 0.0

    def close(self) -> None:
        self._http.close()

    # -- machine side (JWT) ----------------------------------------------------------
    def login(self) -> str:
        if self._token is not None and time.time() < self._token_until - TOKEN_MARGIN:
            return self._token
        doc = self._call("POST", "/v1/watchers/login", auth=False, json={
            "machine_id": self.machine_id, "password": self._password, "scenarios": []})
        token, expire = (doc.get("token"), doc.get("expire")) if isinstance(doc, dict) \
            else (None, None)
        if not isinstance(token, str):
            raise LapiError("the LAPI answered the login without a token")
        self._token = token
        try:
            until = datetime.fromisoformat(str(expire).replace("Z", "+00:00")).timestamp()
        except ValueError:
            until = time.time() + 300  # unknown: renew every five minutes
        self._token_until = until
        return token

    def push_ban(self, ip: str, rule: str, until: datetime, ref: str, now: datetime) -> int:
        """One alert with one ban decision lasting until ``until``; returns its id.  A
        network (an IPv6 prefix banned whole) is a decision of scope ``Range``, which every
        bouncer matches against the addresses inside it."""
        stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        scenario = SCENARIO_PREFIX + rule
        scope = _scope(ip)
        source = {"scope": scope, "value": ip, "range": ip} if scope == "Range" else \
            {"scope": scope, "value": ip, "ip": ip}
        alert = {
            "scenario": scenario, "scenario_hash": "", "scenario_version": "",
            "message": f"jfwatch: {rule} banned {ip} until "
                       f"{until.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} (ref {ref})",
            "events_count": 1, "start_at": stamp, "stop_at": stamp, "capacity": 0,
            "leakspeed": "0", "simulated": False, "events": [],
            "source": source,
            "decisions": [{"origin": self.origin, "type": "ban", "scope": scope, "value": ip,
                           "duration": go_duration((until - now).total_seconds()),
                           "scenario": scenario}],
            "labels": None,
        }
        ids = self._call("POST", "/v1/alerts", json=[alert])
        if not isinstance(ids, list) or not ids:
            raise LapiError("the LAPI accepted the alert without an id")
        return int(ids[0])

    def find_pushed(self, ip: str, ref: str) -> int | None:
        """The id of an alert pushed for ``ip`` with ``ref`` (after a crash), or None."""
        alerts = self._call("GET", "/v1/alerts",
                            params={"range" if _scope(ip) == "Range" else "ip": ip})
        for alert in alerts or []:
            if isinstance(alert, dict) and f"(ref {ref})" in str(alert.get("message", "")):
                return int(alert["id"])
        return None

    def delete_decisions(self, alert_ids: list[int]) -> int:
        """Delete the decisions of these alerts (jfwatch's own); how many went."""
        deleted = 0
        for alert_id in alert_ids:
            try:
                alert = self._call("GET", f"/v1/alerts/{alert_id}")
            except LapiError as exc:
                if "HTTP 404" in str(exc):
                    continue  # flushed by the LAPI: nothing left to delete
                raise
            for decision in (alert or {}).get("decisions") or []:
                answer = self._call("DELETE", f"/v1/decisions/{int(decision['id'])}")
                deleted += int((answer or {}).get("nbDeleted", 0))
        return deleted

    # -- bouncer side (API key) ------------------------------------------------------
    def _call(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        for attempt in (1, 2):
            if auth:
                headers["Authorization"] = f"Bearer {self.login()}"
            try:
                answer = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TimeoutException:
                raise LapiError("the LAPI did not answer in time") from None
            except httpx.HTTPError as exc:
                raise LapiError(f"cannot reach the LAPI: {type(exc).__name__}") from None
            if answer.status_code != 401 or not auth or attempt == 2:
                break
            self._token = None  # expired early or revoked (a LAPI restart): log in again
        if answer.status_code >= 400:
            raise LapiError(f"HTTP {answer.status_code} from {method} {path}: "
                            f"{answer.text[:200]}")
        if not answer.content:
            return None
        try:
            return orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            raise LapiError(f"malformed answer from {path}: not JSON") from None


def _scope(ip: str) -> str:
    return "Range" if "/" in ip else "Ip"


class CrowdsecEnforcer:
    """An ``enforce.Enforcer`` over a LAPI client."""

    name = "crowdsec"

    def __init__(self, client: LapiClient) -> None:
        self.client = client

    def setup(self) -> None:
        self.client.login()

    def ban(self, ip: str, rule: str, until: datetime, ref: str, now: datetime
            ) -> tuple[str, str | None]:
        alert_id = self.client.push_ban(ip, rule, until, ref, now)
        return f"alert {alert_id}, decision for {go_duration((until - now).total_seconds())}", \
            str(alert_id)

    def find(self, ip: str, ref: str) -> str | None:
        found = self.client.find_pushed(ip, ref)
        return None if found is None else str(found)

    def unban(self, ip: str, ids: list[str]) -> str:
        return f"{self.client.delete_decisions([int(i) for i in ids])} decision(s) deleted"
