"""The outcome kinds every request is classified into.

The hot path passes kinds as small ints (``Kind``); reports and summaries use their names. HTTP error
statuses are kept beside the kind (``HTTP_ERROR`` + status) so errors are counted by kind *and* status.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ERROR_KINDS", "Kind", "kind_name"]


class Kind(IntEnum):
    OK = 0
    BAD_RESPONSE = 1  # 2xx but rows out != rows in, or an undecodable body
    HTTP_ERROR = 2  # non-2xx answer other than 429 (status recorded beside it)
    RATE_LIMITED = 3  # HTTP 429
    REQUEST_FAILED = 4  # UbiOps: HTTP 200 with "status": "failed"
    CONNECT_REFUSED = 5
    CONNECT_TIMEOUT = 6
    READ_TIMEOUT = 7
    RESET = 8  # connection reset / closed mid-answer
    PROTOCOL_ERROR = 9  # unparseable HTTP, HTTP/2 stream reset, ...
    TLS_ERROR = 10
    DROPPED = 11  # open loop: a send that could not start on time (max_in_flight reached); never sent
    OTHER = 12


ERROR_KINDS = frozenset(k for k in Kind if k is not Kind.OK)

_NAMES = tuple(k.name.lower() for k in Kind)


def kind_name(kind: int) -> str:
    """The report/summary name of a kind code ('ok', 'read_timeout', ...)."""
    return _NAMES[kind]
