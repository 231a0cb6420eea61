"""
Log sources: a path or a glob inside one directory, watched with watchdog (inotify or
polling) plus a slow rescan as a safety net, each matching file followed by a Follower.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import resource
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from jfwatch.config.model import SourceConfig
from jfwatch.sources.follow import Identity


class _Wake(FileSystemEventHandler):
    """Wakes the worker on any change to a matching file; asks for a rescan only when a
    file appeared, moved or went (an append needs a read, not a directory listing)."""

    _LISTING_CHANGES = frozenset({"created", "moved", "deleted"})

    def __init__(self, pattern: str, wake: threading.Event, rescan: threading.Event) -> None:
        self.pattern, self.wake, self.rescan = pattern, wake, rescan

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
        dest = getattr(event, "dest_path", "") or ""
        dest = dest if isinstance(dest, str) else dest.decode()
        if fnmatch.fnmatch(path, self.pattern) or fnmatch.fnmatch(dest, self.pattern):
            if event.event_type in self._LISTING_CHANGES:
                self.rescan.set()
            self.wake.set()


@dataclass
class Source:
    """One configured source and the files it currently follows."""

    config: SourceConfig
    wake: threading.Event
    rescan: threading.Event = field(default_factory=threading.Event)
    observer: Any = None
    problem: str | None = None
    started: bool = False
    skipped: list[str] = field(default_factory=list)  # matching files beyond the budget
    irregular: list[str] = field(default_factory=list)  # matching FIFOs, sockets, devices

    @property
    def directory(self) -> str:
        return os.path.dirname(self.config.path) or "."

    def watch(self) -> None:
        """Start a watchdog observer on the directory, once it exists."""
        if self.observer is not None or not os.path.isdir(self.directory):
            return
        poll = self.config.watch_mode == "poll"
        observer = PollingObserver(timeout=1.0) if poll else Observer()
        try:
            observer.schedule(_Wake(self.config.path, self.wake, self.rescan), self.directory,
                              recursive=False)
            observer.start()
        except OSError:
            return  # unreadable: the rescan reports it and retries
        self.observer = observer

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=2)
            self.observer = None

    def scan(self, budget: int) -> list[str]:
        """
        The matching regular files to follow, newest first; sets ``problem`` when
        the source is unreadable and ``skipped`` to what lies beyond the budget.

        Each followed file holds a descriptor, so at most ``budget`` are followed: the
        most recently modified ones (a glob over years of daily logs must not exhaust
        the process's descriptors and leave today's log unread).  The rest are counted
        and reported, never silently dropped.
        """
        directory = self.directory
        self.skipped = []
        if not os.path.isdir(directory):
            self.problem = f"directory {directory} does not exist (yet)"
            return []
        if not os.access(directory, os.R_OK | os.X_OK):
            self.problem = f"directory {directory} is not readable by this user"
            return []
        try:  # listed here, not by glob, which takes EMFILE for an empty directory
            names = os.listdir(directory)
        except OSError as exc:
            self.problem = f"cannot list {directory}: " + (
                "out of file descriptors (raise LimitNOFILE, or lower max_open_files)"
                if out_of_descriptors(exc) else str(exc.strerror or exc))
            return []
        pattern = os.path.basename(self.config.path)
        hidden = pattern.startswith(".")  # as glob: * never matches a leading dot
        paths = sorted(os.path.join(os.path.dirname(self.config.path), name)
                       for name in fnmatch.filter(names, pattern)
                       if hidden or not name.startswith("."))
        unreadable = [p for p in paths if not os.access(p, os.R_OK)]
        self.problem = f"cannot read {', '.join(unreadable[:5])}" if unreadable else None
        regular = []
        self.irregular = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                self.irregular.append(path)  # a FIFO could block a reader: reported, skipped
            elif path not in unreadable:
                regular.append((st.st_mtime, path))
        if len(regular) > budget:
            regular.sort(reverse=True)  # newest first (ties: later name first)
            self.skipped = sorted(path for _, path in regular[budget:])
            regular = regular[:budget]
        regular.sort(reverse=True)
        return [path for _, path in regular]  # newest first: it gets a descriptor first


# Descriptors kept for everything but followed files: SQLite (and its WAL), the feed and
# the export while written, watchdog's inotify, the metrics server's connections, the
# Activity Log, Apprise and LAPI clients, and a follower's rotated-away files.
DESCRIPTOR_RESERVE = 64


def file_budget(configured: int) -> int:
    """
    How many files may be followed at once: ``max_open_files``, but never more than the
    process's descriptor limit allows with DESCRIPTOR_RESERVE left over (256 files
    under a limit of 256 would leave no descriptor for the state, and the newest log,
    opened last, would never be read).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    spare = soft - max(DESCRIPTOR_RESERVE, soft // 8)
    return max(1, min(configured, spare // 2))  # a rotated-away file each, while drained


def out_of_descriptors(exc: OSError) -> bool:
    return exc.errno in (errno.EMFILE, errno.ENFILE)


def nearby_logs(pattern: str, limit: int = 5) -> list[str]:
    """Log-like files in a pattern's directory that it does not match (for a pattern that
    matches nothing: "0 files match log_*.log; found jellyfin20261130.log")."""
    directory = os.path.dirname(pattern) or "."
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = [n for n in names if ".log" in n and not fnmatch.fnmatch(os.path.join(directory, n),
                                                                       pattern)]
    return found[:limit]


def find_by_identity(paths: list[str], saved: Identity) -> str | None:
    """The file among ``paths`` that is the one we were reading (it may have been renamed)."""
    from jfwatch.sources.follow import identity_of, open_regular

    for path in paths:
        try:
            with open_regular(path) as fh:
                if identity_of(fh).same_file(saved):
                    return path
        except OSError:
            continue
    return None


def sibling_paths(source: Source) -> list[str]:
    """Every file in the source's directory (rotated names like log.1 included)."""
    try:
        return [str(p) for p in Path(source.directory).iterdir() if p.is_file()]
    except OSError:
        return []
