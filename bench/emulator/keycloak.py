"""A Keycloak-like OpenID Connect token endpoint: ``/auth/realms/master/protocol/openid-connect/token``.

Speaks what bench's TokenSource and the Wallaroo SDK use: form body; the confidential client (``api-client``)
authenticated by HTTP Basic (or ``client_id``/``client_secret`` form fields) and refused without its secret;
the public client (``sdk-client``, no secret) the SDK logs users in with; grants ``client_credentials``
(confidential only), ``password`` and ``refresh_token`` (a refresh token only works for the client it was issued
to); ``scope=offline_access`` is reflected in the answer's scope and makes an offline refresh token.
Error bodies and status codes follow Keycloak: 401 ``invalid_client`` for bad client
credentials, 401 ``invalid_grant`` for bad user credentials, 400 ``invalid_grant`` for a bad refresh token,
400 ``unsupported_grant_type`` / ``invalid_request``. As in Keycloak, ``client_credentials`` answers carry no
refresh token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, full_path, headers, read_body, send_json
from bench.emulator.context import EmulatorContext
from bench.emulator.tokens import OFFLINE, SERVICE_ACCOUNT_PREFIX, TokenSigner, ensure_signer

__all__ = ["TOKEN_PATH", "KeycloakEmulator"]

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
_MAX_BODY = 64 * 1024
_NO_STORE = ((b"cache-control", b"no-store"),)


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"error": error, "error_description": description}


class KeycloakEmulator(SubApp):
    """ASGI app for the token endpoint; mount it at ``/auth/realms/`` (or serve it alone)."""

    def __init__(self, ctx: EmulatorContext) -> None:
        self._ctx = ctx

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = full_path(scope)
        realm_path = path.split("/realms/", 1)[-1].rstrip("/")
        if realm_path != "master/protocol/openid-connect/token":
            realm = realm_path.split("/", 1)[0]
            await send_json(send, 404, {"error": "Realm does not exist"} if realm != "master"
                            else {"error": "Unable to find matching target resource method"}, _NO_STORE)
            return
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": "HTTP 405 Method Not Allowed"}, _NO_STORE)
            return
        try:
            body = await read_body(receive, _MAX_BODY)
            status, answer = 200, self._token(headers(scope), body)
        except _OAuthError as exc:
            status, answer = exc.status, exc.body
        except HttpError as exc:  # body over the cap: Keycloak calls that a bad request
            status, answer = 400, {"error": "invalid_request", "error_description": exc.message}
        await send_json(send, status, answer, _NO_STORE)

    def _token(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        try:
            form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise _OAuthError(400, "invalid_request", "Malformed form body") from None
        client = self._authenticate_client(headers.get("authorization"), form)
        public = client == self._ctx.config.public_client_id
        signer = ensure_signer(self._ctx)
        offline = "offline_access" in form.get("scope", "").split()
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            if public:
                raise _OAuthError(400, "unauthorized_client", "Public client not allowed to retrieve service account")
            return self._answer(signer, f"{SERVICE_ACCOUNT_PREFIX}{client}", client, refresh=False)
        if grant == "password":
            username, password = form.get("username", ""), form.get("password", "")
            if not username:
                raise _OAuthError(401, "invalid_request", "Missing parameter: username")
            if not any(hmac.compare_digest(username.encode(), u.encode())
                       and hmac.compare_digest(password.encode(), p.encode())
                       for u, p in self._ctx.config.users):
                raise _OAuthError(401, "invalid_grant", "Invalid user credentials")
            return self._answer(signer, username, client, refresh=True, offline=offline)
        if grant == "refresh_token":
            if not form.get("refresh_token"):
                raise _OAuthError(400, "invalid_request", "Missing parameter: refresh_token")
            claims = signer.refresh_claims(form["refresh_token"])
            subject = claims.get("sub") if claims is not None else None
            if claims is None or not isinstance(subject, str):
                raise _OAuthError(400, "invalid_grant", "Invalid refresh token")
            if claims.get("azp") != client:
                raise _OAuthError(400, "invalid_grant", "Invalid refresh token. Token client and authorized client "
                                  "don't match")
            return self._answer(signer, subject, client, refresh=True, offline=claims.get("typ") == OFFLINE)
        if not grant:
            raise _OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
        raise _OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")

    def _authenticate_client(self, authorization: str | None, form: dict[str, str]) -> str:
        """The authenticated client's id: the public client needs no secret, the confidential one its secret."""
        candidates = [(form.get("client_id", ""), form.get("client_secret"))]
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise _OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials") from None
            raw_id, colon, raw_secret = decoded.partition(":")
            # RFC 6749 §2.3.1: the id and secret are form-encoded before Basic, and Keycloak form-decodes them
            # ('+' is a space, %XX a byte): a client sending a secret with '+' or '%' raw is refused, as there
            candidates = [(unquote_plus(raw_id), unquote_plus(raw_secret) if colon else None)]
        config = self._ctx.config
        for client_id, secret in candidates:
            if client_id and hmac.compare_digest(client_id.encode(), config.public_client_id.encode()):
                return config.public_client_id  # a public client: no secret to check
            if client_id and hmac.compare_digest(client_id.encode(), config.client_id.encode()):
                if not secret:
                    raise _OAuthError(401, "unauthorized_client", "Client secret not provided in request")
                if hmac.compare_digest(secret.encode(), config.client_secret.encode()):
                    return config.client_id
        raise _OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")

    def _answer(self, signer: TokenSigner, subject: str, client: str, *, refresh: bool,
                offline: bool = False) -> dict[str, Any]:
        ttl = self._ctx.config.token_ttl_s
        answer: dict[str, Any] = {
            "access_token": signer.issue(subject, ttl, client=client),
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "offline_access profile email" if offline else "profile email",
        }
        if refresh:
            answer["refresh_token"] = signer.issue_refresh(subject, client=client, offline=offline)
            answer["refresh_expires_in"] = 0 if offline else int(signer.refresh_ttl_s)  # offline: no idle expiry
            answer["session_state"] = "emulated"
        return answer
