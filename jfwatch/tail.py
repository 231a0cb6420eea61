"""
Follow one log file the way ``tail -F`` does, and better: rename+create, copytruncate,
delete+recreate and in-place replacement are detected, and the rest of the old file is
read to its end before moving on.  Identity is device + inode + a fingerprint of the
first bytes, so a reused inode is not mistaken for the same file.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import BinaryIO

FINGERPRINT_BYTES = 256
PARTIAL_TIMEOUT = 5.0  # seconds a line without its newline is held before it is flushed


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


def fingerprint(fh: BinaryIO) -> bytes:
    pos = fh.tell()
    fh.seek(0)
    head = fh.read(FINGERPRINT_BYTES)
    fh.seek(pos)
    return head


def identity_of(fh: BinaryIO) -> Identity:
    st = os.fstat(fh.fileno())
    return Identity(st.st_dev, st.st_ino, fingerprint(fh))


def digest(fp: bytes) -> str:
    return hashlib.sha256(fp).hexdigest()[:16]


@dataclass(slots=True)
class Chunk:
    """Complete lines read, each with the file offset just after it."""

    lines: list[tuple[bytes | None, int]]
    truncated: int = 0  # over-long lines cut


class Follower:
    """Reads new complete lines from one path, surviving rotation."""

    def __init__(self, path: str, offset: int = 0, max_line: int = 64 * 1024) -> None:
        self.path = path
        self.max_line = max_line
        self._fh: BinaryIO | None = None
        self.identity: Identity | None = None
        self.offset = offset
        self._partial = bytearray()
        self._partial_since: float | None = None
        self._skipping = False  # inside an over-long line
        self._open(offset)

    def _open(self, offset: int) -> None:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across calls
        except OSError:
            self._fh, self.identity = None, None
            return
        size = os.fstat(fh.fileno()).st_size
        if offset > size:
            offset = 0  # truncated while we were away
        fh.seek(offset)
        self._fh, self.identity, self.offset = fh, identity_of(fh), offset
        self._partial.clear()
        self._skipping = False

    @property
    def is_open(self) -> bool:
        return self._fh is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet read (tail lag)."""
        try:
            return max(0, os.stat(self.path).st_size - self.offset)
        except OSError:
            return 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read(self) -> Chunk:
        """Read what is new, following a rotation once the old file is drained."""
        if self._fh is None:
            self._open(0)
            if self._fh is None:
                return Chunk([])
        chunk = self._drain()
        rotated = self._rotation()
        if rotated == "truncated":
            self._fh.seek(0)
            self.offset = 0
            self._partial.clear()
            self.identity = identity_of(self._fh)
            more = self._drain()
            chunk.lines += more.lines
            chunk.truncated += more.truncated
        elif rotated == "replaced":
            chunk.lines += self._flush_partial(force=True)
            self.close()
            self._open(0)
            if self._fh is not None:
                more = self._drain()
                chunk.lines += more.lines
                chunk.truncated += more.truncated
        chunk.lines += self._flush_partial(force=False)
        return chunk

    def _rotation(self) -> str | None:
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # deleted: keep the old handle until a new file appears
        own = os.fstat(self._fh.fileno())
        if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
            return "replaced"
        if st.st_size < self.offset:
            return "truncated"
        if self.identity is not None and len(self.identity.fingerprint) and \
                not identity_of(self._fh).same_file(self.identity):
            return "truncated"  # same inode, different head: rewritten in place
        if self.identity is not None and len(self.identity.fingerprint) < FINGERPRINT_BYTES:
            self.identity = identity_of(self._fh)
        return None

    def _drain(self) -> Chunk:
        assert self._fh is not None
        lines: list[tuple[bytes | None, int]] = []
        truncated = 0
        while data := self._fh.read(1 << 16):
            start = 0
            while (nl := data.find(b"\n", start)) != -1:
                piece = data[start:nl]
                end = self.offset + nl + 1
                if self._skipping or len(self._partial) + len(piece) > self.max_line:
                    lines.append((None, end))
                    truncated += 1
                else:
                    self._partial += piece
                    lines.append((bytes(self._partial), end))
                self._partial.clear()
                self._skipping = False
                self._partial_since = None
                start = nl + 1
            rest = data[start:]
            if self._skipping or len(self._partial) + len(rest) > self.max_line:
                self._skipping = True
                self._partial.clear()
            else:
                self._partial += rest
            if rest and self._partial_since is None:
                self._partial_since = time.monotonic()
            self.offset += len(data)
        return Chunk(lines, truncated)

    def _flush_partial(self, *, force: bool) -> list[tuple[bytes | None, int]]:
        """A last line without newline is held; after a timeout it is taken once."""
        if not self._partial and not self._skipping:
            return []
        if not force and (self._partial_since is None or
                          time.monotonic() - self._partial_since < PARTIAL_TIMEOUT):
            return []
        line = None if self._skipping else bytes(self._partial)
        self._partial.clear()
        self._skipping = False
        self._partial_since = None
        return [(line, self.offset)]

    @property
    def committed_offset(self) -> int:
        """The offset up to which every byte belongs to a complete, returned line."""
        return self.offset - len(self._partial)
