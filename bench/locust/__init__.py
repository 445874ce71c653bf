"""bench on Locust: distributed runs on Locust's master/worker runners, and bench users for locustfiles.

``from bench.locust import WallarooUser, UbiOpsUser, HttpUser`` imports locust (which patches gevent); importing
this package alone does not, so the worker's engine process (bench.locust.child) stays free of gevent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HttpUser", "UbiOpsUser", "WallarooUser"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench.locust import users

        return getattr(users, name)
    raise AttributeError(f"module 'bench.locust' has no attribute {name!r}")
