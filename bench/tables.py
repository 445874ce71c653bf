"""Validation shared by the scenario tables that bench.scenario hands on raw ([auth], [wallaroo]).

Every problem is an InputError naming ``<section>.<key>`` so the CLI can point at the exact line to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from bench.errors import InputError

__all__ = ["TableReader", "unknown_key"]


def unknown_key(key: str, known: Collection[str]) -> str:
    """'unknown key' with the closest known key, or the known keys when none is close."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known: {', '.join(sorted(known))})" if known else "unknown key"


class TableReader:
    """Reads keys of one table: ``err`` builds the InputError, ``string`` wants a non-empty string (stripped)."""

    def __init__(self, data: Mapping[str, Any], file: str, section: str) -> None:
        self.data, self.file, self.section = data, file, section

    def err(self, key: str, problem: str) -> InputError:
        return InputError(problem, file=self.file, key=f"{self.section}.{key}")

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else type(value).__name__
            raise self.err(key, f"expected a non-empty string, got {got}")
        return value.strip()

    def only(self, known: Collection[str]) -> TableReader:
        """``self``, once no key outside ``known`` is set (an unknown key is refused with a did-you-mean)."""
        for key in self.data:
            if key not in known:
                raise self.err(key, unknown_key(key, known))
        return self

    def required_string(self, key: str, what: str) -> str:
        """``string(key)``, which must be set: ``what`` says what it is, for the 'missing' message."""
        value = self.string(key)
        if value is None:
            raise self.err(key, f"missing: {what}")
        return value
