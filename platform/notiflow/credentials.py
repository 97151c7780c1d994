"""Who is calling (SPEC §7): scopes, principals, API keys and end users' tokens. Pure: no I/O here.

API keys are ``nf_`` + 256 random bits. Only their SHA-256 is stored: a slow password hash (bcrypt, argon2)
protects guessable secrets, and nothing about a 256-bit random key is guessable, so a fast hash is as safe
and lets a gateway find the key by an indexed lookup on every request without spending CPU on it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from notiflow.config import Settings
from notiflow.errors import Unauthorized
from notiflow.models import user_id_problem
from notiflow.roles import AuthSettings

KEY_PREFIX = "nf_"
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: An HS256 secret shorter than this could be brute-forced offline from one token.
MIN_JWT_SECRET_BYTES = 32


class Scope(StrEnum):
    """What an API key may do. Scopes do not imply each other: an admin key cannot send unless it says so."""

    SEND = "send"  # POST /notifications, /notifications/batch
    READ = "read"  # GET /notifications/{id}; offline endpoints of any user (sockets: end users only)
    ADMIN = "admin"  # /dlq, /dashboard, key management


ALL_SCOPES = frozenset(Scope)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``"send,read"`` -> {SEND, READ}; ValueError naming what is not a scope."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - {s.value for s in Scope})
    if unknown or not names:
        raise ValueError(f"scopes must be a non-empty list of {', '.join(Scope)}; not: {', '.join(unknown)}")
    return frozenset(Scope(n) for n in names)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an API key (``scopes``), an end user (``user_id``), or anyone (auth off)."""

    kind: str  # "key", "user" or "anonymous"
    name: str  # the key's name, the user id, or "anonymous"
    scopes: frozenset[Scope] = frozenset()
    user_id: str | None = None
    expires_at: float | None = None  # a token's exp (epoch seconds); None: does not expire
    #: Idempotency keys are unique per this string: two producers may pick the same key without colliding.
    idempotency_scope: str = ""

    @property
    def identity(self) -> str:
        """A stable, non-secret name of the caller, e.g. for per-client rate limits: ``key:<id>``,
        ``bootstrap:<hash prefix>``, ``user:<id>`` or ``anonymous``."""
        if self.idempotency_scope:
            return self.idempotency_scope
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"

    def allows(self, scope: Scope) -> bool:
        return self.kind == "anonymous" or scope in self.scopes

    def may_act_for(self, user_id: str) -> bool:
        """May read and acknowledge ``user_id``'s notifications: that user's own token, or a read key."""
        if self.kind == "user":
            return self.user_id == user_id
        return self.allows(Scope.READ)

    def may_open_stream(self, user_id: str) -> bool:
        """May open ``GET /sse/{user_id}``: whoever may open the socket, or an API key with ``read`` (a
        backend relaying the stream to its own clients; the stream re-checks the key, gateway/sse.py)."""
        return self.may_open_socket(user_id) or (self.kind == "key" and self.allows(Scope.READ))

    def may_open_socket(self, user_id: str) -> bool:
        """May open ``/ws/{user_id}``: that user's own token (or anyone, auth off). Never an API key: a key
        is revoked on the server, a socket held by one would outlive its revocation, and its sockets would
        count against the user's own cap; a token's socket closes at its ``exp``."""
        return self.kind == "anonymous" or (self.kind == "user" and self.user_id == user_id)


ANONYMOUS = Principal("anonymous", "anonymous")


# --- API keys ------------------------------------------------------------------------------------


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def bootstrap_principals(keys: list[str]) -> list[tuple[str, Principal]]:
    """(hash, principal) of each ``NOTIFLOW_API_KEYS`` entry; each holds every scope."""
    out = []
    for key in keys:
        digest = key_hash(key)
        out.append((digest, Principal("key", f"bootstrap-{digest[:8]}", ALL_SCOPES,
                                      idempotency_scope=f"bootstrap:{digest[:16]}")))
    return out


def match_bootstrap(token: str, table: list[tuple[str, Principal]]) -> Principal | None:
    """The bootstrap key ``token`` is, compared in constant time against every entry (no early exit)."""
    digest = key_hash(token)
    found = None
    for stored, principal in table:
        if hmac.compare_digest(stored, digest):
            found = principal
    return found


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith(KEY_PREFIX)


# --- end users' tokens ---------------------------------------------------------------------------


def _public_key_algorithm(pem: str) -> tuple[str, Any]:
    key = load_pem_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ValueError("NOTIFLOW_JWT_PUBLIC_KEY must be an RSA key (RS256) or a P-256 EC key (ES256)")


class TokenVerifier:
    """Verifies end users' JWTs with PyJWT: signature, ``exp`` (required, at most ``jwt_max_lifetime_s`` after
    ``iat``, or after now without one), ``sub`` (the user id), ``aud`` (the configured one; none configured:
    a token must carry none; required with a public key) and ``iss`` when configured. The algorithm is fixed
    by the configured key, never by the token."""

    def __init__(self, settings: AuthSettings) -> None:
        self._keys: dict[str, Any] = {}
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value().encode()
            if len(secret) < MIN_JWT_SECRET_BYTES:
                raise ValueError(f"NOTIFLOW_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes")
            self._keys["HS256"] = secret
        if settings.jwt_public_key is not None:
            # A public key is an identity provider's, which signs tokens for other services too: only the
            # audience tells notiflow's tokens from theirs.
            if not settings.jwt_audience:
                raise ValueError("NOTIFLOW_JWT_PUBLIC_KEY needs NOTIFLOW_JWT_AUDIENCE: without it, a token the "
                                 "identity provider issued to any other service would be accepted here")
            alg, key = _public_key_algorithm(settings.jwt_public_key.get_secret_value())
            self._keys[alg] = key
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s
        self._max_lifetime_s = settings.jwt_max_lifetime_s

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str) -> Principal:
        try:
            alg = str(jwt.get_unverified_header(token).get("alg"))
            key = self._keys.get(alg)
            if key is None:
                raise Unauthorized(f"token algorithm {alg!r} is not accepted", code="invalid_token")
            # aud is always verified: with no audience configured, a token that names one (it was meant
            # for a service that checks it) is refused rather than taken for ours.
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired", code="token_expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
        sub = claims["sub"]
        if problem := user_id_problem(sub):
            raise Unauthorized(f"token sub {problem}", code="invalid_token")
        exp = float(claims["exp"])
        # A token's socket lives until its exp: a lifetime bound is what bounds a stolen token's use.
        issued = float(claims["iat"]) if isinstance(claims.get("iat"), (int, float)) else time.time()
        if exp - issued > self._max_lifetime_s + self._leeway:
            raise Unauthorized(f"token lifetime exceeds {self._max_lifetime_s:g} s (NOTIFLOW_JWT_MAX_LIFETIME_S)",
                               code="invalid_token")
        return Principal("user", sub, user_id=sub, expires_at=exp)


def issue_token(settings: Settings, user_id: str, ttl_s: float = 3600.0) -> str:
    """An HS256 token for ``user_id`` signed with ``NOTIFLOW_JWT_SECRET`` (for `notiflow dev --auth` and
    `notiflow token`; production tokens come from the application's own identity provider)."""
    if settings.jwt_secret is None:
        raise ValueError("NOTIFLOW_JWT_SECRET is not set: cannot sign a token")
    if ttl_s > settings.jwt_max_lifetime_s:
        raise ValueError(f"a token may live at most NOTIFLOW_JWT_MAX_LIFETIME_S = {settings.jwt_max_lifetime_s:g} s")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + int(ttl_s)}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
