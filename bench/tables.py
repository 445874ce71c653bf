"""Validation shared by the scenario tables that bench.scenario hands on raw ([auth], [wallaroo]).

Every problem is an InputError naming ``<section>.<key>`` so the CLI can point at the exact line to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.errors import InputError

__all__ = ["TableReader"]


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
            raise self.err(key, f"expected a non-empty string, got {type(value).__name__}")
        return value.strip()
