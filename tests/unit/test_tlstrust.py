"""The run's TLS trust: what each kind of client of a run verifies, and which bundles load."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from bench.tlstrust import TlsTrust, ca_bundle_problem


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

