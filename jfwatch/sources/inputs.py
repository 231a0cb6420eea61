"""
What every input of the daemon is (as CrowdSec's DataSource): it reads what is new in
bounded batches and hands each to the processing it was made with, which passes the
batch through the engine and commits the input's position with the event export; after
a commit that failed, ``rewind`` goes back to the last commit.  Files (``tailer``) and
the Activity Log (``activity_input``) are inputs; sessions and server health will be.
"""

from __future__ import annotations

from typing import Protocol


class Input(Protocol):
    def start(self) -> None:
        """Begin: resume from the committed position (files present now are followed)."""

    def read(self) -> bool:
        """Hand what is new, a bounded batch at a time, to the processing; whether
        anything was read."""

    def rewind(self) -> None:
        """Forget what was read since the last commit: the next read starts there."""

    def status(self) -> dict[str, object]:
        """What ``jfwatch status`` shows of it."""

    def close(self) -> None:
        """Stop reading (threads, watches); what was read and not committed is read again
        at the next start."""


class Health(Protocol):
    def source_health(self, source: str, readable: bool) -> None:
        """Whether a source can be read now (``/health``, ``jfwatch_source_readable``)."""
