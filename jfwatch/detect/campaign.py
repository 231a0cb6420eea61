"""
A campaign (the ``campaign`` rule type): many addresses, a few attempts each, across many
accounts, within a window: distributed credential stuffing and password spraying, which
per-address thresholds never see (two or three attempts an address).

The campaign is one: it starts when ``min_addresses`` addresses have failed for at least
``min_accounts`` accounts within ``window``, and ends when fewer remain in the window.
While it runs, every address taking part is swept into a ban: at once from its second
failure, and an address with a single failure once ``grace`` has passed without a success
from it (a household member's one-off typo is followed by the right password).  Known
addresses and allow-listed ones are the rule's ``match`` to exclude, and the ban's to
spare.  Memory is bounded: at most ``MAX_MEMBERS`` addresses and accounts, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jfwatch.events import IPAddress

MAX_MEMBERS = 20_000


@dataclass(slots=True)
class _Member:
    ip: IPAddress
    failures: int
    first: int  # microseconds
    last: int


@dataclass(slots=True)
class Step:
    """What one failure did: the campaign started (``started``), grew enough for a new
    report (``report``), and which addresses are due for a ban (target, address)."""

    started: bool = False
    report: bool = False
    sweep: list[tuple[str, IPAddress]] = field(default_factory=list)


class Campaign:
    def __init__(self, window: int, min_addresses: int, min_accounts: int, grace: int,
                 cooldown: int) -> None:
        self.window, self.grace, self.cooldown = window, grace, cooldown
        self.min_addresses, self.min_accounts = min_addresses, min_accounts
        self._members: dict[str, _Member] = {}  # by ban target, least recently failed first
        self._accounts: dict[str, int] = {}  # user -> last failure, the same order
        self._pending: dict[str, IPAddress] = {}  # single-failure members in their grace
        self.swept: set[str] = set()
        self.since: int | None = None  # when it started; None: no campaign now
        self.attempts = 0
        self.successes = 0
        self.last_report = 0

    @property
    def addresses(self) -> int:
        return len(self._members)

    @property
    def accounts(self) -> list[str]:
        return list(self._accounts)

    def failure(self, target: str, ip: IPAddress, user: str, now: int) -> Step:
        self._forget(now)
        member = self._members.pop(target, None) or _Member(ip, 0, now, now)
        member.failures += 1
        member.last = now
        self._members[target] = member
        self._accounts.pop(user, None)
        self._accounts[user] = now
        self._trim()
        step = Step()
        if self.since is None:
            if len(self._members) < self.min_addresses or \
                    len(self._accounts) < self.min_accounts:
                return step
            self.since, self.attempts = now, sum(m.failures for m in self._members.values())
            self.successes, self.last_report = 0, now
            step.started = step.report = True
            for key, m in self._members.items():
                self._sweep_or_wait(key, m, step)
            return step
        self.attempts += 1
        self._sweep_or_wait(target, member, step)
        step.sweep += self.due(now)
        if now - self.last_report >= self.cooldown:
            self.last_report = now
            step.report = True
        return step

    def success(self, target: str) -> None:
        """A success from an address: a member in its grace is not swept (a typo), and a
        member's success counts (a stuffed password that worked)."""
        self._pending.pop(target, None)
        if self.since is not None and target in self._members:
            self.successes += 1

    def due(self, now: int) -> list[tuple[str, IPAddress]]:
        """Single-failure members whose grace is over without a success (oldest first:
        members wait in the order of their failure, so the first still in its grace
        ends the look)."""
        out = []
        while self._pending:
            target, ip = next(iter(self._pending.items()))
            member = self._members.get(target)
            if member is not None and now - member.first < self.grace:
                break
            del self._pending[target]
            if member is not None:
                self.swept.add(target)
                out.append((target, ip))
        return out

    def _sweep_or_wait(self, target: str, member: _Member, step: Step) -> None:
        if target in self.swept:
            return
        if len(self.swept) > 4 * MAX_MEMBERS:
            self.swept.clear()  # a ban still running is not made again (the state has it)
        if member.failures >= 2 or self.grace <= 0:
            self._pending.pop(target, None)
            self.swept.add(target)
            step.sweep.append((target, member.ip))
        else:
            self._pending[target] = member.ip

    def _forget(self, now: int) -> None:
        """Members and accounts out of the window; the campaign ends when too few remain."""
        horizon = now - self.window
        while self._members:
            target, member = next(iter(self._members.items()))
            if member.last >= horizon:
                break
            del self._members[target]
            self._pending.pop(target, None)
        while self._accounts and next(iter(self._accounts.values())) < horizon:
            del self._accounts[next(iter(self._accounts))]
        if self.since is not None and len(self._members) < self.min_addresses:
            self.since = None
            self.swept.clear()
            self._pending.clear()

    def _trim(self) -> None:
        while len(self._members) > MAX_MEMBERS:
            target = next(iter(self._members))
            del self._members[target]
            self._pending.pop(target, None)
        while len(self._accounts) > MAX_MEMBERS:
            del self._accounts[next(iter(self._accounts))]
