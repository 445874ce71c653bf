"""Credentials for the measured endpoint: static tokens, Keycloak client-credentials / password grants, refresh.

A load test often outlives its token (Wallaroo's last 60 minutes), so ``TokenSource`` fetches the first token
before load starts, refreshes in the background at ``refresh_at`` × ``expires_in`` and tells subscribers the new
``Authorization`` value (the runner swaps it into the engine without pausing load). A 401 seen mid-run asks for
one immediate refresh; concurrent asks share one request. Secrets are read from the environment or a file at
run time, never from the scenario, and ``secrets()`` lists every value to scrub from errors, logs and reports.
"""

from __future__ import annotations

import base64
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import anyio
import anyio.abc
import httpx

from bench.auth.redaction import Redactor
from bench.config.auth import AuthConfig
from bench.errors import InputError, RunInvalid
from bench.inpath import input_file
from bench.secrets import header_value_problem
from bench.tlstrust import tls_hint, untrusted

__all__ = ["TokenSource"]


def _safe_url(url: str) -> str:
    """``url`` without userinfo or query (either may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class TokenSource:
    """The live ``Authorization`` header value for a run, kept fresh.

    Construct it at run time (secrets are read then: a missing variable or file is an InputError naming it),
    ``await start(tg)`` before load starts, read ``authorization()``, subscribe with ``on_change(cb)``, call
    ``request_refresh()`` (sync) or ``await refresh_now()`` on a 401, and ``await close()`` at the end.
    """

    def __init__(self, cfg: AuthConfig, *, count: Callable[[str, int], None] | None = None,
                 environ: Mapping[str, str] | None = None, client: httpx.AsyncClient | None = None,
                 file: str | None = None, default_token_url: str | None = None, section: str = "auth",
                 verify: ssl.SSLContext | bool = True) -> None:
        env = os.environ if environ is None else environ
        if cfg.uses_keycloak and cfg.token_url is None and default_token_url is not None:
            cfg = cfg.with_token_url(default_token_url)
        self._cfg = cfg
        self._count = count or (lambda _name, _n: None)
        self._file = file
        self._section = section
        self._listeners: list[Callable[[str], None]] = []
        self._client = client
        self._verify = verify  # the run's trust (bench.tlstrust) for the client made here
        self._own_client = client is None
        self._secrets: list[str] = []  # everything we ever held, newest last (bounded)
        self._authorization = ""
        self._access: str | None = None
        self._refresh: str | None = None
        self._refresh_expires_at = 0.0
        self._expires_at = math.inf
        self._next_refresh = math.inf
        self._in_flight: anyio.Event | None = None
        self._attempts = 0  # finished token requests (ok or not)
        self._attempt_done: anyio.Event | None = None  # created lazily: anyio events need a running loop
        self._last_ok = False
        self._wake: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed = False
        self.refreshes = 0
        self.failures = 0
        self.last_error: str | None = None

        self._client_id = self._client_secret = self._username = self._password = ""
        self._static_token = ""
        if cfg.kind == "static":
            self._static_token = self._read_static(env)
        elif cfg.uses_keycloak:
            if cfg.token_url is None:
                raise InputError("no token URL: give token_url or keycloak_prefix + keycloak_suffix",
                                 file=file, key=f"{section}.token_url")
            self._client_id = self._env(env, cfg.client_id_env) if cfg.client_id_env else cfg.client_id
            self._client_secret = "" if cfg.public_client else self._env(env, cfg.client_secret_env)
            if cfg.kind == "password":
                self._username = self._env(env, cfg.username_env) if cfg.username_env else cfg.username or ""
                self._password = self._env(env, cfg.password_env)
            if self._client_secret:
                for user, secret in ((self._client_id, self._client_secret), self._basic_credentials()):
                    self._remember(base64.b64encode(f"{user}:{secret}".encode()).decode())
            self._remember(self._client_secret, self._password)

    # -- public API -------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._cfg.kind

    @property
    def expires_at(self) -> float:
        """time.monotonic() at which the current token expires (inf for static/none)."""
        return self._expires_at

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Fetch the first token (RunInvalid on failure) and start the background refresher."""
        if self._cfg.kind == "none":
            return
        if self._cfg.kind == "static":
            self._set(self._static_token)
            return
        try:
            await self._fetch()
        except _TokenError as exc:
            raise RunInvalid(f"could not get a token: {exc}") from None
        self._wake = anyio.Event()
        await task_group.start(self._loop)

    def authorization(self) -> str:
        """The current header value, e.g. ``Bearer eyJ…`` ("" when kind = 'none')."""
        return self._authorization

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization} if self._authorization else {}

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(new_authorization)`` after every token change."""
        self._listeners.append(callback)

    def secrets(self) -> list[str]:
        """Every secret value this source holds or has held (client secret, password, tokens, Basic blob)."""
        out: list[str] = []
        for s in self._secrets:
            out.extend(v for v in {s, quote(s, safe=""), quote_plus(s)} if v and v not in out)
        return out

    def redactor(self) -> Redactor:
        return Redactor(self.secrets())

    def refresh_now(self, seen: str | None = None) -> Awaitable[bool]:
        """Ask for an immediate refresh (a 401 was seen). Callable from sync code: the request starts now.

        Concurrent calls share one token request (at most one in flight). Awaiting the result waits for that
        request and gives True when it succeeded; not awaiting it is fine (fire and forget).
        ``seen``: the header value the failed request carried — if the token changed since, nothing is done.
        Static tokens read from a file are re-read (the file may have been rotated).
        """
        if seen is not None and seen != self._authorization:
            return _Done(True)
        if self._cfg.kind == "static":
            return _Done(self._reread_static_file())
        if not self._cfg.uses_keycloak or self._closed:
            return _Done(False)
        if self._wake is None:  # no background task (not started): the awaiting caller fetches
            return _Later(self._fetch_coalesced)
        target = self._attempts + 1  # the in-flight request, or the next one the background task makes
        self._next_refresh = -math.inf
        self._wake.set()
        return _Later(lambda: self._wait_attempt(target))

    request_refresh = refresh_now  # alias for callers that never await

    async def close(self) -> None:
        """Stop refreshing and release the HTTP client. Safe to call twice."""
        self._closed = True
        if self._attempt_done is not None:
            self._attempt_done.set()  # waiters see _closed and return
        if self._scope is not None:
            self._scope.cancel()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- internals --------------------------------------------------------------------------------------------

    def _env(self, env: Mapping[str, str], name: str | None) -> str:
        value = env.get(name or "")
        if not value:
            raise InputError(f"environment variable {name} is not set (or empty)", file=self._file,
                             key=f"{self._section}.{self._key_for(name)}")
        return value

    def _key_for(self, name: str | None) -> str:
        for key in ("token_env", "client_id_env", "client_secret_env", "username_env", "password_env"):
            if getattr(self._cfg, key) == name:
                return key
        return "kind"

    def _read_static(self, env: Mapping[str, str]) -> str:
        if self._cfg.token_file is not None:
            if self._cfg.token_file.exists():  # a FIFO or a device is not read (forever); a missing file: below
                input_file(self._cfg.token_file, file=self._file, key="auth.token_file")
            try:
                token = self._cfg.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise InputError(f"cannot read token file {self._cfg.token_file}: {exc.strerror}",
                                 file=self._file, key="auth.token_file") from None
            except UnicodeDecodeError:
                raise InputError(f"token file {self._cfg.token_file} is not UTF-8 text", file=self._file,
                                 key="auth.token_file") from None
            if not token:
                raise InputError(f"token file {self._cfg.token_file} is empty", file=self._file,
                                 key="auth.token_file")
            where, key = f"token file {self._cfg.token_file}", "auth.token_file"
        else:
            token = self._env(env, self._cfg.token_env).strip()
            where, key = f"environment variable {self._cfg.token_env}", f"{self._section}.token_env"
        problem = header_value_problem(token)
        if problem:
            raise InputError(f"{where} {problem} (value not shown)", file=self._file, key=key)
        self._remember(token, token.partition(" ")[2].strip())  # with and without a "Token " prefix
        return token

    def _reread_static_file(self) -> bool:
        if self._cfg.token_file is None:
            return False
        try:
            token = self._read_static(os.environ)
        except InputError:
            return False
        if self._header_for(token) == self._authorization:
            return False
        self._set(token)
        self._count("token_refresh", 1)
        return True

    async def _fetch_coalesced(self) -> bool:
        """One token request at a time: a caller arriving while one is in flight shares its outcome."""
        if self._in_flight is not None:
            target = self._attempts + 1
            return await self._wait_attempt(target)
        self._in_flight = anyio.Event()
        ok = False
        try:
            await self._fetch()
            ok = True
        except _TokenError:
            ok = False
        finally:
            done, self._in_flight = self._in_flight, None
            self._attempts += 1
            self._last_ok = ok
            done.set()
            if self._attempt_done is not None:
                self._attempt_done.set()
                self._attempt_done = None
        return ok

    async def _wait_attempt(self, target: int) -> bool:
        while self._attempts < target and not self._closed:
            if self._attempt_done is None:
                self._attempt_done = anyio.Event()
            await self._attempt_done.wait()
        return self._last_ok and self._attempts >= target

    def _header_for(self, token: str) -> str:
        prefix = f"{self._cfg.scheme} "
        return token if token.lower().startswith(prefix.lower()) else prefix + token

    def _remember(self, *values: str) -> None:
        for v in values:
            if v and v not in self._secrets:
                self._secrets.append(v)
        del self._secrets[:-256]

    def _set(self, token: str) -> None:
        self._remember(token)
        self._access = token
        self._authorization = self._header_for(token)
        for callback in list(self._listeners):
            callback(self._authorization)

    async def _loop(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        backoff = 0.25
        with anyio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            while not self._closed:
                delay = self._next_refresh - time.monotonic()
                if delay > 0:
                    assert self._wake is not None
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    if self._next_refresh > time.monotonic():
                        continue  # woken by a stale request_refresh: re-check the schedule
                if await self._fetch_coalesced():
                    backoff = 0.25
                    continue
                remaining = self._expires_at - time.monotonic()
                wait = min(backoff, max(0.1, remaining / 2)) if remaining > 0 else backoff
                self._next_refresh = time.monotonic() + wait
                backoff = min(backoff * 2, 30.0)

    async def _fetch(self) -> None:
        """One token request (refresh grant when we hold a live refresh token); updates state or raises."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._cfg.timeout_s, verify=self._verify)
        started = time.monotonic()
        use_refresh = self._refresh is not None and started < self._refresh_expires_at - 1.0
        try:
            try:
                answer = await self._post(self._grant(use_refresh))
            except _TokenError as exc:
                if not (use_refresh and exc.status == 400):
                    raise
                self._refresh = None  # refresh token rejected (session ended): fall back to a new grant
                answer = await self._post(self._grant(False))
        except _TokenError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self._count("token_refresh_failed", 1)
            raise
        access, expires_in = answer["access_token"], float(answer["expires_in"])
        refresh = answer.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._remember(refresh)
            self._refresh = refresh
            refresh_in = answer.get("refresh_expires_in")
            offline = "offline_access" in str(answer.get("scope", "")).split()
            if isinstance(refresh_in, int | float) and refresh_in > 0:
                self._refresh_expires_at = started + float(refresh_in)
            else:  # Keycloak says 0 for an offline token (no idle expiry); otherwise assume the access lifetime
                self._refresh_expires_at = math.inf if offline else started + expires_in
        self._expires_at = started + expires_in
        self._next_refresh = started + self._cfg.refresh_at * expires_in
        first = self._access is None
        self._set(access)
        if not first:
            self.refreshes += 1
            self._count("token_refresh", 1)

    def _grant(self, use_refresh: bool) -> dict[str, str]:
        if use_refresh and self._refresh is not None:
            return {"grant_type": "refresh_token", "refresh_token": self._refresh}
        if self._cfg.kind == "password":
            form = {"grant_type": "password", "username": self._username, "password": self._password}
            if self._cfg.scope:
                form["scope"] = self._cfg.scope
            return form
        return {"grant_type": "client_credentials"}

    def _basic_credentials(self) -> tuple[str, str]:
        """The client id and secret form-encoded, then sent as HTTP Basic (RFC 6749 §2.3.1): Keycloak URL-decodes
        the pair, so a secret holding '+' or '%' sent raw would be misread (401 invalid_client)."""
        return quote_plus(self._client_id, safe=""), quote_plus(self._client_secret, safe="")

    async def _post(self, form: dict[str, str]) -> dict[str, Any]:
        assert self._client is not None and self._cfg.token_url is not None
        url = _safe_url(self._cfg.token_url)
        scrub = self.redactor()
        try:
            if self._cfg.public_client:  # a public client identifies itself in the form, with no secret
                response = await self._client.post(self._cfg.token_url, data={**form, "client_id": self._client_id},
                                                    timeout=self._cfg.timeout_s)
            else:
                response = await self._client.post(self._cfg.token_url, data=form, auth=self._basic_credentials(),
                                                    timeout=self._cfg.timeout_s)
        except httpx.HTTPError as exc:
            why = type(exc).__name__
            if untrusted(str(exc)):
                why += f" ({tls_hint(str(exc), insecure=False)})"
            raise _TokenError(f"token request to {url} failed: {why}", None) from None
        if response.status_code != 200:
            detail = ""
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    detail = f" ({body['error']}: {body.get('error_description', '')})"
            except ValueError:
                pass
            raise _TokenError(scrub(f"token endpoint {url} answered HTTP {response.status_code}{detail}"),
                              response.status_code)
        try:
            answer = response.json()
            if not (isinstance(answer, dict) and isinstance(answer.get("access_token"), str)
                    and answer["access_token"] and isinstance(answer.get("expires_in"), int | float)
                    and answer["expires_in"] > 0):
                raise ValueError
        except ValueError:
            raise _TokenError(f"token endpoint {url} answered HTTP 200 without access_token/expires_in",
                              200) from None
        problem = header_value_problem(answer["access_token"])
        if problem:  # it would fail every request (or crash an engine building its header): a failed fetch
            raise _TokenError(f"token endpoint {url} answered an access_token that {problem}", 200)
        return answer


class _Done:
    """An already-known refresh outcome that can be awaited (or ignored)."""

    __slots__ = ("_value",)

    def __init__(self, value: bool) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, bool]:
        return self._value
        yield  # pragma: no cover - makes this a generator


class _Later:
    """Awaitable that creates its coroutine only when awaited (no 'never awaited' warning if ignored)."""

    __slots__ = ("_factory",)

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, bool]]) -> None:
        self._factory = factory

    def __await__(self) -> Generator[Any, None, bool]:
        return self._factory().__await__()


class _TokenError(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status
