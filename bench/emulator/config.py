"""Emulator settings: one frozen dataclass shared by every emulated platform (CLI flags map 1:1)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EmulatorConfig", "UbiOpsDeployment"]


@dataclass(frozen=True, slots=True)
class UbiOpsDeployment:
    """An emulated UbiOps deployment. ``input_type`` structured: inputs are JSON objects with ``fields``, of the
    platform data types in ``field_types`` (one per field; empty = any type). A create call whose inputs miss a
    field or hold a wrong type is refused whole, as the platform does (bench.emulator.ubiops_input)."""

    project: str = "demo"
    name: str = "ccfraud"
    version: str = "v1"
    input_type: str = "structured"  # "structured" | "plain"
    fields: tuple[str, ...] = ("tensor",)
    field_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    http2: bool = False  # serve h2c (prior knowledge) as well as HTTP/1.1 on the same port
    # capacity model: `replicas` service slots; service time = latency_ms + per_row_us * rows, with jitter
    latency_ms: float = 5.0
    per_row_us: float = 20.0
    jitter: float = 0.1  # lognormal sigma of the multiplicative jitter (0 = none)
    replicas: int = 4
    error_rate: float = 0.0  # fraction of inference answers that are 500/503 errors
    seed: int = 1
    # Wallaroo
    pipeline: str = "ccfraud"
    deployment: str = "ccfraud-1"  # "{deployment}-{id}" as in the external URL
    workspace_id: int = 1
    require_token: bool = False
    token_ttl_s: float = 3600.0
    client_id: str = "api-client"
    client_secret: str = "emulator-secret"
    users: tuple[tuple[str, str], ...] = (("admin", "admin"),)
    startup_s: float = 0.0  # deployment reports Starting (and inference answers 503) for this long
    public_client_id: str = "sdk-client"  # Keycloak's public client (no secret), as the Wallaroo SDK logs users in
    mlops_user_token: bool = True  # with require_token: MLOps routes take only user (password-grant) tokens
    deployment_status: str = ""  # after startup_s: this status (e.g. "Error"); "" = Running
    unknown_deployment_status: int = 400  # get_deployment for a wrong name: 400 (or 500) as today's platform; 404
    engine_info: bool = True  # get_deployment nests engine fields under "info", as today's platform does
    legacy_infer: bool = False  # older installs: …/pipelines/infer/{deployment} and the one-object answer
    # UbiOps
    ubiops_token: str = "Token emulator-ubiops-token"
    ubiops_deployments: tuple[UbiOpsDeployment, ...] = field(
        default_factory=lambda: (UbiOpsDeployment(field_types=("array_double",)),
                                 UbiOpsDeployment(name="echo", input_type="plain", fields=())))
    rate_limit_per_min: int = 0  # requests endpoint group, per source IP (the platform's default: 300); 0 = none
    rate_limit_window_s: float = 60.0  # the rate-limit window (shorter only to test quickly)
    ubiops_max_pending: int = 0  # cap on unfinished batch requests per deployment version; 0 = none
    ubiops_batch_cancel_status: int = 0  # 404/405: POST …/requests/cancel is missing (older API); 0 = present
    # an unknown request id in collect / batch delete (and, with ubiops_cancel_unknown_ids, batch cancel) fails
    # the whole call with this status: 404, or 400 (the reference gives no status)
    ubiops_unknown_id_status: int = 404
    ubiops_cancel_unknown_ids: bool = False  # batch cancel refuses a list holding an unknown id (else ignores it)
    ubiops_max_batch_timeout_s: int = 259_200  # the platform now allows 72 h (the older reference: 172,800 s)
    # fault injection (bench.emulator.faults): canonical spec string, "" = none; decisions seeded by `seed`
    faults: str = ""
