"""State shared by the emulator's sub-apps (Wallaroo, UbiOps, Keycloak, MLOps) within one server process.

Each sub-app is an ASGI callable constructed as ``SubApp(ctx)`` and mounted by bench.emulator.app by path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from bench.emulator.capacity import ServiceModel
from bench.emulator.config import EmulatorConfig
from bench.emulator.metrics import Metrics

__all__ = ["EmulatorContext", "TokenVerifier"]


class TokenVerifier(Protocol):
    def issue(self, subject: str, ttl_s: float) -> str: ...

    def verify(self, authorization: str | None) -> str | None:
        """None when the Authorization header carries a valid, unexpired Bearer token; else the error text."""


@dataclass
class EmulatorContext:
    config: EmulatorConfig
    model: ServiceModel
    started_at: float = field(default_factory=time.monotonic)
    tokens: TokenVerifier | None = None  # a TokenSigner, set by bench.emulator.app.build_app when require_token
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics (bench.emulator.metrics)

    @classmethod
    def create(cls, config: EmulatorConfig) -> EmulatorContext:
        model = ServiceModel(config.replicas, config.latency_ms, config.per_row_us, config.jitter, config.seed)
        return cls(config=config, model=model)

    def deployment_status(self) -> str:
        """'Starting' for the first ``startup_s`` seconds, then the configured ``deployment_status`` (e.g. 'Error'
        for a deployment that failed to start), 'Running' by default."""
        if time.monotonic() - self.started_at < self.config.startup_s:
            return "Starting"
        return self.config.deployment_status or "Running"
