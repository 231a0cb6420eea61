"""
Follow one log file the way ``tail -F`` does, and better: rename+create, copytruncate,
delete+recreate and in-place replacement are detected.  Identity is device + inode + a
fingerprint of the first bytes, so a reused inode is not mistaken for the same file.

After a rename or replacement the old file stays open and is drained for a grace period:
writers such as nginx keep appending to the renamed file until they are told to reopen,
and those lines must not be lost.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from jfwatch.sources.lines import BLOCK_BYTES, DEFAULT_MAX_LINE, LineReader

FINGERPRINT_BYTES = 256
# A last line without its newline waits for it while the file is written to; once the
# file has been quiet this long (its writer stopped mid-line, or died) it is taken as it
# is.  A rotated-away file's is taken when its drain grace ends.  Bounded in size by
# max_line all along.
PARTIAL_TIMEOUT = 300.0
DRAIN_GRACE = 30.0  # seconds a rotated-away file is still read after it last grew


@dataclass(frozen=True, slots=True)
class Identity:
    dev: int
    ino: int
    fingerprint: bytes

    def same_file(self, other: Identity) -> bool:
        if (self.dev, self.ino) != (other.dev, other.ino):
            return False
        # A fingerprint taken while the file was shorter is a prefix of the later one.
        short, long_ = sorted((self.fingerprint, other.fingerprint), key=len)
        return long_.startswith(short)


class NotRegularFile(OSError):
    """A FIFO, socket or device where a log should be: never read (it could block)."""


def open_regular(path: str) -> BinaryIO:
    """
    Open a log for reading without ever blocking: ``O_NONBLOCK`` makes a FIFO without
    a writer open at once (a plain open would wait forever, and with it every source),
    and anything but a regular file is refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is not a regular file (a FIFO, socket or device): "
                                 "not followed")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def fingerprint(fh: BinaryIO) -> bytes:
    pos = fh.tell()
    fh.seek(0)
    head = fh.read(FINGERPRINT_BYTES)
    fh.seek(pos)
    return head


def identity_of(fh: BinaryIO) -> Identity:
    st = os.fstat(fh.fileno())
    return Identity(st.st_dev, st.st_ino, fingerprint(fh))


# Complete lines read from one file, the file's identity, and the offset after them.
Piece = tuple[bytes, Identity, int]

# Where to start a file that appeared at a followed path (a rotation put it there): the
# offset it was read to under any name, None for a file never read, or ELSEWHERE while
# another follower has it open (it is that follower's to read).
Resume = Callable[[Identity], int | None]
ELSEWHERE = -1


@dataclass(slots=True)
class _Cursor:
    """An open file, its line reader, and where it stands."""

    reader: LineReader
    identity: Identity

    @property
    def fh(self) -> BinaryIO:
        return self.reader.fh

    @property
    def offset(self) -> int:
        return self.reader.offset

    def read(self, budget: int, *, force_partial: bool = False) -> bytes:
        """Complete lines; an unfinished last line once the file was quiet for
        PARTIAL_TIMEOUT (or at once with ``force_partial``: the file is done)."""
        data = self.reader.read(budget)
        quiet = self.reader.clock() - self.reader.last_growth
        if not data and self.reader.partial_since is not None and \
                (force_partial or quiet >= PARTIAL_TIMEOUT):
            data = self.reader.take_partial()
        return data

    def close(self) -> None:
        self.reader.fh.close()


class Follower:
    """Reads new complete lines from one path, surviving rotation."""

    def __init__(self, path: str, offset: int = 0, max_line: int = DEFAULT_MAX_LINE,
                 clock: Callable[[], float] = time.monotonic, resume: Resume | None = None
                 ) -> None:
        """``clock``: monotonic seconds, for the partial-line timeout and the drain grace;
        ``resume``: where a file that later appears at ``path`` starts (files are known by
        identity, never by name: a rotation that moves a file read under another name to
        this one continues it where it was, instead of reading it again from 0)."""
        self.path = path
        self.max_line = max_line
        self.clock = clock
        self.resume = resume
        self.identity: Identity | None = None
        self._cur: _Cursor | None = None
        self._rotated: list[_Cursor] = []
        self.problem: str | None = None  # why the path cannot be read now, if it cannot
        self._open(offset)

    def _open(self, offset: int | None) -> None:
        """Open the path at ``offset``; None: a file that appeared there since, started
        where ``resume`` says."""
        try:
            fh = open_regular(self.path)
        except NotRegularFile as exc:
            self._cur, self.identity, self.problem = None, None, str(exc)
            return
        except OSError as exc:
            self._cur, self.identity = None, None
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # tried again on every read
                self.problem = f"cannot open {self.path}: out of file descriptors " \
                               "(raise LimitNOFILE, or lower max_open_files)"
            return
        self.problem = None
        identity = identity_of(fh)
        if offset is None:
            known = None if self.resume is None else self.resume(identity)
            if known == ELSEWHERE:  # tried again on the next read, once the other let go
                fh.close()
                self._cur, self.identity = None, None
                return
            offset = known or 0
        size = os.fstat(fh.fileno()).st_size
        if offset > size:
            offset = 0  # truncated while we were away
        fh.seek(offset)
        self.identity = identity
        self._cur = _Cursor(LineReader(fh, offset, self.max_line, self.clock), self.identity)

    @property
    def offset(self) -> int:
        return 0 if self._cur is None else self._cur.offset

    def backlog(self) -> tuple[int, int]:
        """Bytes written after the committable offset (tail lag), and bytes no read has
        taken yet (an unfinished last line, read and waiting for its newline, is not
        among them): one stat for both."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return 0, 0
        unread = 0 if self._cur is None else max(0, size - self._cur.reader.position)
        return max(0, size - self.offset), unread

    def idle_seconds(self) -> float:
        """How long since any followed file (current or rotated) last grew."""
        cursors = [c for c in (self._cur, *self._rotated) if c is not None]
        if not cursors:
            return float("inf")
        return self.clock() - max(c.reader.last_growth for c in cursors)

    def owns(self, other: Identity) -> bool:
        """Whether this follower is reading that file (as current or rotated-away file)."""
        return any(c.identity.same_file(other) for c in (self._cur, *self._rotated)
                   if c is not None)

    def close(self) -> None:
        for cursor in (self._cur, *self._rotated):
            if cursor is not None:
                cursor.close()
        self._cur, self._rotated = None, []

    def read(self, budget: int = BLOCK_BYTES) -> list[Piece]:
        """
        What is new, at most about ``budget`` bytes from each open file: rotated-away
        files first, then the current one.  Call again while it returns lines.
        """
        pieces: list[Piece] = self._read_rotated(budget)
        if self._cur is None:
            self._open(None)
            if self._cur is None:
                return pieces
        data = self._cur.read(budget)
        if data:
            return [*pieces, (data, self._cur.identity, self._cur.offset)]
        rotated = self._rotation()
        if rotated == "truncated":
            self._cur.reader.restart(0)
            self.identity = self._cur.identity = identity_of(self._cur.fh)
        elif rotated == "replaced":
            # Keep the old file open: its writer may not have reopened yet.
            self._rotated.append(self._cur)
            self._open(None)
        if rotated and self._cur is not None and (data := self._cur.read(budget)):
            pieces.append((data, self._cur.identity, self._cur.offset))
        return pieces

    def _read_rotated(self, budget: int) -> list[Piece]:
        pieces: list[Piece] = []
        keep = []
        for cursor in self._rotated:
            quiet = self.clock() - cursor.reader.last_growth > DRAIN_GRACE
            data = cursor.read(budget, force_partial=quiet)
            if data:
                pieces.append((data, cursor.identity, cursor.offset))
            if quiet and not data:
                cursor.close()  # its offset, kept by identity, says it was read
            else:
                keep.append(cursor)
        self._rotated = keep
        return pieces

    def _rotation(self) -> str | None:
        assert self._cur is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # deleted: keep the old handle until a new file appears
        own = os.fstat(self._cur.fh.fileno())
        if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
            return "replaced"
        if st.st_size < self._cur.reader.position:
            return "truncated"
        if self.identity is not None and len(self.identity.fingerprint) and \
                not identity_of(self._cur.fh).same_file(self.identity):
            return "truncated"  # same inode, different head: rewritten in place
        if self.identity is not None and len(self.identity.fingerprint) < FINGERPRINT_BYTES:
            self.identity = self._cur.identity = identity_of(self._cur.fh)
        return None
