"""The hot paths' ISO time texts are exactly what datetime.isoformat writes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jfwatch.isotime import iso_time
from jfwatch.parsers.jellyfin import _file_time

_OFFSETS = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                         max_value=timedelta(hours=23, minutes=59))


@settings(max_examples=500, deadline=None)
@given(naive=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
       zone=st.one_of(_OFFSETS.map(timezone), st.just(UTC),
                      st.sampled_from(["Europe/Berlin", "America/St_Johns", "Asia/Kolkata"])
                      .map(ZoneInfo)))
def test_iso_time_is_isoformat(naive: datetime, zone: tzinfo) -> None:
    """Any fixed offset (seconds and microseconds included), zero microseconds, years
    before 1000, and zones whose offset changes (which take isoformat itself)."""
    t = naive.replace(tzinfo=zone)
    assert iso_time(t) == t.isoformat()


def _two(high: int) -> st.SearchStrategy[str]:
    return st.integers(0, high).map("{:02d}".format)


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


@settings(max_examples=1000, deadline=None)
@given(day=st.one_of(st.dates().map(date.isoformat),
                     st.builds("{}-{}-{}".format, _digits(4), _two(13), _two(32))),
       clock=st.builds("{}:{}:{}{}".format, _two(24), _two(60), _two(60),
                       st.one_of(st.just(""), st.integers(1, 7).flatmap(_digits).map(".{}".format))),
       zone=st.builds("{}{}:{}".format, st.sampled_from("+-"), _two(24), _two(99)))
@example(day="2026-01-02", clock="00:00:01.553", zone="-00:00")
@example(day="2026-01-02", clock="00:00:01.0000000", zone="+00:60")
@example(day="2026-01-02", clock="00:00:01.1234567", zone="+05:30")
def test_file_sink_time_text_is_isoformat(day: str, clock: str, zone: str) -> None:
    """The Jellyfin file sink's header time (any text its pattern admits: one to seven
    fraction digits, -00:00, 60 minutes or more, no real date) parses to what
    fromisoformat gives for it, and the text the parser carries for JSON is that
    time's isoformat()."""
    try:
        expected: datetime | None = datetime.fromisoformat(f"{day}T{clock[:15]}{zone}")
    except ValueError:
        expected = None
    timed = _file_time(day, clock, zone)
    if expected is None:
        assert timed is None
    else:
        assert timed is not None
        when, text = timed
        assert when == expected and when.utcoffset() == expected.utcoffset()
        assert text == expected.isoformat()
