"""What the detector is told: its settings (from the config) and the state it keeps
beyond its own memory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from jfwatch.addresses import PRIVATE_RANGES, Network, networks
from jfwatch.config.model import Config
from jfwatch.events import IPAddress
from jfwatch.state import BanRow


def wall_clock() -> datetime:
    return datetime.now(UTC)


class DetectorState(Protocol):
    """What the detector keeps beyond its groups: ``state.StateStore`` (SQLite, survives
    a restart) or ``memory_state.MemoryState`` (one replay)."""

    def active_ban(self, ip: str) -> BanRow | None: ...
    def record_ban(self, ip: str, rule: str, since: datetime, until: datetime,
                   level: int) -> None: ...
    def remove_ban(self, ip: str) -> BanRow | None: ...
    def expired_bans(self, now: datetime) -> list[BanRow]: ...
    def next_expiry(self) -> datetime | None: ...
    def ban_count(self, ip: str, since: datetime | None = None) -> int: ...
    def has_values(self, rule: str, key: str) -> bool: ...
    def remember(self, rule: str, key: str, value: str, when: datetime) -> bool: ...
    def mark_known(self, ips: tuple[str, ...], user: str, when: datetime) -> None: ...
    def known(self, ip: str, since: datetime) -> tuple[str, datetime] | None: ...
    def any_known(self) -> bool: ...


class AddressFacts(Protocol):
    """What the state says of an address, for ``known`` and ``banned`` in a match."""

    def is_known(self, ip: IPAddress) -> bool: ...
    def is_banned(self, ip: IPAddress) -> bool: ...
    def failed_since(self, ip: IPAddress, since: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class Fail2banPolicy:
    """How long Fail2Ban bans (``observer.incrBanTime`` and ``jail.setBanTimeExtra`` of
    Fail2Ban 1.0): the jail's bantime for an address it holds no earlier ban of; after n
    earlier bans (those within dbpurgeage), ``max(bantime, bantime * 2**min(n, 20) *
    factor)``; at most maxtime.  Times are whole seconds: its ban starts at the feed
    line's stamp."""

    bantime: timedelta
    factor: float = 1.0
    maxtime: timedelta = timedelta(weeks=4)
    forgets_after: timedelta = timedelta(days=1)  # the server's dbpurgeage

    def duration(self, earlier: int) -> timedelta:
        base = self.bantime.total_seconds()
        seconds = base if earlier <= 0 else \
            max(base, base * (1 << min(earlier, 20)) * self.factor)
        return timedelta(seconds=min(seconds, self.maxtime.total_seconds()))


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The parts of the config the detector needs (kept apart from the config file)."""

    allow: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    private: tuple[Network, ...] = ()
    ipv6_prefix: int = 64
    max_groups: int = 400_000
    ban_increment: bool = True
    ban_factor: float = 2.0
    ban_max: timedelta = timedelta(weeks=4)
    # Set when Fail2Ban owns durations: its jail's settings, every ban computed by its
    # formula, whatever the rule's own duration.
    fail2ban: Fail2banPolicy | None = None
    # An event dated further ahead of the clock than this is counted as forged or
    # wrongly clocked (anything ahead is taken at the clock's time either way).
    future_tolerance: timedelta = timedelta(minutes=5)
    # The records of one authentication attempt from several sources (the proxy, the
    # log, the Activity Log) within this time are one attempt (``attempts``); zero: every
    # record counts on its own.
    join_window: timedelta = timedelta(seconds=2)
    # A successful login makes its address (and IPv6 network) known for this long: the
    # household's.  Failure-count rules do not ban a known address (``known_addresses``).
    known_for: timedelta = timedelta(days=30)
    # Decisions (ban start and end, cooldowns) taken at the clock's time, not the event's:
    # the daemon's, where a line dated in the past (a forged header, a lagging clock, a
    # backfill) must still get a ban that lasts from now (``settings_from_config``'s
    # default).  A replay decides in event time.
    decide_on_clock: bool = False


def settings_from_config(cfg: Config, *, decide_on_clock: bool = True) -> DetectorSettings:
    """Build detector settings from a Config (kept here so config.py stays declarative);
    ``decide_on_clock``: the daemon's (True) or a replay's event time (False)."""
    return DetectorSettings(
        decide_on_clock=decide_on_clock,
        allow=networks(cfg.allow), trusted_proxies=networks(cfg.trusted_proxies),
        private=networks(PRIVATE_RANGES), ipv6_prefix=cfg.ipv6_prefix,
        max_groups=cfg.max_groups, ban_increment=cfg.ban.increment,
        ban_factor=cfg.ban.factor, ban_max=cfg.ban.max, future_tolerance=cfg.future_tolerance,
        join_window=cfg.join_window, known_for=cfg.known_for,
        fail2ban=Fail2banPolicy(cfg.ban_feed.jail_bantime, cfg.ban_feed.jail_factor,
                                cfg.ban_feed.jail_maxtime, cfg.ban_feed.fail2ban_dbpurgeage)
        if cfg.ban_feed.enabled and cfg.ban_feed.enforcer == "fail2ban" else None)
