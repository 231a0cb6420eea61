"""The bulk reader yields exactly the lines a line-by-line reader would, bad ones as None."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.sources.lines import Block, decode, iter_chunks

MAX = 20
PIECES = st.sampled_from([b"\n", b"ok line", b"\xff\xfe", b"\x00", b"A" * 25, b"A" * 90,
                          "é".encode(), b"\r\n", b"x"])


def _reference(data: bytes) -> list[str | None]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [decode(raw, MAX) for raw in lines]


class _Pipe:
    """A stream that cannot seek (stdin from a pipe): the reader carries partial lines over."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def _bulk(data: bytes, block: int, seekable: bool = True) -> list[str | None]:
    out: list[str | None] = []
    stream = io.BytesIO(data) if seekable else _Pipe(data)
    for chunk in iter_chunks(stream, MAX, block_bytes=block):
        if isinstance(chunk, Block):
            out += [line.rstrip("\r") for line in chunk.lines()]
        else:
            out += [None if raw is None else decode(raw, MAX) for raw in chunk]
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.lists(PIECES, max_size=40).map(b"".join), block=st.integers(1, 64),
       seekable=st.booleans())
def test_bulk_reader_matches_line_reader(data: bytes, block: int, seekable: bool) -> None:
    # Seekable streams re-read a block's partial last line; pipes carry it over.
    assert _bulk(data, block, seekable) == _reference(data)
