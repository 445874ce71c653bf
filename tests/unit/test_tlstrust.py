"""The run's TLS trust: what each kind of client of a run verifies, and which bundles load."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from bench.tlstrust import TlsTrust, ca_bundle_problem, tls_hint


def test_insecure_skips_verification_only_towards_the_target() -> None:
    """Credentials sent to another host (a token endpoint, the MLOps API) never go unverified."""
    trust = TlsTrust(insecure=True)
    target = trust.context(target=True)
    assert isinstance(target, ssl.SSLContext) and target.verify_mode == ssl.CERT_NONE
    assert trust.context(target=False) is True  # verified, with the client's own default trust store
    assert TlsTrust().context(target=True) is True


def test_a_ca_bundle_is_the_trust_root_of_every_client(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    assert ca_bundle_problem(str(pem)) is None
    for target in (True, False):
        ctx = TlsTrust(ca_bundle=str(pem)).context(target=target)
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
        certs = ctx.get_ca_certs()
        assert len(certs) == 1 and "trustme" in str(certs[0]["subject"])  # the bundle replaces the system roots


def test_unreadable_bundles_are_named(tmp_path: Path) -> None:
    assert "no such file" in (ca_bundle_problem(str(tmp_path / "nope.pem")) or "")
    assert "directory" in (ca_bundle_problem(str(tmp_path)) or "")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x00\x01 not a certificate")
    assert "no PEM certificate" in (ca_bundle_problem(str(junk)) or "")



@pytest.mark.parametrize(("text", "says", "not_says"), [
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid "
     "for '127.0.0.1'. (_ssl.c:1006)", "mismatch", "give its CA"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid for "
     "'api.example'. (_ssl.c:1006)", "mismatch", "give its CA"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)",
     "has expired", "give its CA"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)",
     "give its CA with --ca-bundle", "mismatch"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate",
     "give its CA with --ca-bundle", "expired"),
    ("SSLError(1, '[SSL: TLSV1_ALERT_NO_APPLICATION_PROTOCOL] tlsv1 alert no application protocol (_ssl.c:1006)')",
     "did not offer HTTP/2 in ALPN", "certificate"),
])
def test_the_tls_hint_names_the_reason(text: str, says: str, not_says: str) -> None:
    """A CA bundle fixes neither a certificate for another name nor an expired one, nor a server without h2."""
    hint = tls_hint(text)
    assert hint is not None and says in hint and not_says not in hint, hint
    assert tls_hint("ConnectError: [Errno 111] Connection refused") is None


def test_insecure_is_offered_only_where_it_applies() -> None:
    text = "CERTIFICATE_VERIFY_FAILED certificate verify failed: certificate has expired"
    assert "--insecure" in (tls_hint(text) or "")
    assert "--insecure" not in (tls_hint(text, insecure=False) or "x --insecure")
