"""`[auth]` for bench users in locustfiles: a static token, or Keycloak client-credentials / password grants.

bench's own TokenSource is asyncio-based; Locust users run on gevent, so this is the same contract in blocking
(gevent-cooperative) form: the first token is fetched before the first request, the next one when
``refresh_at`` × ``expires_in`` has passed or once after a 401, by one greenlet while the others keep the current
token. Secrets come from environment variables or files named in the scenario and never appear in messages.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from geventhttpclient import HTTPClient

from bench.errors import InputError, RunInvalid
from bench.inpath import input_problem

__all__ = ["UserTokens"]


class UserTokens:
    """The live ``Authorization`` value of one Locust process's users."""

    def __init__(self, cfg: Any, *, file: str, count: Callable[[str], None] = lambda _n: None,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.cfg, self.file, self._count = cfg, file, count
        self._value = ""
        self._next_refresh = float("inf")
        self._busy = False
        self._form: dict[str, str] = {}
        self._basic = ""
        self._issued: set[str] = set()  # every token this process held (one per refresh): scrubbed from reports
        if cfg.kind == "static":
            token = (env.get(cfg.token_env, "") if cfg.token_env else
                     cfg.token_file.read_text().strip() if cfg.token_file and input_problem(cfg.token_file) is None
                     else "")
            if not token:
                raise InputError(f"no token in {cfg.token_env or cfg.token_file}", file=file, key="auth.token_env")
            self._issued.add(token)
            self._value = self._header(token)
        elif cfg.uses_keycloak:
            if cfg.token_url is None:
                raise InputError("no token URL: give token_url", file=file, key="auth.token_url")
            client_id = self._env(env, cfg.client_id_env, "client_id_env") if cfg.client_id_env else cfg.client_id
            if cfg.kind == "password":
                user = self._env(env, cfg.username_env, "username_env") if cfg.username_env else cfg.username
                self._form = {"grant_type": "password", "username": user or "",
                              "password": self._env(env, cfg.password_env, "password_env")}
                if getattr(cfg, "scope", ""):
                    self._form["scope"] = cfg.scope
            else:
                self._form = {"grant_type": "client_credentials"}
            if cfg.client_secret_env is None:  # a public client (Wallaroo's sdk-client): its id, no secret
                self._form["client_id"] = client_id
            else:
                secret = self._env(env, cfg.client_secret_env, "client_secret_env")
                self._basic = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
            self._fetch()

    def _env(self, env: Mapping[str, str], name: str | None, key: str) -> str:
        value = env.get(name or "", "")
        if not value:
            raise InputError(f"environment variable {name} is not set", file=self.file, key=f"auth.{key}")
        return value

    def _header(self, token: str) -> str:
        scheme = self.cfg.scheme
        return token if token.lower().startswith(scheme.lower() + " ") else f"{scheme} {token}"

    def authorization(self) -> str:
        """The current value; refreshes first when due (one greenlet fetches, the others keep the old one)."""
        if time.monotonic() >= self._next_refresh and not self._busy:
            self._busy = True
            try:
                self._fetch()
                self._count("token_refresh")
            except RunInvalid:
                self._count("token_refresh_failed")
                self._next_refresh = time.monotonic() + 1.0  # retry soon; requests keep the current token
            finally:
                self._busy = False
        return self._value

    def secrets(self) -> list[str]:
        """Every secret value this process holds or has held: the tokens, the password, the Basic credential."""
        out = sorted(self._issued)
        out += [v for v in (self._basic, self._form.get("password", "")) if v]
        return out

    def unauthorized(self) -> None:
        """A 401: refresh before the next request (a static token cannot be refreshed)."""
        if self._form:
            self._next_refresh = 0.0

    def _fetch(self) -> None:
        url = self.cfg.token_url
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}{parts.path}"
        started = time.monotonic()
        client = HTTPClient.from_url(url, connection_timeout=self.cfg.timeout_s, network_timeout=self.cfg.timeout_s)
        try:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if self._basic:
                headers["Authorization"] = self._basic
            resp = client.request("POST", parts.path, body=urlencode(self._form).encode(), headers=headers)
            status, body = resp.status_code, resp.read()
        except Exception as exc:
            raise RunInvalid(f"token request to {where} failed: {type(exc).__name__}") from None
        finally:
            client.close()
        try:
            answer = orjson.loads(body) if status == 200 else {}
            access, expires_in = answer["access_token"], float(answer["expires_in"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RunInvalid(f"token endpoint {where} answered HTTP {status} without a token") from None
        self._issued.add(str(access))
        self._value = self._header(str(access))
        self._next_refresh = started + self.cfg.refresh_at * expires_in
