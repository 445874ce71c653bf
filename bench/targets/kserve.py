"""KServe V2 / Open Inference Protocol (REST) in the registry: config, bodies, requests, and the preflight.

The preflight (before any load, on the control plane) waits for ``/v2/health/ready`` and
``/v2/models/{name}[/versions/{v}]/ready`` up to ``ready_wait``, then reads the model's metadata and checks the
inputs the data will send against it: a missing or unknown input, another datatype or a shape that cannot
match is one line naming the input, exit 2 — a run of 400s measures nothing; so is an ``outputs = [...]`` name the
metadata does not declare. Metadata without declared inputs (MLServer without ``inputs`` in model-settings.json)
is not checked, and the message says so.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from bench.bodies import BLOCK
from bench.errors import InputError, RunInvalid
from bench.headers import host_header, sni_name
from bench.results import PreparedBody
from bench.targets import Request, SectionRules, Target, read_table
from bench.targets.kserve_codec import (
    HEADER_LENGTH,
    KServeConfig,
    classify,
    config_from_mapping,
    lazy_bodies,
    tensors_for,
)
from bench.tlstrust import tls_hint, untrusted

if TYPE_CHECKING:
    from bench.prepared import Endpoints
    from bench.scenario import Scenario, TargetConfig

__all__ = ["TARGET", "KServePlan", "KServeTarget", "check_metadata", "check_outputs"]

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, datatype, shape with -1 rows) per input


@dataclass(frozen=True)
class KServePlan:
    """The config plus what the data makes of it: the input signature, the bodies, the binary header length."""

    config: KServeConfig
    signature: Signature
    bodies: Sequence[PreparedBody] = field(repr=False, compare=False)  # a LazyBodies: encoded as the run goes
    header_length: int | None = None
    file: str | None = None  # the scenario file, for error lines


def _dims_match(want: Sequence[Any], have: tuple[int, ...]) -> bool:
    if len(want) != len(have):
        return False
    return all(not isinstance(w, int) or w < 0 or h < 0 or w == h for w, h in zip(want, have, strict=True))


def check_metadata(meta: Mapping[str, Any], signature: Signature, model: str) -> str | None:
    """Why the model's metadata and the data's inputs disagree (one line naming the input), or None.

    ``*`` (a wildcard, as the emulator's echo model declares) and negative dimensions match anything."""
    declared = meta.get("inputs")
    if not isinstance(declared, list) or not declared:
        return None
    by_name = {str(i.get("name")): i for i in declared if isinstance(i, dict)}
    wildcard = by_name.get("*")
    for name, datatype, shape in signature:
        spec = by_name.get(name, wildcard)
        if spec is None:
            return f"input {name!r}: model {model} has no such input (its inputs: {', '.join(by_name)})"
        want_dt = spec.get("datatype")
        if want_dt not in (None, "*", datatype):
            return f"input {name!r}: datatype mismatch: model {model} expects {want_dt}, the data gives {datatype}"
        want_shape = spec.get("shape")
        if isinstance(want_shape, list) and spec is not wildcard and not _dims_match(want_shape, shape):
            return (f"input {name!r}: shape mismatch: model {model} expects {want_shape}, "
                    f"the data gives {list(shape)}")
    sent = {n for n, _, _ in signature}
    missing = [n for n in by_name if n != "*" and n not in sent]
    if missing:
        return f"input {missing[0]!r}: model {model} needs it, the data has no such input (sent: {', '.join(sent)})"
    return None


def check_outputs(meta: Mapping[str, Any], outputs: Sequence[str], model: str) -> str | None:
    """Why ``outputs = [...]`` asks for an output the model's metadata does not declare (one line), or None.

    Not checked when the metadata declares no outputs or a wildcard ``*`` (the emulator's echo model)."""
    declared = meta.get("outputs")
    if not isinstance(declared, list) or not declared:
        return None
    names = [str(o.get("name")) for o in declared if isinstance(o, dict)]
    if "*" in names:
        return None
    unknown = [o for o in outputs if o not in names]
    if unknown:
        return f"output {unknown[0]!r}: model {model} has no such output (its outputs: {', '.join(names)})"
    return None


Headers = Callable[[], Mapping[str, str]]


async def _get(client: httpx.AsyncClient, url: str, headers: Headers) -> httpx.Response | str:
    sent = headers()
    host = host_header({**client.headers, **sent})  # checked as the run reaches it: Host is also the TLS name
    extensions = {"sni_hostname": sni_name(host)} if host and url.startswith("https:") else None
    try:
        return await client.get(url, headers=sent, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _wait_ready(client: httpx.AsyncClient, base: str, cfg: KServeConfig, headers: Headers,
                      message: Callable[[str], None], file: str | None) -> None:
    deadline = time.monotonic() + cfg.ready_wait_s
    paths = ("/v2/health/ready", f"{cfg.model_path}/ready")
    last = ""
    told = False
    while True:
        for path in paths:
            got = await _get(client, base + path, headers)
            if isinstance(got, str) and untrusted(got):  # waiting will not help either
                raise RunInvalid(f"{base}{path}: {tls_hint(got)} ({got})")
            if isinstance(got, str):
                last = f"{path}: {got}"
                break
            if got.status_code == 404 and path != paths[0]:
                raise InputError(f"model {cfg.model_name!r}"
                                 f"{f' version {cfg.model_version!r}' if cfg.model_version else ''} "
                                 f"not found on {base} (404 on {path})", file=file, key="target.model_name")
            if got.status_code in (401, 403):  # waiting will not help: the credentials are wrong or missing
                raise RunInvalid(f"{base}{path} refused the credentials (HTTP {got.status_code}): check [auth] / "
                                 f"headers_env")
            if got.status_code != 200:
                last = f"{path}: HTTP {got.status_code}"
                break
        else:
            return
        if time.monotonic() >= deadline:
            raise RunInvalid(f"KServe model {cfg.model_name} not ready after {cfg.ready_wait_s:g} s ({last})")
        if not told:
            message(f"waiting for {base}{cfg.model_path} to be ready ({last})")
            told = True
        await anyio.sleep(0.2)


async def _check_binary_extension(client: httpx.AsyncClient, base: str, headers: Headers,
                                  message: Callable[[str], None], file: str | None) -> None:
    """``GET /v2`` must list ``binary_tensor_data`` (exit 2 if it does not); an answer that is not a JSON object
    (an ingress's HTML page) is exit 3; one that cannot be read (refused, non-200) skips the check, saying so."""
    got = await _get(client, f"{base}/v2", headers)
    if isinstance(got, str) or got.status_code != 200:
        message(f"GET {base}/v2: {got if isinstance(got, str) else f'HTTP {got.status_code}'}: "
                "the binary_tensor_data extension is not checked")
        return
    try:
        server = got.json()
    except ValueError:
        server = None
    if not isinstance(server, dict):
        raise RunInvalid(f"GET {base}/v2: not a JSON object (server metadata expected; content-type "
                         f"{got.headers.get('content-type', 'none')!r})")
    ext = server.get("extensions", [])
    if not isinstance(ext, list):
        raise RunInvalid(f"GET {base}/v2: 'extensions' is not a list")
    if "binary_tensor_data" not in ext:
        raise InputError(f"{base} does not list the binary_tensor_data extension (GET /v2)", file=file,
                         key="target.binary")


async def preflight(plan: KServePlan, base: str, message: Callable[[str], None], file: str | None = None,
                    headers: Headers = dict, verify: ssl.SSLContext | bool = True) -> None:
    """Ready checks, then the model's metadata against the data (InputError naming the input on a mismatch).

    Every call carries ``headers()`` — the requests' own credentials — so a server behind a token-checking
    gateway is checked as the run will reach it."""
    cfg = plan.config
    async with httpx.AsyncClient(timeout=10.0, headers=dict(cfg.headers), verify=verify) as client:
        await _wait_ready(client, base, cfg, headers, message, file)
        if cfg.binary:
            await _check_binary_extension(client, base, headers, message, file)
        got = await _get(client, base + cfg.model_path, headers)
        if isinstance(got, str) or got.status_code != 200:
            raise RunInvalid(f"model metadata {cfg.model_path}: "
                             f"{got if isinstance(got, str) else f'HTTP {got.status_code}'}")
        try:
            meta = got.json()
        except ValueError:
            raise RunInvalid(f"model metadata {cfg.model_path}: not JSON") from None
    if not isinstance(meta, dict):
        raise RunInvalid(f"model metadata {cfg.model_path}: not a JSON object")
    problem = check_metadata(meta, plan.signature, cfg.model_name)
    if problem:
        raise InputError(problem, file=file, key="target")
    problem = check_outputs(meta, cfg.outputs, cfg.model_name)
    if problem:
        raise InputError(problem, file=file, key="target.outputs")
    if not meta.get("inputs"):
        message(f"model {cfg.model_name} declares no inputs in its metadata: the data's inputs are not checked")


class KServeTarget(Target):
    """A model behind the Open Inference Protocol v2 REST API (KServe, MLServer, Triton, Seldon)."""

    kind = "kserve"
    rules = SectionRules(owns_section=True, env_credentials=True)

    def config(self, sc: Scenario) -> KServePlan:
        cfg = config_from_mapping(sc.target.raw, sc.file)
        table = read_table(sc, json_body=not cfg.binary, binary_hint="binary = true sends them as BYTES")
        try:  # (read_table's errors name the data file; these name the scenario's keys)
            tensors = tensors_for(table, cfg)
            bodies, width = lazy_bodies(tensors, cfg, sc.data.rows_per_request)
            bodies.prepare(BLOCK)  # the first block now: a body that cannot be encoded fails before any load
        except InputError as exc:
            raise InputError(exc.problem, file=sc.file, key=exc.key) from None
        signature = tuple((t.name, t.datatype, (-1, *t.shape[1:])) for t in tensors)
        return KServePlan(cfg, signature, bodies, width, sc.file)

    def bodies(self, sc: Scenario, config: Any) -> Sequence[PreparedBody]:
        return config.bodies  # type: ignore[no-any-return]

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        plan: KServePlan = config
        headers = {"Content-Type": "application/json", **plan.config.headers}
        if plan.header_length is not None:
            headers = {**headers, "Content-Type": "application/octet-stream", HEADER_LENGTH: str(plan.header_length)}
        return Request(url=plan.config.infer_url(url), headers=headers,
                       classify=partial(classify, expected=plan.config.outputs) if plan.config.outputs else classify)

    def emulator_url(self, base_url: str, wallaroo_url: str) -> str:
        return base_url

    def point_at(self, config: Any, ep: Endpoints) -> Any:
        return replace(config, config=replace(config.config, url=ep.inference_url))

    def has_preflight(self, config: Any) -> bool:
        return bool(config.config.preflight)

    async def preflight(self, config: Any, url: str, message: Callable[[str], None],
                        headers: Headers = dict, verify: ssl.SSLContext | bool = True) -> None:
        await preflight(config, url.rstrip("/"), message, config.file, headers, verify)


TARGET = KServeTarget()
