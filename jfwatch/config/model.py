"""The daemon's configuration file (YAML, validated by pydantic) and its built-in defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jfwatch.addresses import DEFAULT_ALLOW, bad_networks
from jfwatch.config.durations import Duration, between
from jfwatch.config.errors import ConfigError
from jfwatch.config.yaml_lines import describe, load_yaml, locate
from jfwatch.formats import FORMATS

DEFAULT_CONFIG = Path("/etc/jfwatch/jfwatch.yml")
DEFAULT_TIMEZONE = "UTC"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _from_config_dir(value: object, info: ValidationInfo) -> object:
    """A relative path in a config file is relative to the file's directory, wherever
    the command runs (systemd starts the daemon in /): the one place paths are resolved."""
    base = (info.context or {}).get("config_dir")
    if base is not None and isinstance(value, str) and value and not os.path.isabs(value):
        return os.path.join(base, value)
    return value


# Every field naming a file or directory is one of these two.
ConfigPath = Annotated[Path, BeforeValidator(_from_config_dir)]
ConfigGlob = Annotated[str, BeforeValidator(_from_config_dir)]


class SourceConfig(Strict):
    """One log to follow: a path or a glob inside one directory."""

    path: ConfigGlob
    # What metrics, logs and `status` call it (the path when not given).
    name: str | None = Field(None, pattern=r"^[\w.@/ -]{1,64}$")
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    timezone: str | None = None
    start: Literal["end", "beginning"] = "end"
    watch_mode: Literal["auto", "inotify", "poll"] = "auto"
    quoting: Literal["auto", "quoted", "raw"] = "auto"
    proxy_token_failures: bool = False

    @property
    def label(self) -> str:
        return self.name or self.path


CIDR = Annotated[str, Field(min_length=2)]


class BanFeedConfig(Strict):
    """
    Where bans go and who enforces them.  ``enforcer: fail2ban``: Fail2Ban's jail reads
    the feed and decides how long a ban lasts (it ignores the line's duration), so every
    ban lasts the jail's ``bantime``, times ``ban.factor`` per repeat offence, up to
    ``ban.max``, and that is what alerts and ``bans list`` say; keep these in step with
    the jail.  ``enforcer: list``: something else enforces the banned list (nginx deny,
    ipset) for each rule's own duration.
    """

    enabled: bool = True
    path: ConfigPath = Path("/var/log/jfwatch/bans.log")
    list_path: ConfigPath | None = Path("/var/log/jfwatch/banned.txt")
    enforcer: Literal["fail2ban", "list"] = "fail2ban"
    jail: str = Field("jfwatch", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The jail's bantime, bantime.factor and bantime.maxtime, and the server's dbpurgeage
    # (Fail2Ban forgets an address's earlier bans after it): how long Fail2Ban bans, by its
    # formula bantime x 2^n x factor for an address banned n times before, at most maxtime.
    jail_bantime: Annotated[Duration, between("1s", "365d")] = Duration.parse("4h")
    jail_factor: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    jail_maxtime: Annotated[Duration, between("1s", "3650d")] = Duration.parse("4w")
    fail2ban_dbpurgeage: Annotated[Duration, between("1m", "3650d")] = Duration.parse("1d")
    fail2ban_socket: ConfigPath | None = None  # fail2ban-client's default when None
    # Ask Fail2Ban whether its jail holds each ban, put back what it skipped, lift each at
    # its end: needs fail2ban-client on Fail2Ban's socket (root's), so root, or a helper
    # (fail2ban_client: [sudo, -n, /usr/bin/fail2ban-client] with a sudoers rule); the
    # shipped unit runs unprivileged and cannot.  Off: bans are written to the feed,
    # unconfirmed (`sudo jfwatch bans list` asks Fail2Ban).
    confirm: bool = False
    fail2ban_client: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _list_beside_the_feed(self) -> BanFeedConfig:
        """Paths that belong together default together: a feed moved elsewhere takes its
        banned list with it, unless the list is set too."""
        if "path" in self.model_fields_set and "list_path" not in self.model_fields_set:
            object.__setattr__(self, "list_path", self.path.parent / "banned.txt")
        return self


class CrowdsecConfig(Strict):
    """
    Bans pushed to a CrowdSec Local API, which every bouncer of it enforces for the ban's
    exact duration (one LAPI, bouncers on each host).  ``credentials_file``: what
    ``cscli machines add jfwatch --auto -f <file>`` writes (url, login, password).
    ``bouncer_key_file``: optional (``cscli bouncers add jfwatch-read``), to read the
    shared decisions: a successful login from an address the LAPI bans is an alert.
    """

    enabled: bool = False
    credentials_file: ConfigPath = Path("/etc/jfwatch/crowdsec-credentials.yaml")
    bouncer_key_file: ConfigPath | None = None
    # The origin of the decisions jfwatch pushes: crowdsec (what a CrowdSec agent's own
    # detections carry: `cscli decisions list` shows them on every version) or jfwatch
    # (`cscli decisions list --origin jfwatch` tells them apart, but CrowdSec 1.4.x, Debian
    # 12's, lists that origin only with -a).  The scenario is jfwatch/<rule> either way.
    origin: Literal["crowdsec", "jfwatch"] = "crowdsec"
    timeout: Annotated[Duration, between("1s", "1m")] = Duration.parse("10s")


class NftablesConfig(Strict):
    """Banned addresses as elements of two named sets (IPv4, IPv6) with per-element
    timeouts; the drop rule is yours (contrib/nftables/jfwatch.nft).  Needs CAP_NET_ADMIN."""

    enabled: bool = False
    table: str = Field("jfwatch", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    family: Literal["inet", "ip", "ip6"] = "inet"
    # How to run nft: a helper holding the privilege (["sudo", "-n", "/usr/sbin/nft"] with
    # a sudoers rule) keeps the daemon unprivileged.
    nft: list[str] = Field(["nft"], min_length=1)


class BanPolicy(Strict):
    """Escalation for repeat offenders, like Fail2Ban's bantime.increment."""

    increment: bool = True
    factor: float = Field(2.0, ge=1.0, le=10.0, allow_inf_nan=False)
    max: Annotated[Duration, between("1m", "365d")] = Duration.parse("4w")


def apprise_loadable(url: SecretStr) -> SecretStr:
    """A URL Apprise cannot load is an error, named by its service, never by its secret
    (a mistyped token would otherwise silently drop every alert)."""
    import logging

    import apprise  # here: only configs with notification URLs pay for it

    quiet = logging.getLogger("apprise")  # its own messages may quote the URL
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    text = url.get_secret_value()
    if apprise.Apprise.instantiate(text, suppress_exceptions=True) is None:
        scheme = text.split("://", 1)[0] if "://" in text else None
        service = f"this {scheme}:// URL" if scheme and scheme.isalnum() else "this URL"
        raise ValueError(f"Apprise cannot load {service}: an unknown service, or a token or "
                         "field in the wrong form (the URL is not shown: it holds secrets)")
    return url


class NotifyConfig(Strict):
    urls: list[Annotated[SecretStr, AfterValidator(apprise_loadable)]] = []
    config_file: ConfigPath | None = None  # read (and checked) by the runtime checks
    rdns: bool = False
    max_per_rule_per_hour: int = Field(10, ge=1, le=3600)
    quiet_hours: str | None = Field(None, pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")
    retry_max: Annotated[Duration, between("1s", "1d")] = Duration.parse("1h")
    give_up_after: Annotated[Duration, between("1m", "30d")] = Duration.parse("2d")


class GeoConfig(Strict):
    """Where addresses are, all looked up locally: the embedded country table, plus
    optional MaxMind/DB-IP ``.mmdb`` files (City for cities and impossible travel, ASN)."""

    enabled: bool = True
    mmdb: list[ConfigPath] = []  # opened by the runtime checks


ActivityType = Literal["AuthenticationFailed", "AuthenticationSucceeded", "UserLockedOut"]


def _nearby_host(host: str) -> bool:
    """This host, a private or link-local address, or a single-label name (a container
    or LAN name: ``jellyfin``, ``localhost``)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host or host.endswith((".local", ".lan", ".internal", ".home.arpa"))
    return address.is_loopback or address.is_private or address.is_link_local


class JellyfinApiConfig(Strict):
    """
    Jellyfin's Activity Log, polled (the ``jellyfin_api`` source): where every login came
    from, also for servers whose log jfwatch cannot read.  The key (Dashboard > API Keys)
    is read from ``api_key_file`` or the environment variable ``api_key_env``, never
    from this file.
    """

    url: str = Field(pattern=r"^https?://[^\s/@]+(/[^\s@]*)?$")
    name: str = Field("jellyfin-api", pattern=r"^[\w.@/ -]{1,64}$")
    api_key_file: ConfigPath | None = None
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    poll_interval: Annotated[Duration, between("1s", "1h")] = Duration.parse("10s")
    timeout: Annotated[Duration, between("1s", "5m")] = Duration.parse("10s")
    page_size: int = Field(100, ge=10, le=1000)
    start: Literal["end", "beginning"] = "end"
    verify_tls: bool = True
    # Entry Name templates in the server's UI language (en-US built in), {0}: the user.
    name_templates: dict[ActivityType, Annotated[str, Field(pattern=r"^[^{}]*\{0\}[^{}]*$")]] = {}

    def transport_warnings(self) -> list[str]:
        """What exposes the key (an administrator's) on its way: plain HTTP beyond this
        host, its LAN or a container network, and TLS without verification."""
        out = []
        host = urlsplit(self.url).hostname or ""
        if self.url.startswith("http://") and not _nearby_host(host):
            out.append(f"jellyfin_api {self.name}: {self.url} is plain HTTP to another "
                       "host: the API key (an administrator's) crosses the network in clear "
                       "text; use https://")
        if not self.verify_tls:
            out.append(f"jellyfin_api {self.name}: verify_tls is off: whoever sits on the "
                       "path can pose as the server, take the API key and feed jfwatch "
                       "entries; trust the server's certificate instead")
        return out

    @model_validator(mode="after")
    def _one_key(self) -> JellyfinApiConfig:
        if (self.api_key_file is None) == (self.api_key_env is None):
            raise ValueError("set one of api_key_file and api_key_env")
        return self


class MetricsConfig(Strict):
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(9725, ge=0, le=65535)
    stale_after: Annotated[Duration, between("1s", "7d")] = Duration.parse("10m")


class Config(Strict):
    """Everything ``jfwatch run`` needs; every field has a safe default."""

    server_name: str = "jellyfin"
    timezone: str = DEFAULT_TIMEZONE
    state_dir: ConfigPath = Path("/var/lib/jfwatch")
    rules_dirs: list[ConfigPath] = [Path("/etc/jfwatch/rules.d")]
    # Jellyfin's two daily names: log_YYYYMMDD.log (current logging.json) and
    # jellyfinYYYYMMDD.log (Debian/Ubuntu installs that kept an older one); never the
    # FFmpeg.*.log and upload_*.log files beside them.
    sources: list[SourceConfig] = [SourceConfig(path="/var/log/jellyfin/log_*.log"),
                                   SourceConfig(path="/var/log/jellyfin/jellyfin*.log")]
    jellyfin_api: list[JellyfinApiConfig] = []
    allow: list[CIDR] = DEFAULT_ALLOW
    trusted_proxies: list[CIDR] = []
    ipv6_prefix: int = Field(64, ge=8, le=128)
    # About 550 bytes a group: the default holds a 100,000-address flood in < 250 MB.
    max_groups: int = Field(400_000, ge=100, le=5_000_000)
    max_line: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    # Files followed at once (each holds a descriptor), shared among the sources: a glob
    # matching more follows the most recently modified and reports the rest.
    max_open_files: int = Field(256, ge=8, le=4096)
    # Event time is attacker input: an event dated further ahead of the wall clock than
    # this is counted as forged or wrongly clocked (any event ahead is taken at "now").
    future_tolerance: Annotated[Duration, between("0s", "1d")] = Duration.parse("5m")
    # The records of one authentication attempt (the proxy's line, Jellyfin's log line, its
    # Activity Log entry) within this time are one attempt, counted once by rules; 0s
    # turns the join off.  ``dedup_window``, its older name, is still read.
    join_window: Annotated[Duration, between("0s", "1m")] = Field(
        Duration.parse("2s"), validation_alias=AliasChoices("join_window", "dedup_window"))
    # A successful login makes its address known (the household's) for this long: rules
    # that count failures do not ban it (see a rule's ban.known_addresses).
    known_for: Annotated[Duration, between("0s", "365d")] = Duration.parse("30d")
    # Optional JSON-lines copy of every event (SIEM export, debugging); written
    # exactly once per line even across crashes (its length is committed with offsets).
    events_file: ConfigPath | None = None
    ban_feed: BanFeedConfig = BanFeedConfig()
    crowdsec: CrowdsecConfig = CrowdsecConfig()
    nftables: NftablesConfig = NftablesConfig()
    ban: BanPolicy = BanPolicy()
    notify: NotifyConfig = NotifyConfig()
    metrics: MetricsConfig = MetricsConfig()
    geo: GeoConfig = GeoConfig()
    # The file it was read from and the line of each key (for messages found later).
    _origin: tuple[Path, dict[tuple[object, ...], int]] | None = PrivateAttr(None)

    def where(self, *loc: object) -> str:
        """``file:line: key`` of an option, for a problem found after loading (the
        runtime checks); the dotted key alone for the built-in defaults."""
        key = ".".join(map(str, loc))
        if self._origin is None:
            return key
        path, lines = self._origin
        return f"{path}:{locate(lines, loc)}: {key}"

    @field_validator("allow", "trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        bad = bad_networks(values)
        if bad:
            raise ValueError(f"not an address or network: {', '.join(bad)}")
        return values

    @property
    def enforcers(self) -> list[str]:
        """Who enforces bans: the feed's reader (fail2ban, or list), crowdsec, nftables."""
        named = [self.ban_feed.enforcer] if self.ban_feed.enabled else []
        return named + [name for name, on in (("crowdsec", self.crowdsec.enabled),
                                              ("nftables", self.nftables.enabled)) if on]

    @model_validator(mode="after")
    def _names_unique(self) -> Config:
        """Metrics, logs and the state's cursors know a source by its name."""
        names = [s.label for s in self.sources] + [api.name for api in self.jellyfin_api]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two sources are named {', '.join(twice)}: give each its own name")
        return self

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


def config_path(path: Path | None) -> Path | None:
    """The file a command reads: the one given, else $JFWATCH_CONFIG, else the default
    file if it exists; None means the built-in defaults."""
    if path is None:
        env = os.environ.get("JFWATCH_CONFIG")
        path = Path(env) if env else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return path


def load_config(path: Path | None) -> tuple[Config, Path | None]:
    """Load and validate a config file; None means the built-in defaults."""
    path = config_path(path)
    if path is None:
        return Config(), None
    try:
        data, lines = load_yaml(path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the config must be a mapping of options"])
    try:
        cfg = Config.model_validate(data, context={"config_dir": os.path.dirname(
            os.path.abspath(path))})
    except ValidationError as exc:
        raise ConfigError(describe(path, lines, exc)) from exc
    cfg._origin = (path, lines)
    return cfg, path
