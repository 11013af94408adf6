"""The two time layouts of ``not_before``/``not_after``: Go's ``Time.String()`` and RFC 3339.

The original writes Go's ``2006-01-02 15:04:05.999999999 -0700 MST``, possibly
followed by a monotonic-clock reading (`` m=+0.012400000``, dropped) and, for a
zone without a name, the offset twice (``+0530 +0530``). taonet writes RFC 3339 in
UTC (``2026-11-28T08:38:11.5Z``) and reads both.

Python keeps microseconds: a not-before with more digits is rounded up and a
not-after down, so the window read is never wider than the one written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from taonet._errors import CodecError

__all__ = ["MAX_TIME_CHARS", "format_time", "parse_time"]

#: Longest time text read (Go's longest String() with a monotonic reading is ~70).
MAX_TIME_CHARS: Final = 100

_DATE: Final = r"(\d{4})-(\d{2})-(\d{2})"
_CLOCK: Final = r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
_RFC3339: Final = re.compile(
    _DATE + r"[Tt]" + _CLOCK + r"(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII
)
_GO: Final = re.compile(
    _DATE + " " + _CLOCK + r" ([+-])(\d{2})(\d{2}) ([A-Za-z]{1,10}|[+-]\d{2}(?:\d{2})?)"
    r"(?: m=[+-]\d{1,20}(?:\.\d{1,9})?)?",
    re.ASCII,  # \d is [0-9] only, not every Unicode digit
)


def _build(groups: tuple[str, ...], sign: str, oh: str, om: str, *, round_up: bool) -> datetime:
    year, month, day, hour, minute, second, digits = groups
    micro = int((digits + "000000")[:6])
    extra = (digits + "0" * 9)[6:9] != "000"
    offset = timedelta(hours=int(oh), minutes=int(om))
    if int(oh) > 23 or int(om) > 59:
        raise CodecError(f"time offset {sign}{oh}{om} is out of range")
    try:
        tz = timezone(-offset if sign == "-" else offset)
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
        if extra and round_up:
            value += timedelta(microseconds=1)
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise CodecError(f"time out of range: {exc}") from None


def parse_time(text: str, *, round_up: bool = False, what: str = "time") -> datetime:
    """Read RFC 3339 or Go's ``Time.String()``; a UTC datetime, or CodecError.

    ``round_up`` rounds digits past the microsecond up instead of down.
    """
    if len(text) > MAX_TIME_CHARS:
        raise CodecError(f"{what}: {len(text)} characters is over {MAX_TIME_CHARS}")
    m = _RFC3339.fullmatch(text)
    if m:
        g = m.groups("")
        if g[7]:
            sign, oh, om = "+", "00", "00"
        else:
            sign, oh, om = g[8], g[9], g[10]
        return _build(g[:7], sign, oh, om, round_up=round_up)
    m = _GO.fullmatch(text)
    if m:
        g = m.groups("")
        sign, oh, om, zone = g[7], g[8], g[9], g[10]
        if zone[0] in "+-" and (zone[0], zone[1:3], zone[3:5] or "00") != (sign, oh, om):
            raise CodecError(f"{what}: zone {zone!r} disagrees with offset {sign}{oh}{om}")
        return _build(g[:7], sign, oh, om, round_up=round_up)
    raise CodecError(f"{what}: neither RFC 3339 nor Go's time layout")


def format_time(value: datetime) -> str:
    """Write RFC 3339 in UTC, fraction without trailing zeros (as Go's RFC3339Nano)."""
    utc = value.astimezone(UTC)
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"
