"""Reading one TOML table into typed values: every problem is an InputError naming ``file: section.key: problem``.

Unknown keys are refused with a did-you-mean; numbers are checked for type, finiteness and range, so a bad value
never reaches the run (where it would become a traceback or a silently absurd run).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.errors import InputError
from bench.tables import unknown_key
from bench.units import parse_duration

__all__ = ["MAX_DURATION_S", "Table", "check_url", "safe_url", "type_name", "unknown_key"]

MAX_DURATION_S = 7 * 24 * 3600.0  # a week: longer is a typo (and overflows clocks in places)


def _exact(value: float) -> str:
    """A number as typed, grouped: 10,000,001 or 10,000,000.5 (never rounded to 6 digits, as ``:g`` did, so a
    value just over a limit reads as over it); a whole float without its '.0'."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return f"{int(value):,}"
    return f"{value:,}"


def type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def safe_url(url: str) -> str:
    """``url`` for an error message: userinfo and query (where credentials hide) replaced by '…'."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "…@" + netloc
        return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))
    except ValueError:
        return "…" if "@" in url or "?" in url else url


def check_url(url: str) -> str | None:
    """Why ``url`` is not a usable http(s) URL (never echoing credentials), or None."""
    shown = safe_url(url)
    if any(c.isspace() or ord(c) < 32 for c in url):
        return f"URL contains whitespace or control characters: {shown!r}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc}): {shown!r}"
    if port == 0:  # a server cannot listen on it: the run would only fail every connect (exit 3)
        return f"port 0 is not a port a server can be reached on: {shown!r}"
    if not parts.scheme:
        return f"URL needs an http:// or https:// scheme, got {shown!r}"
    if parts.scheme not in ("http", "https"):
        return f"URL scheme must be http or https, got {parts.scheme!r} in {shown!r}"
    if not parts.hostname:
        return f"URL has no host: {shown!r}"
    return None


class Table:
    """Reads typed keys from one TOML table (``prefix`` is 'section.'); ``done`` refuses keys nobody read."""

    def __init__(self, data: Mapping[str, Any], file: str, prefix: str) -> None:
        self.data, self.file, self.prefix = data, file, prefix
        self.seen: set[str] = set()

    def err(self, key: str, problem: str) -> InputError:
        return InputError(problem, file=self.file, key=f"{self.prefix}{key}")

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None, choices: Sequence[str] = ()) -> str | None:
        value = self.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.err(key, f"expected a string, got {type_name(value)}")
        if "\x00" in value:
            raise self.err(key, "must not contain NUL characters")
        if choices and value not in choices:
            close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int = 2**53) -> int:
        value = self.get(key, default)
        if isinstance(value, float) and value.is_integer():  # 1e9: a whole number, checked against the range
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected an integer, got {type_name(value)}")
        if value < minimum:
            raise self.err(key, f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise self.err(key, f"must be <= {maximum:,}, got {value:,}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.err(key, f"expected a number, got {type_name(value)}")
        if not math.isfinite(value) or value < minimum:
            raise self.err(key, f"must be a finite number >= {minimum:g}, got {value}")
        if value > maximum:
            raise self.err(key, f"must be <= {_exact(maximum)}, got {_exact(value)}")  # {:g} showed 1e+07 twice
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {type_name(value)}")
        return value

    def duration(self, key: str, default: float, maximum: float = MAX_DURATION_S) -> float:
        value = self.get(key, default)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.err(key, str(exc)) from None
        if seconds > maximum:
            raise self.err(key, f"must be at most {maximum:g} s, got {seconds:g} s")
        return seconds

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, Mapping):
            raise self.err(key, f"expected a table, got {type_name(value)}")
        return value

    def done(self, allowed_extra: Sequence[str] = ()) -> None:
        for key in self.data:
            if key not in self.seen and key not in allowed_extra:
                raise self.err(key, unknown_key(key, [*self.seen, *allowed_extra]))
