"""Secrets by value: one ``Scrubber`` per run, built when the run is prepared, applied where bytes leave bench.

Pattern-based redaction (``Bearer …``, ``token = …``) misses a token a server echoes in a 500 body or an
``X-Api-Key`` value; this module knows the *values* — ``token_env`` / ``headers_env`` / ``[auth]`` variables and
files, the UbiOps token, secret-named URL query parameters, and (added while the run goes) every token the
TokenSource issued — and replaces each, with its URL-encoded and Basic forms, by ``***``. The boundaries that
apply it: the report (error samples, metadata, scenario copy — so HTML and Markdown rendered later inherit it),
the checkpoint file, and the messages bench prints.

Also the input rules that keep secrets out of scenario files: literal credential headers — and, in a scenario file,
any header that looks like one — are refused (naming the ``*_env`` alternative) and so is URL userinfo in every URL
key (``http://user:pass@host``): bench does not send it, and a password in a scenario file or on a command line is
one that leaks.
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

# the rules shared with the engines (re-exported)
from bench.headers import header_value_problem, host_value_problem, reserved_header_problem
from bench.inpath import input_problem

if TYPE_CHECKING:
    from bench.prepared import Prepared

__all__ = [
    "MASK",
    "SECRET_NAME",
    "URL_KEYS",
    "Scrubber",
    "credential_header_problem",
    "env_header_value",
    "env_name_problem",
    "header_env_values",
    "header_name_problem",
    "header_value_problem",
    "host_value_problem",
    "literal_header_problem",
    "looks_like_credential",
    "reserved_header_problem",
    "scenario_urls",
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
# query parameters that carry credentials: API keys, tokens, signatures (S3/GCS/SAS `sig`), Azure Functions' `code`
_SECRET_PARAM = re.compile(r"(?i)(key|token|sig|secret|passw|pwd|credential|auth)|^code$")
# names that say "a secret": redact_scenario blanks scenario keys so named, and a literal header so named is refused
SECRET_NAME = re.compile(r"(?i)(token|secret|passw|pwd|authorization|api[_-]?key|apikey|private|credential|"
                         r"(^|[_.-])key$|cookie|bearer)")
_SECRET_HEADER = re.compile(r"(?i)(auth|signature)")  # header names beyond SECRET_NAME: X-Upstream-Auth, X-…-Signature
_PLAIN_HEADERS = frozenset({"idempotency-key"})  # named like a key, never a credential
# a header value that is a credential whatever its header's name: an auth scheme and a credential-sized word
# ("basic tier" is not one), or a bare JWT
_CREDENTIAL_VALUE = re.compile(r"(?i)^\s*((bearer|basic|token|digest|negotiate|ntlm|oauth|apikey|api-key|key|ssws|dpop|"
                               r"sharedaccesssignature|aws4-hmac-sha256|hmac)\s+\S{6}|eyJ[\w-]+\.[\w-]+\.)")
_BARE_SCHEMES = ("bearer", "token", "basic")
# where a scenario holds a URL ((table, …, key) paths): every one is refused with userinfo and scrubbed of the
# credentials it carries (url_problem, url_secrets)
URL_KEYS = (("target", "url"), ("server_metrics", "url"), ("wallaroo", "api_url"), ("auth", "token_url"),
            ("wallaroo", "auth", "token_url"))
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def credential_header_problem(name: str) -> str | None:
    """Why a literal header of this name is refused (with the alternative), or None."""
    alternative = _CREDENTIAL_HEADERS.get(name.strip().lower())
    if alternative is None:
        return None
    return (f"a literal {name.strip()} header would store a credential in the scenario and its report; "
            f"put the value in an environment variable and name it with {alternative}")


def literal_header_problem(name: str, value: str) -> str | None:
    """Why a literal header in a scenario file is refused: a credential header (``credential_header_problem``), or
    one that looks like a credential (``looks_like_credential``) — the value is never repeated."""
    problem = credential_header_problem(name)
    if problem is None and looks_like_credential(name, value):
        problem = (f"{name.strip()} looks like a credential (its name, or an auth scheme such as 'Bearer …' in its "
                   "value) and a scenario file would store it in every report: put the value in an environment "
                   "variable and name it with target.headers_env")
    return problem


def looks_like_credential(name: str, value: str) -> bool:
    """A header whose name says secret (X-Goog-Api-Key, X-Upstream-Auth, …) or whose value is an auth scheme and
    its credential (``Bearer …``, ``Basic …``) or a bare JWT."""
    name = name.strip()
    if name.lower() in _PLAIN_HEADERS:
        return bool(_CREDENTIAL_VALUE.match(value))
    return bool(SECRET_NAME.search(name) or _SECRET_HEADER.search(name) or _CREDENTIAL_VALUE.match(value))


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def header_name_problem(name: str) -> str | None:
    """Why a user may not set header ``name``: not an RFC 9110 token, or one bench sets itself
    (``reserved_header_problem``: Content-Length, Connection, pseudo-headers, …), or None."""
    if problem := reserved_header_problem(name):
        return problem
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


def scenario_urls(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(dotted key, URL)`` for every URL a scenario document holds (``URL_KEYS``) — "embedded" included."""
    out = []
    for path in URL_KEYS:
        node: Any = doc
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, str):
            out.append((".".join(path), node))
    return out


def header_env_values(headers_env: Mapping[str, str], environ: Mapping[str, str] | None = None,
                      *, file: str | None = None) -> dict[str, str]:
    """``{header: value}`` read from the environment variables ``headers_env`` names (InputError if unset)."""
    from bench.errors import InputError

    env = os.environ if environ is None else environ
    out = {header: env_header_value(var, env, file=file, key=f"target.headers_env.{header}",
                                    holds=f"the {header} header") for header, var in headers_env.items()}
    for header, value in out.items():
        if header.lower() == "host" and host_value_problem(value):  # (the value is not repeated: a secret)
            raise InputError(f"environment variable {headers_env[header]} is not a host or host:port (value not "
                             "shown)", file=file, key=f"target.headers_env.{header}")
    return out


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
        state = "is not set" if var not in environ else "is empty"
        raise InputError(f"environment variable {var} {state}" + (f" (it should hold {holds})" if holds else ""),
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
                new |= self._forms(v)
                scheme_and_value = v.split(None, 1)
                if len(scheme_and_value) == 2 and scheme_and_value[0].lower() in _BARE_SCHEMES:
                    bare = scheme_and_value[1].strip()
                    new |= self._forms(bare)  # the bare credential too
                    if scheme_and_value[0].lower() == "basic":
                        new |= self._basic_forms(bare)
        if new - self._values:
            self._values |= new
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    @staticmethod
    def _forms(v: str) -> set[str]:
        """``v`` as given, URL-encoded (both ways) and base64-encoded: how servers echo what they were sent."""
        if len(v) < _MIN_LEN:
            return set()
        forms = (v, quote(v, safe=""), quote_plus(v), base64.b64encode(v.encode()).decode())
        return {f for f in forms if len(f) >= _MIN_LEN}

    @classmethod
    def _basic_forms(cls, blob: str) -> set[str]:
        """A Basic blob decoded: ``user:password`` and the password (a server may echo either; the user name alone
        is no secret and would blank ordinary text)."""
        try:
            decoded = base64.b64decode(blob, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return set()
        _user, sep, password = decoded.partition(":")
        return cls._forms(decoded) | (cls._forms(password) if sep else set())

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def sample(self, text: str) -> str:
        """``text`` scrubbed, and a trailing fragment that begins a secret (>= 4 characters) masked as well.

        For error evidence, which is cut (``ERROR_DETAIL_BYTES``) before it is scrubbed: the cut can fall inside
        an echoed secret, and a 1-2 KB JWT never fits whole. Samples are few, so this costs the hot path nothing."""
        text = self.text(text)
        if self._pattern is None:
            return text
        body = text.rstrip("\ufffd")  # a cut inside a multi-byte character
        cut = len(body)
        for form in self._values:
            head = form[:_MIN_LEN]
            i = body.find(head, max(0, len(body) - len(form)))
            while 0 <= i < cut:
                if form.startswith(body[i:]):
                    cut = i
                    break
                i = body.find(head, i + 1)
        return text if cut == len(body) else body[:cut] + MASK

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
        if isinstance(path, str | os.PathLike) and input_problem(os.fspath(path)) is None:  # not a FIFO (it
            with contextlib.suppress(OSError):  # blocks): the token reader refuses it
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
    for _key, url in scenario_urls(sc.source):  # every URL key: [server_metrics] url, [wallaroo] api_url, …
        values += url_secrets(url)
    literal = sc.target.raw.get("headers")  # --header values a command line may carry (a scenario file may not)
    if isinstance(literal, Mapping):
        values += [v for k, v in literal.items() if isinstance(v, str) and looks_like_credential(str(k), v)]
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
    run.error_samples = [replace(s, detail=scrubber.sample(s.detail)) for s in run.error_samples]
    meta = report.meta
    meta.scenario_text = scrubber.text(meta.scenario_text)
    meta.load = scrubber.data(meta.load)
    meta.target = scrubber.data(meta.target)
    meta.extra = scrubber.data(meta.extra)
    meta.generator_bound_reasons = scrubber.data(meta.generator_bound_reasons)
    report.sections = {k: scrubber.data(rows) for k, rows in report.sections.items()}
