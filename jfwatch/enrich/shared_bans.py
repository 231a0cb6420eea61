"""
What a CrowdSec Local API bans, as its bouncers see it: the decisions stream
(``GET /v1/decisions/stream``, a bouncer key), pulled by a thread of its own every
``interval`` into memory, so an event's address is looked up without any I/O on the
reading thread (a LAPI that hangs delays nothing).  An event from a banned address or
network carries the decisions in ``listed``; the rule ``crowdsec-banned-login`` alerts on
a successful login from one (another host's decision, a blocklist: the password may be in
an attacker's hands).

Until the first pull has answered, nothing is known and nothing is listed: ``problem``
says so (reported as the source's health).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import httpx
import orjson

from jfwatch import log
from jfwatch.events import Event, IPAddress
from jfwatch.reporting import Conditions

STREAM = "/v1/decisions/stream"
# A LAPI with a community blocklist holds tens of thousands of decisions; a hostile or
# broken one is cut off here (the answer, and what is kept).
MAX_ANSWER_BYTES = 64 << 20
MAX_DECISIONS = 500_000
# jfwatch's own bans (its scenarios): success-from-banned-address says those, from the state.
OWN_SCENARIOS = "jfwatch/"


class SharedBans(threading.Thread):
    def __init__(self, url: str, bouncer_key: str, *, interval: float = 10.0,
                 timeout: float = 10.0) -> None:
        super().__init__(name="jfwatch-shared-bans", daemon=True)
        self.interval = interval
        self.log = log.get("jfwatch.shared_bans")
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                  headers={"X-Api-Key": bouncer_key,
                                           "User-Agent": "jfwatch-bouncer"})
        self._lock = threading.Lock()
        self._addresses: dict[str, str] = {}  # address -> what bans it
        # By prefix length, network text -> what bans it: a look-up is one dict probe per
        # prefix length present, whatever the number of ranges.
        self._ranges: dict[tuple[int, int], dict[str, str]] = {}
        self._loaded = False
        self._stopping = threading.Event()
        # Why the decisions cannot be read now (None until a pull failed: a start is not
        # a fault; ``loaded`` says whether anything is known yet).
        self._conditions: Conditions[str, str] = Conditions(lambda *_: None)

    @property
    def problem(self) -> str | None:
        return self._conditions.get("lapi")

    # -- the reading thread's side ---------------------------------------------------
    def listed(self, ip: IPAddress) -> str | None:
        """What bans this address (its decisions, in words), or None."""
        with self._lock:
            found = self._addresses.get(str(ip))
            if found is not None:
                return found
            for (version, prefix), nets in self._ranges.items():
                if version == ip.version:
                    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
                    found = nets.get(str(net))
                    if found is not None:
                        return found
        return None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def enrich(self, events: Iterable[Event]) -> list[Event]:
        if not self._loaded:
            return list(events)
        out = []
        for event in events:
            if event.ip is not None and (why := self.listed(event.ip)) is not None:
                event = replace(event, listed=why)
            out.append(event)
        return out

    # -- the puller ---------------------------------------------------------------------
    def run(self) -> None:
        backoff = self.interval
        while not self._stopping.is_set():
            try:
                self.pull()
            except (httpx.HTTPError, ValueError) as exc:
                if self._conditions.report("lapi", _describe(exc)):
                    self.log.warning("crowdsec_decisions_unavailable", problem=_describe(exc),
                                     retry=f"in {backoff:.0f} s, then with backoff")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            backoff = self.interval
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._http.close()

    def pull(self) -> None:
        """One round: all active decisions the first time (and after a failure), what
        changed since the last round after that."""
        startup = not self._loaded or self.problem is not None  # after a failure: all again
        with self._http.stream("GET", STREAM, params={"startup": str(startup).lower()}) as answer:
            if answer.status_code != 200:
                raise ValueError(f"HTTP {answer.status_code} from the decisions stream"
                                 + (" (the bouncer key is refused)"
                                    if answer.status_code in (401, 403) else ""))
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError("the decisions stream answer is larger than "
                                     f"{MAX_ANSWER_BYTES >> 20} MiB")
        data = orjson.loads(body or b"null")
        if not isinstance(data, dict):
            raise ValueError("the decisions stream answered something else than decisions")
        self.apply(data, startup=startup)
        if startup:
            self.log.info("crowdsec_decisions_loaded", addresses=len(self._addresses),
                          ranges=sum(len(n) for n in self._ranges.values()))
        self._conditions.report("lapi", None)

    def apply(self, data: dict[str, Any], *, startup: bool) -> None:
        """A stream answer (``new`` and ``deleted`` lists, either may be null)."""
        with self._lock:
            if startup:
                self._addresses.clear()
                self._ranges.clear()
            for decision in data.get("deleted") or []:
                key = _key(decision)
                if key is not None:
                    self._addresses.pop(key[1], None) if key[0] is None else \
                        self._ranges.get(key[0], {}).pop(key[1], None)
            kept = len(self._addresses) + sum(len(n) for n in self._ranges.values())
            for decision in data.get("new") or []:
                key = _key(decision)
                if key is None or decision.get("type") != "ban" or kept >= MAX_DECISIONS or \
                        str(decision.get("scenario", "")).startswith(OWN_SCENARIOS):
                    continue
                why = _words(decision)
                if key[0] is None:
                    self._addresses[key[1]] = why
                else:
                    self._ranges.setdefault(key[0], {})[key[1]] = why
                kept += 1
            self._loaded = True


def _key(decision: object) -> tuple[tuple[int, int] | None, str] | None:
    """(None, address) for scope Ip, ((version, prefix), network) for scope Range, else
    None (a country, an AS, a user: not an address decision)."""
    if not isinstance(decision, dict) or not isinstance(decision.get("value"), str):
        return None
    scope = str(decision.get("scope", "")).lower()
    try:
        if scope == "ip":
            return None, str(ipaddress.ip_address(decision["value"]))
        if scope == "range":
            net = ipaddress.ip_network(decision["value"], strict=False)
            return (net.version, net.prefixlen), str(net)
    except ValueError:
        return None
    return None


def _words(decision: dict[str, Any]) -> str:
    """A decision as an alert says it: scenario (origin, time left); only printable text
    of bounded length (another host's scenario names are not ours to trust)."""
    parts = [str(decision.get(k, ""))[:120] for k in ("scenario", "origin", "duration")]
    text = f"{parts[0]} ({parts[1]}, {parts[2]} left)"
    return "".join(c if c.isprintable() else "?" for c in text)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "the LAPI did not answer in time"
    if isinstance(exc, httpx.HTTPError):
        return f"cannot reach the LAPI: {type(exc).__name__}"
    return str(exc)
