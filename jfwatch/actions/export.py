"""
The optional event export (``events_file``): every event once, across crashes.

Events wait in memory, by stream, until their stream's commit: then they are appended
(fsynced), and the export's new length is committed with the stream's offsets in one
transaction.  At start, and after a commit that failed, the file is cut back to the
committed length: what a SIGKILL left after it is written again with the lines that
made it, never twice.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from jfwatch.actions.banfeed import open_for_append
from jfwatch.events import Event
from jfwatch.state import StateStore

EXPORT_MODE = 0o640  # events hold usernames and addresses: not for every local user
SINK_NAME = "events"  # its committed length in the state


class ExportFailed(OSError):
    """The event export could not be written (the commit that needed it is not made)."""


class EventExport:
    def __init__(self, path: Path | None, store: StateStore) -> None:
        self.path, self.store = path, store
        self._waiting: dict[str, list[bytes]] = {}  # export lines by stream, until committed

    def add(self, stream: str, events: list[Event]) -> None:
        """Events of ``stream``, written with its next commit."""
        if self.path is not None:
            self._waiting.setdefault(stream, []).extend(e.json_line() + b"\n" for e in events)

    def waiting(self, stream: str) -> int:
        return len(self._waiting.get(stream, ()))

    def drop_all(self) -> None:
        """Forget every stream's waiting events (a commit failed: all is read again)."""
        self._waiting.clear()

    def restore(self) -> None:
        """Cut the file back to what the committed offsets account for (a first start
        records the length it found)."""
        if self.path is None:
            return
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
            committed = self.store.sink_size(SINK_NAME)
            if committed is None:
                self.store.save_offsets([], {SINK_NAME: size})
            elif size > committed:
                try:
                    os.ftruncate(fd, committed)
                except OSError as exc:
                    raise ExportFailed(f"{self.path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def write(self, stream: str) -> dict[str, int]:
        """Append the stream's waiting events (fsynced); the lengths to commit with its
        offsets (ExportFailed: nothing of them is left in the file)."""
        if self.path is None:
            return {}
        data = b"".join(self._waiting.get(stream, []))
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if data:
                    os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # no half-written event is left behind
                    os.ftruncate(fd, size)
                raise ExportFailed(f"{self.path}: {exc.strerror or exc}") from exc
            self._waiting.pop(stream, None)
            return {SINK_NAME: size + len(data)}
        finally:
            os.close(fd)

    def _open(self) -> int:
        """Opened like the ban feed: never through a symlink, never anything but a regular
        file, never blocking (a FIFO in its place must not stop reading)."""
        assert self.path is not None
        try:
            return open_for_append(self.path, EXPORT_MODE)
        except OSError as exc:
            raise ExportFailed(f"{self.path}: {exc.strerror or exc}") from exc
