"""Durations written as ``90s``, ``10m``, ``4h``, ``1d``, ``2w`` (Fail2Ban and CrowdSec style)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import AfterValidator, GetCoreSchemaHandler
from pydantic_core import core_schema

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# Longer than any setting allows (each field has its own range): past this a number is
# refused before it can overflow a timedelta (OverflowError is not a ValueError).
_LONGEST = 100 * 365 * 86400


class Duration(timedelta):
    """A timedelta that validates from ``"10m"``-style strings or a number of seconds."""

    @classmethod
    def parse(cls, text: str | float) -> Duration:
        if isinstance(text, int | float):
            seconds = float(text)
        else:
            compact = text.replace(" ", "")
            if not compact or _PART.sub("", compact):
                raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 4h, 1d, 2w)")
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
        if not 0 <= seconds <= _LONGEST:  # also false for NaN
            raise ValueError(f"duration {text!r} is out of range (0s to 100 years)")
        return cls(seconds=seconds)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Duration:
            if isinstance(value, timedelta):
                return cls(seconds=value.total_seconds())
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                return cls.parse(value)
            raise ValueError("a duration is a string like 10m or a number of seconds")

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(format_duration))


def format_duration(value: timedelta) -> str:
    """The shortest exact form: ``4h``, ``90s``, ``1d12h``."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def between(low: str, high: str) -> AfterValidator:
    """A field's range, checked after parsing: ``Annotated[Duration, between("1s", "1d")]``."""
    lo, hi = Duration.parse(low), Duration.parse(high)

    def check(value: Duration) -> Duration:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {low} and {high}, not {format_duration(value)}")
        return value

    return AfterValidator(check)
