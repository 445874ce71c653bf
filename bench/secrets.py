"""Secrets by value: one ``Scrubber`` per run, built when the run is prepared, applied where bytes leave bench.

Pattern-based redaction (``Bearer …``, ``token = …``) misses a token a server echoes in a 500 body or an
``X-Api-Key`` value; this module knows the *values* — ``token_env`` / ``headers_env`` / ``[auth]`` variables and
files, the UbiOps token, secret-named URL query parameters, and (added while the run goes) every token the
TokenSource issued — and replaces each, with its URL-encoded and Basic forms, by ``***``. The boundaries that
apply it: the report (error samples, metadata, scenario copy — so HTML and Markdown rendered later inherit it),
the checkpoint file, and the messages bench prints.

Also the input rules that keep secrets out of scenario files: literal credential headers are refused (naming
the ``*_env`` alternative) and so is URL userinfo (``http://user:pass@host``): bench does not send it, and a
password in a scenario file or on a command line is one that leaks.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

from bench.results import header_value_problem  # the one rule, shared with the engines (re-exported)

if TYPE_CHECKING:
    from bench.prepared import Prepared

__all__ = [
    "MASK",
    "Scrubber",
    "credential_header_problem",
    "env_header_value",
    "env_name_problem",
    "header_env_values",
    "header_name_problem",
    "header_value_problem",
    "scrub_report",
    "scrubber_for",
    "url_problem",
    "url_secrets",
]

MASK = "***"
_MIN_LEN = 4  # shorter "secrets" would blank ordinary text (and are not secrets worth the name)

# header name → what to use instead (a scenario file or --header must never carry these values)
_CREDENTIAL_HEADERS = {
    "authorization": "target.token_env or [auth]",
    "proxy-authorization": "target.headers_env",
    "x-api-key": "target.headers_env",
    "api-key": "target.headers_env",
    "apikey": "target.headers_env",
    "x-auth-token": "target.headers_env",
    "cookie": "target.headers_env",
}
_SECRET_PARAM = re.compile(r"(?i)(key|token|sig|secret|passw|pwd|credential|auth)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def credential_header_problem(name: str) -> str | None:
    """Why a literal header of this name is refused (with the alternative), or None."""
    alternative = _CREDENTIAL_HEADERS.get(name.strip().lower())
    if alternative is None:
        return None
    return (f"a literal {name.strip()} header would store a credential in the scenario and its report; "
            f"put the value in an environment variable and name it with {alternative}")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def header_name_problem(name: str) -> str | None:
    """Why ``name`` is not an HTTP header name (an RFC 9110 token), or None."""
    return None if _HEADER_NAME.fullmatch(name) else "not a valid HTTP header name"


def env_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an environment variable name (the value itself is never repeated), or None.

    A token pasted where its variable's name belongs must not be echoed in 'variable … is not set'."""
    if _ENV_NAME.fullmatch(name):
        return None
    return (f"expected the NAME of an environment variable (letters, digits, '_'; got {len(name)} characters "
            "that are not one — not shown, in case it is the secret itself)")


def url_problem(url: str) -> str | None:
    """URL userinfo is refused: bench does not send it, and a password in a URL ends up in logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return ("credentials in the URL (user:password@) are refused: remove them and send them as a header "
                "from an environment variable, e.g. headers_env = { Authorization = \"MY_BASIC_AUTH\" } "
                "holding 'Basic <base64 user:password>'")
    return None


def url_secrets(url: str) -> list[str]:
    """Values in ``url`` that are credentials: userinfo, and query parameters named like key/token/signature/
    secret/password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out = [v for v in (parts.username, parts.password) if v]
    out += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _SECRET_PARAM.search(k)]
    return out


def header_env_values(headers_env: Mapping[str, str], environ: Mapping[str, str] | None = None,
                      *, file: str | None = None) -> dict[str, str]:
    """``{header: value}`` read from the environment variables ``headers_env`` names (InputError if unset)."""
    env = os.environ if environ is None else environ
    return {header: env_header_value(var, env, file=file, key=f"target.headers_env.{header}",
                                     holds=f"the {header} header") for header, var in headers_env.items()}


def env_header_value(var: str, environ: Mapping[str, str], *, file: str | None, key: str, holds: str = "") -> str:
    """The value of environment variable ``var``, surrounding blanks stripped (a trailing newline is common in
    mounted secrets), to be sent as a header; else one InputError naming the variable, never the value: not a
    variable's name (a token pasted in its place), unset or empty (``holds``: what it should hold), or not one line
    of ASCII."""
    from bench.errors import InputError

    problem = env_name_problem(var)  # a token pasted where its variable's name belongs: never echo it
    if problem:
        raise InputError(problem, file=file, key=key)
    value = environ.get(var, "").strip()
    if not value:
        raise InputError(f"environment variable {var} is not set" + (f" (it should hold {holds})" if holds else ""),
                         file=file, key=key)
    problem = header_value_problem(value)
    if problem:
        raise InputError(f"environment variable {var} {problem} (value not shown)", file=file, key=key)
    return value


class Scrubber:
    """Replaces every known secret value (and its URL-encoded, quoted and Basic forms) with ``***``.

    Built once per run (``scrubber_for``); ``add`` takes values learned later (tokens a TokenSource issued)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        new: set[str] = set()
        for raw in values:
            for v in {raw or "", (raw or "").strip()}:  # as given, and as read from a file or header (stripped)
                if len(v) < _MIN_LEN:
                    continue
                new.update(f for f in (v, quote(v, safe=""), quote_plus(v), base64.b64encode(v.encode()).decode())
                           if len(f) >= _MIN_LEN)
                scheme_and_value = v.split(None, 1)
                if len(scheme_and_value) == 2 and scheme_and_value[0].lower() in ("bearer", "token", "basic"):
                    new.update(self._forms(scheme_and_value[1]))  # the bare credential too
        if new - self._values:
            self._values |= new
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    @staticmethod
    def _forms(v: str) -> set[str]:
        v = v.strip()
        if len(v) < _MIN_LEN:
            return set()
        return {f for f in (v, quote(v, safe=""), quote_plus(v)) if len(f) >= _MIN_LEN}

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def data(self, value: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings) with every string scrubbed."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def scrubber_for(prepared: Prepared, environ: Mapping[str, str] | None = None) -> Scrubber:
    """Every secret value the run will use, read now (unset variables are left to the parts that need them)."""
    env = os.environ if environ is None else environ
    sc = prepared.scenario
    values: list[str] = []

    def from_env(name: object) -> None:
        if isinstance(name, str) and name and env.get(name):
            values.append(env[name])

    def from_file(path: object) -> None:
        if isinstance(path, str | os.PathLike):
            with contextlib.suppress(OSError):
                values.append(Path(path).read_text(encoding="utf-8", errors="replace").strip())

    from_env(sc.target.token_env)
    from_env(sc.target.raw.get("token_env"))
    headers_env = sc.target.raw.get("headers_env")
    if isinstance(headers_env, Mapping):
        for var in headers_env.values():
            from_env(var)
    wallaroo_auth = sc.wallaroo.auth if sc.wallaroo is not None else None  # [wallaroo.auth]: the MLOps user's
    for auth in (sc.auth, wallaroo_auth):  # typed: names of variables and files (file paths already resolved)
        if auth is None:
            continue
        for name in (auth.token_env, auth.client_id_env, auth.client_secret_env, auth.username_env,
                     auth.password_env):
            from_env(name)
        if auth.token_file is not None:
            from_file(auth.token_file)
    values += url_secrets(sc.target.url)
    raw_url = sc.target.raw.get("url")
    if isinstance(raw_url, str):
        values += url_secrets(raw_url)
    token = getattr(prepared.target_config, "token", None)
    if isinstance(token, str):
        values.append(token)
    return Scrubber(values)


def scrub_report(report: Any, scrubber: Scrubber) -> None:
    """Scrub a Report in place before it is written: error samples, metadata, scenario copy, extra sections."""
    if not scrubber:
        return
    from dataclasses import replace

    run = report.run
    run.error_samples = [replace(s, detail=scrubber.text(s.detail)) for s in run.error_samples]
    meta = report.meta
    meta.scenario_text = scrubber.text(meta.scenario_text)
    meta.load = scrubber.data(meta.load)
    meta.target = scrubber.data(meta.target)
    meta.extra = scrubber.data(meta.extra)
    meta.generator_bound_reasons = scrubber.data(meta.generator_bound_reasons)
    report.sections = {k: scrubber.data(rows) for k, rows in report.sections.items()}
