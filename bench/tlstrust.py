"""Which TLS certificates a run trusts, for every HTTPS client it opens: the engines' and the side channels'.

Why one place: a scenario's ``[engine] insecure`` / ``ca_bundle`` used to reach the engines only. A KServe server
with a private CA then failed its readiness check (httpx's default trust store) before any load; UbiOps batch
mode, the token endpoint, the Wallaroo API, the metrics scrape and Locust users ignored the bundle too.
``ca_bundle`` is the trust root of every client of the run. ``insecure`` skips verification only on connections
to the target's own server (its inference, readiness and metrics routes): credentials sent to another host (a
token endpoint, the MLOps API) are never sent unverified. A client whose scenario sets neither keeps its own
default trust store (httpx's and geventhttpclient's: certifi's; the engines': the system's).
"""

from __future__ import annotations

import os
import ssl
import sys
from dataclasses import dataclass

from bench.inpath import input_problem

__all__ = ["NO_H2_HINT", "UNTRUSTED_HINT", "TlsTrust", "ca_bundle_problem", "client_context", "tls_hint",
           "untrusted"]

UNTRUSTED_HINT = "its certificate is not trusted: give its CA with --ca-bundle or [engine] ca_bundle"
MISMATCH_HINT = ("its certificate is not issued for the host in the URL (hostname or IP address mismatch): use a "
                 "name the certificate names, or a Host header naming it")
EXPIRED_HINT = "its certificate has expired or is not valid yet: the server needs a current certificate"
NO_H2_HINT = ("the server did not offer HTTP/2 in ALPN (no application protocol): run without --http2, or enable "
              "h2 on the server")
_INSECURE = ", or skip the check with --insecure"


def untrusted(error_text: str) -> bool:
    """Whether an error's text is a certificate verification failure: final, unlike a server not up yet, so
    callers stop waiting and say ``tls_hint``'s hint."""
    return "CERTIFICATE_VERIFY_FAILED" in error_text


def tls_hint(error_text: str, *, insecure: bool = True) -> str | None:
    """What to do about a TLS failure whose text (an exception or a report's sample) is ``error_text``, or None
    when it is not one bench can name. Why per reason: a hostname mismatch or an expired certificate is not fixed
    by a CA bundle (and was reported as one, even when the bundle had been given); a server without h2 in ALPN
    has no certificate problem at all. ``insecure``: the failed host is the target's own, where --insecure
    applies (never a token endpoint or MLOps API, see the module doc)."""
    lowered = error_text.lower()
    if "no application protocol" in lowered:
        return NO_H2_HINT
    if not untrusted(error_text):
        return None
    if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        hint = MISMATCH_HINT
    elif "has expired" in lowered or "not yet valid" in lowered:
        hint = EXPIRED_HINT
    else:  # self-signed, unknown issuer, incomplete chain: the trust store lacks its CA
        hint = UNTRUSTED_HINT
    return hint + _INSECURE if insecure else hint

def client_context(verify: bool, ca_bundle: str | None, cls: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A client context built as ``ssl.create_default_context`` builds one (SSLKEYLOGFILE included), of class
    ``cls``: ``ca_bundle`` (a PEM file) replaces the system's trust roots; ``verify=False`` checks nothing."""
    ctx = cls(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname, as the default context
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ca_bundle_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as a trust root (None when it loads): checked when the scenario is read, so a
    wrong path is one line and exit 2, not a traceback when the first connection opens."""
    problem = input_problem(path)
    if problem is not None and problem != "file not found":  # a FIFO or a device: ssl would read it forever
        return f"{path}: {problem}"
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return f"no such file: {path}"
    except IsADirectoryError:
        return f"a directory, not a PEM file: {path}"
    except PermissionError:
        return f"not readable: {path}"
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"no PEM certificate could be read from {path} ({type(exc).__name__})"
    return None


@dataclass(frozen=True)
class TlsTrust:
    """A run's TLS trust (the scenario's ``[engine] insecure`` and ``ca_bundle``)."""

    insecure: bool = False
    ca_bundle: str | None = None

    @property
    def default(self) -> bool:
        """The scenario set neither: every client keeps its own default trust store."""
        return self.ca_bundle is None and not self.insecure

    def context(self, *, target: bool) -> ssl.SSLContext | bool:
        """What a side-channel client gets as ``verify`` (httpx), for the target's own server (``target``) or
        another host (never unverified): True, the client's own default trust store, when the scenario set
        neither; else a context with the bundle as its trust root, or checking nothing."""
        if self.default or (self.ca_bundle is None and not target):
            return True
        return client_context(not (self.insecure and target), self.ca_bundle)
