"""Secret scrubbing: known secret values out of text, secret-looking keys out of stored scenarios."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "Redactor", "redact", "redact_mapping"]

REDACTED = "[REDACTED]"
_SECRET_NAME = re.compile(r"(secret|password|passwd|token|api_?key|authorization|credential|^users$)", re.IGNORECASE)
_POINTER_SUFFIXES = ("_env", "_file", "_url", "_at", "_s", "_ttl")  # name where a secret lives, or a setting


class Redactor:
    """Replaces every occurrence of any secret (longest first) with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in values)) if values else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``[REDACTED]``."""
    return Redactor(secrets)(text)


def redact_mapping(data: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of a scenario-like mapping fit to store in a report.

    Values under secret-looking keys (``*token*``, ``*secret*``, ``*password*``, ``authorization`` …) are
    replaced, except the ``*_env`` / ``*_file`` / ``*_url`` forms that only name where a secret lives; any
    string containing a known secret value is scrubbed.
    """
    scrub = Redactor(secrets)

    def walk(value: Any, key: str | None) -> Any:
        if isinstance(value, Mapping):
            return {str(k): walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, key) for v in value]
        if not isinstance(value, str):
            return value
        if key is not None and _SECRET_NAME.search(key) and not key.lower().endswith(_POINTER_SUFFIXES):
            return REDACTED
        return scrub(value)

    return {str(k): walk(v, str(k)) for k, v in data.items()}


