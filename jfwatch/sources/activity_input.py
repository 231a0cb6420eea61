"""
One Jellyfin Activity Log source as an input: its poller thread reads batches of
records; the daemon takes one, passes it through the engine and commits its cursor with
the export; a batch built before a rewind (a commit that failed) is dropped and the
poller starts again from the committed cursor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from jfwatch import log
from jfwatch.config.model import JellyfinApiConfig
from jfwatch.reporting import Conditions
from jfwatch.sources.inputs import Health
from jfwatch.sources.jellyfin_api import (
    ActivityClient,
    ActivityPoller,
    ApiError,
    Batch,
    Cursor,
    read_api_key,
)
from jfwatch.state import StateStore

S = TypeVar("S")


class KeyUnusable(Exception):
    """The API key cannot be read (a config problem found at start)."""


@dataclass
class ActivityInput(Generic[S]):
    """One Activity Log as an input (``inputs.Input``): ``process(input, batch)`` passes a
    batch through the engine and commits its cursor."""

    config: JellyfinApiConfig
    poller: ActivityPoller
    stream: S
    cursor: Cursor | None  # the last committed one
    process: Callable[[ActivityInput[S], Batch], None]
    health: Health

    def __post_init__(self) -> None:
        self._health: Conditions[str, str] = Conditions(self._health_changed)

    @classmethod
    def open(cls, api: JellyfinApiConfig, store: StateStore, stream: S, wake: threading.Event,
             process: Callable[[ActivityInput[S], Batch], None], health: Health
             ) -> ActivityInput[S]:
        logger = log.get("jfwatch.activity")
        for warning in api.transport_warnings():
            logger.warning("api_key_exposed", source=api.name, problem=warning)
        try:
            key = read_api_key(str(api.api_key_file) if api.api_key_file else None,
                               api.api_key_env)
        except ApiError as exc:
            raise KeyUnusable(f"jellyfin_api {api.name}: {exc}") from None
        saved = store.cursor(api.name)
        cursor = None if saved is None else Cursor(*saved)
        client = ActivityClient(api.url, key, timeout=api.timeout.total_seconds(),
                                verify=api.verify_tls)
        poller = ActivityPoller(client, cursor, name=api.name,
                                interval=api.poll_interval.total_seconds(),
                                page_size=api.page_size, start=api.start, wake=wake)
        return cls(api, poller, stream, cursor, process, health)

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self.poller.start()

    def read(self) -> bool:
        """The next batch, if one waits, to ``process``, which commits it."""
        batch = self.take()
        if batch is None:
            return False
        self.process(self, batch)
        self.cursor = batch.cursor
        return True

    def take(self) -> Batch | None:
        """The next batch that starts at the committed cursor, if one waits."""
        self._report()
        batch = self.poller.take()
        if batch is None:
            return None
        if batch.after != self.cursor:  # built before a rewind
            self.poller.rewind(self.cursor)
            return None
        return batch

    def rewind(self) -> None:
        self.poller.rewind(self.cursor)

    def close(self) -> None:
        """Stop the poller and wait for it (at most a request's timeout)."""
        self.poller.stop()
        self.poller.join(timeout=self.config.timeout.total_seconds() + 1)

    def status(self) -> dict[str, object]:
        return {"name": self.config.name, "url": self.config.url,
                "readable": self.problem is None, "problem": self.problem,
                "last_id": self.cursor.last_id if self.cursor else None}

    def _report(self) -> None:
        self._health.report(self.name, self.poller.health())
        self.health.source_health(self.name, self.problem is None)

    @property
    def problem(self) -> str | None:
        return self._health.get(self.name)

    def _health_changed(self, name: str, _: str | None, problem: str | None) -> None:
        logger = log.get("jfwatch.daemon")
        if problem:
            logger.warning("source_unavailable", source=name, url=self.config.url,
                           problem=problem, retry="with backoff")
        else:
            logger.info("source_available", source=name)
