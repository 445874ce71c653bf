"""Parsing of human units in scenarios and flags: durations ("10s", "500ms", "2m", "1h30m")."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|s|m|h)")
_FACTORS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string like '10s', '1m30s', '250ms'. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '10s', not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _FACTORS[m.group(2)]
                pos = m.end()
            if text.startswith("-") and text[1:] and _is_duration(text[1:]):
                raise ValueError(f"duration must be >= 0, got {value!r}") from None
            if pos != len(text) or not text:
                raise ValueError(f"cannot read {value!r} as a duration (use e.g. '10s', '500ms', '2m')") from None
    else:
        raise ValueError(f"expected a duration like '10s', got {type(value).__name__}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration must be a finite number >= 0, got {value!r}")
    return seconds


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def format_duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
