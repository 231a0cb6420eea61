"""The hot paths' ISO time formatter writes exactly what datetime.isoformat writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.isotime import iso_time

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
