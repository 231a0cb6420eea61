"""
Rule files: one YAML rule per file, the shipped pack plus user directories.

A user file whose ``name`` equals a shipped rule replaces it; ``enabled: false`` turns
a rule off.  Unknown keys are errors, and every problem of every file is reported at
once as ``file:line: field: message``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from jfwatch.addresses import bad_networks
from jfwatch.config.durations import Duration, between
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Strict
from jfwatch.config.yaml_lines import describe, load_yaml
from jfwatch.events import EventKind

Severity = Literal["info", "low", "medium", "high", "critical"]
GroupField = Literal["ip", "user"]
# What a new_value rule remembers per group.
ValueField = Literal["ip", "user", "country", "asn"]
# Symbolic address sets filled from the config, so rules need not repeat it.
SYMBOLIC_NETS = ("@trusted_proxies", "@private", "@allow")
# A group keeps its last ``threshold`` times: the bound keeps every group small.
MAX_THRESHOLD = 10_000


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


class Match(Strict):
    """Event fields to match; lists are alternatives, fields are ANDed.  No expressions."""

    kind: list[EventKind] | None = None
    source: list[str] | None = None
    service: list[str] | None = None
    origin: list[str] | None = None
    not_origin: list[str] | None = None
    user: list[str] | None = None
    ip: list[str] | None = None
    not_ip: list[str] | None = None
    has_ip: bool | None = None
    has_user: bool | None = None
    # ISO 3166 country codes of the address (``geo``); an event whose country is unknown
    # (a private address, no data) matches neither.
    country: list[str] | None = None
    not_country: list[str] | None = None
    # Whether the address is known (a success from it within ``known_for``, before this
    # event), and whether jfwatch bans it (or its IPv6 network) now.
    known: bool | None = None
    banned: bool | None = None
    # The address (its IPv6 network) failed a login or a second factor within this time
    # before the event.
    failed_within: Annotated[Duration, between("1m", "7d")] | None = None
    # Whether a shared decision source bans the address (a CrowdSec LAPI's decisions,
    # read with ``crowdsec.bouncer_key_file``): never true without one.
    listed: bool | None = None

    @field_validator("kind", "source", "service", "origin", "not_origin", "user", "ip", "not_ip", "country",
                     "not_country", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return _as_list(value)

    @field_validator("country", "not_country")
    @classmethod
    def _codes(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        bad = [v for v in values if len(v) != 2 or not v.isascii() or not v.isalpha()]
        if bad:
            raise ValueError(f"not a two-letter country code: {', '.join(bad)}")
        return [v.upper() for v in values]

    def needs_address(self) -> bool:
        """Whether only events with an address can match."""
        return bool(self.has_ip or self.ip or self.country or self.not_country or
                    self.known is not None or self.banned is not None or self.failed_within)

    @field_validator("ip", "not_ip")
    @classmethod
    def _networks(cls, values: list[str] | None) -> list[str] | None:
        bad = bad_networks([v for v in values or [] if v not in SYMBOLIC_NETS])
        if bad:
            raise ValueError(f"not a network or one of {SYMBOLIC_NETS}: {', '.join(bad)}")
        return values


class Step(Match):
    """A sequence step: a match plus how many such events it needs."""

    count: int = Field(1, ge=1, le=MAX_THRESHOLD)


class NotifyAction(Strict):
    tags: list[str] = []


class BanAction(Strict):
    duration: Annotated[Duration, between("1s", "365d")]
    # A known address (a user logged in successfully from it within ``known_for``):
    # ``spare`` it (its failures are a forgotten or saved old password: the alert says
    # so) or ``ban`` it all the same (enumeration, injection: no household does that).
    known_addresses: Literal["spare", "ban"] = "spare"


class Actions(Strict):
    notify: NotifyAction | None = NotifyAction()
    ban: BanAction | None = None


class Rule(Strict):
    """One detection rule; see README "Rule format" for the meaning of each field."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")
    description: str = Field(min_length=3)
    type: Literal["threshold", "sequence", "new_value", "trigger", "impossible_travel",
                  "campaign"]
    enabled: bool = True
    match: Match = Match()
    group_by: list[GroupField] = ["ip"]
    threshold: int = Field(1, ge=1, le=MAX_THRESHOLD)
    window: Annotated[Duration, between("1s", "30d")] = Duration.parse("10m")
    distinct: GroupField | None = None
    first: Step | None = None
    then: Match | None = None
    field: ValueField | None = None
    # impossible_travel: two successes farther apart than this speed allows (an airliner
    # does about 900 km/h), ignoring moves shorter than min_distance_km (city data is
    # approximate, and mobile networks move addresses around a country).
    max_speed_kmh: float = Field(900.0, gt=0, le=100_000, allow_inf_nan=False)
    min_distance_km: float = Field(300.0, ge=0, le=20_000, allow_inf_nan=False)
    # campaign: many addresses, a few attempts each, across accounts, within ``window``:
    # at least min_addresses addresses and min_accounts accounts.  An address with a
    # single failure is swept into its ban only if no success comes from it within
    # ``grace`` (a one-off typo is followed by the right password).
    min_addresses: int = Field(10, ge=2, le=100_000)
    min_accounts: int = Field(5, ge=1, le=100_000)
    grace: Annotated[Duration, between("0s", "1d")] = Duration.parse("10m")
    reset_on: Match | None = None
    cooldown: Annotated[Duration, between("0s", "30d")] = Duration.parse("0s")
    severity: Severity = "medium"
    simulate: bool = False
    actions: Actions = Actions()

    @field_validator("group_by", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return _as_list(value)

    @model_validator(mode="after")
    def _type_fields(self) -> Rule:
        if self.type == "sequence" and (self.first is None or self.then is None):
            raise ValueError("a sequence rule needs both 'first' and 'then'")
        if self.type != "sequence" and (self.first is not None or self.then is not None):
            raise ValueError("'first' and 'then' belong to sequence rules only")
        if self.type == "new_value" and self.field is None:
            raise ValueError("a new_value rule needs 'field' (the value to remember per group)")
        if self.distinct is not None and self.type != "threshold":
            raise ValueError("'distinct' belongs to threshold rules only")
        travel = {"max_speed_kmh", "min_distance_km"} & self.model_fields_set
        if travel and self.type != "impossible_travel":
            raise ValueError(f"{', '.join(sorted(travel))}: impossible_travel rules only")
        campaign = {"min_addresses", "min_accounts", "grace"} & self.model_fields_set
        if campaign and self.type != "campaign":
            raise ValueError(f"{', '.join(sorted(campaign))}: campaign rules only")
        if self.type == "campaign" and self.group_by:
            raise ValueError("a campaign rule groups nothing (group_by: []): it is one "
                             "campaign across addresses and accounts")
        return self

    def needs_user(self) -> bool:
        """Whether the rule can only count events with a user (so a record that brings
        the user to an attempt that lacked one is news to it: ``attempts``)."""
        def step_needs(step: Match | None) -> bool:
            return step is not None and (step.user is not None or step.has_user is True)

        return "user" in self.group_by or self.distinct == "user" or self.field == "user" or \
            self.type == "campaign" or \
            any(step_needs(step) for step in (self.match, self.first, self.then))

    def needs_address(self) -> bool:
        """Whether the rule can only count events with an address (so a record that
        brings the address to an attempt that lacked one is news to it: ``attempts``)."""
        return "ip" in self.group_by or self.distinct == "ip" or self.type == "campaign" or \
            self.field in ("ip", "country", "asn") or self.type == "impossible_travel" or \
            self.match.needs_address() or \
            any(step is not None and step.needs_address() for step in (self.first, self.then))


def shipped_rules_dir() -> Path:
    """The rule pack: inside the installed package, else ``rules/`` of a source checkout."""
    packaged = Path(str(resources.files("jfwatch"))) / "_data" / "rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "rules"


def load_rule_file(path: Path) -> Rule:
    """Load one rule file; raise ConfigError listing every problem in it."""
    try:
        data, lines = load_yaml(path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: a rule file must be a mapping"])
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(path, lines, exc)) from exc


def load_rules(extra_dirs: list[Path], *, shipped: Path | None = None) -> list[Rule]:
    """
    Load the shipped pack, then each user directory in order (later files with the same
    name replace earlier ones); drop disabled rules.  Missing user directories are fine.
    """
    problems: list[str] = []
    by_name: dict[str, Rule] = {}
    for directory in [shipped or shipped_rules_dir(), *extra_dirs]:
        if not directory.is_dir():
            continue
        seen_here: dict[str, Path] = {}
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            try:
                rule = load_rule_file(path)
            except ConfigError as exc:
                problems += exc.problems
                continue
            if rule.name in seen_here:
                problems.append(f"{path}:1: name: {rule.name!r} is also defined in {seen_here[rule.name]}")
                continue
            seen_here[rule.name] = path
            by_name[rule.name] = rule
    if problems:
        raise ConfigError(problems)
    return [rule for rule in by_name.values() if rule.enabled]
