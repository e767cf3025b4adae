"""Durations: the lengths of the time split's windows and of the feature windows.

A duration is a number of days (``7``, ``0.5``: a bare number keeps meaning days, as the
parameters always did) or a string pandas reads as a Timedelta: ``7d``, ``36h``, ``90min``,
``1h30min``, ``P1DT12H``, ``1 days 12:00:00``. Units are read case-insensitively (``36H``), and
the ones pandas 3 deprecates (``d``, ``w``, ``H``, ``S``) are parsed here rather than by pandas,
so that the default ``1d,7d,30d`` keeps working without a warning. Every duration is a whole
number of seconds: windows are compared on timestamps read to the second.

Everything here is plain: ``FeatureWindows.seconds`` gives the windows as integers of seconds
for any engine (pandas, or Spark's ``rangeBetween``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import pandas as pd

from fraud_detection.config.errors import ConfigError

DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)
LONGEST = 366 * DAY
# Seconds per unit, by the spellings read here (lower case); everything else goes to pandas.
_UNIT_SECONDS = {
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86_400),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3_600),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}(?:[eE][+-]?\d+)?")
_UNIT = "|".join(sorted(_UNIT_SECONDS, key=len, reverse=True))
_PART = re.compile(rf"\s*({_NUMBER})\s*({_UNIT})\s*", re.IGNORECASE)
_PARTS = re.compile(rf"(?:{_PART.pattern})+", re.IGNORECASE)
# Names of a window in feature columns: its length in the largest unit that measures it exactly.
_LABEL_UNITS = ((86_400, "DAY"), (3_600, "H"), (60, "MIN"), (1, "S"))
_SPELLED_UNITS = ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))
EXAMPLES = "a number of days or a duration like 36h or 90min"


def parse_duration(name: str, value: str | float | pd.Timedelta) -> pd.Timedelta:
    """The duration ``value`` of parameter ``name``: a number of days, or a duration string.

    Raises:
        ConfigError: naming the parameter and the value, when it is not a duration or not a
            whole number of seconds.
    """
    if isinstance(value, pd.Timedelta):
        duration = value
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{name} must be {EXAMPLES}, got {value!r}")
    else:
        duration = _parse_text(name, str(value).strip())
    if duration is pd.NaT or duration.value % SECOND.value:
        raise ConfigError(f"{name} must be a whole number of seconds, got {value!r}")
    return duration


def _parse_text(name: str, text: str) -> pd.Timedelta:
    if _BARE_NUMBER.fullmatch(text):
        return _whole_seconds(name, text, Fraction(text) * 86_400)
    parts = _PART.findall(text) if _PARTS.fullmatch(text) else []
    # "M" alone is a month to pandas, which refuses it (a month has no fixed length).
    if parts and all(unit != "M" for _, unit in parts):
        seconds = sum(Fraction(number) * _UNIT_SECONDS[unit.lower()] for number, unit in parts)
        return _whole_seconds(name, text, seconds)
    try:
        duration = pd.Timedelta(text)  # ISO 8601 (P1DT12H), clock times (1 days 12:00:00)
    except ValueError as error:
        raise ConfigError(f"{name} must be {EXAMPLES}, got {text!r} ({error})") from error
    if duration is pd.NaT:
        raise ConfigError(f"{name} must be {EXAMPLES}, got {text!r}")
    return duration


def _whole_seconds(name: str, text: str, seconds: Fraction) -> pd.Timedelta:
    if seconds.denominator != 1:
        raise ConfigError(f"{name} must be a whole number of seconds, got {text!r}")
    return pd.Timedelta(seconds=int(seconds))


def check_range(
    name: str, duration: pd.Timedelta, value: object, allow_zero: bool = False
) -> pd.Timedelta:
    """``duration`` itself, when it is positive (or zero, if allowed) and at most 366 days."""
    low = "at least 0" if allow_zero else "more than 0"
    if duration < pd.Timedelta(0) or (duration == pd.Timedelta(0) and not allow_zero):
        raise ConfigError(f"{name} must be {low} and at most 366 days, got {value!r}")
    if duration > LONGEST:
        raise ConfigError(f"{name} must be {low} and at most 366 days, got {value!r}")
    return duration


def is_whole_days(duration: pd.Timedelta) -> bool:
    return duration % DAY == pd.Timedelta(0)


def format_duration(duration: pd.Timedelta) -> str:
    """``duration`` in words: ``2 days 4 hours``, ``1 day 23 hours 59 minutes 53 seconds``."""
    if duration < pd.Timedelta(0):
        return "minus " + format_duration(-duration)
    remaining = Fraction(duration.value, SECOND.value)
    words = []
    for size, unit in _SPELLED_UNITS:
        count = remaining // size if size > 1 else remaining
        remaining -= count * size
        if count:
            shown = f"{float(count):g}" if isinstance(count, Fraction) else str(count)
            words.append(f"{shown} {unit}{'' if count == 1 else 's'}")
    return " ".join(words) or "0 seconds"


def window_label(duration: pd.Timedelta) -> str:
    """How a feature column names a window: ``7DAY``, ``36H``, ``90MIN`` or ``45S``."""
    seconds = int(duration // SECOND)
    size, unit = next((size, unit) for size, unit in _LABEL_UNITS if seconds % size == 0)
    return f"{seconds // size}{unit}"


@dataclass(frozen=True)
class FeatureWindows:
    """The lengths of the card and terminal feature windows, in the model's column order."""

    durations: tuple[pd.Timedelta, ...]

    @classmethod
    def parse(cls, text: str, name: str = "feature_windows") -> FeatureWindows:
        """Comma-separated durations (``1d,7d,30d``), each positive, at most 366 days, and
        named differently (``1d,24h`` is the same window twice)."""
        items = [item.strip() for item in str(text).split(",") if item.strip()]
        if not items:
            raise ConfigError(
                f"{name} must list at least one window (like 1d,7d,30d), got {text!r}"
            )
        durations = tuple(check_range(name, parse_duration(name, item), item) for item in items)
        labels = [window_label(duration) for duration in durations]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(
                f"{name} lists the same window twice ({', '.join(repeated)}): {text!r}"
            )
        return cls(durations)

    @property
    def seconds(self) -> tuple[int, ...]:
        return tuple(int(duration // SECOND) for duration in self.durations)

    @property
    def labels(self) -> tuple[str, ...]:
        """``1DAY``, ``36H``, ...: the part of the feature names that says the window."""
        return tuple(window_label(duration) for duration in self.durations)

    @property
    def longest(self) -> pd.Timedelta:
        return max(self.durations)
