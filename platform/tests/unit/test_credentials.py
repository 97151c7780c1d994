"""Token and key verification without I/O: PyJWT's checks as configured, key format and hashing,
scopes, and the redaction of credentials from log lines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from notiflow.config import Settings
from notiflow.credentials import (
    ANONYMOUS,
    KEY_PREFIX,
    Principal,
    Scope,
    TokenVerifier,
    bootstrap_principals,
    issue_token,
    key_hash,
    looks_like_jwt,
    match_bootstrap,
    new_api_key,
    parse_scopes,
)
from notiflow.errors import Unauthorized
from notiflow.logs import JsonFormatter, redact

SECRET = "unit-test-secret-that-is-long-enough"


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def _token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=alg)


def _pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture
def hs() -> TokenVerifier:
    return TokenVerifier(_settings(jwt_secret=SecretStr(SECRET)))


def test_a_valid_token_names_its_user(hs: TokenVerifier) -> None:
    who = hs.verify(_token({"sub": "alice"}))
    assert (who.kind, who.user_id) == ("user", "alice")
    assert who.expires_at is not None and who.expires_at > time.time()
    assert who.may_act_for("alice") and not who.may_act_for("bob")
    assert not any(who.allows(s) for s in Scope)


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": "alice", "exp": int(time.time()) - 60}, "token_expired"),
        ({"sub": "a/b"}, "invalid_token"),
        ({"sub": ""}, "invalid_token"),
        ({"exp": int(time.time()) + 60}, "invalid_token"),  # no sub
    ],
)
def test_refused_claims(hs: TokenVerifier, claims: dict[str, Any], code: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        hs.verify(_token(claims))
    assert refused.value.code == code and refused.value.status == 401


def test_exp_is_required(hs: TokenVerifier) -> None:
    with pytest.raises(Unauthorized, match="exp"):
        hs.verify(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"))


def test_leeway_admits_small_clock_skew_only() -> None:
    verifier = TokenVerifier(_settings(jwt_secret=SecretStr(SECRET), jwt_leeway_s=30))
    verifier.verify(_token({"sub": "alice", "exp": int(time.time()) - 5}))
    with pytest.raises(Unauthorized):
        verifier.verify(_token({"sub": "alice", "exp": int(time.time()) - 60}))


@pytest.mark.parametrize("token", [
    "not-a-token", "a.b.c",
    _token({"sub": "alice"}, key="another-secret-that-is-long-enough!"),
    jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, None, algorithm="none"),
])
def test_forged_malformed_and_unsigned_tokens_are_refused(hs: TokenVerifier, token: str) -> None:
    with pytest.raises(Unauthorized):
        hs.verify(token)


def test_rs256_and_es256_from_a_pem_public_key() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for private, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        verifier = TokenVerifier(_settings(jwt_public_key=SecretStr(_pem(private)), jwt_audience="notiflow"))
        assert verifier.verify(_token({"sub": "bob", "aud": "notiflow"}, private, alg)).user_id == "bob"
        with pytest.raises(Unauthorized):  # the algorithm is the key's, not the token's choice
            verifier.verify(_token({"sub": "bob"}, SECRET, "HS256"))


def test_algorithm_confusion_with_the_public_key_as_hmac_secret_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(private)
    verifier = TokenVerifier(_settings(jwt_public_key=SecretStr(pem), jwt_audience="notiflow"))

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(f'{{"sub":"bob","aud":"notiflow","exp":{int(time.time()) + 600}}}'.encode())
    sig = b64(hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthorized):
        verifier.verify(f"{head}.{body}.{sig}")


def test_audience_and_issuer_when_configured() -> None:
    verifier = TokenVerifier(_settings(jwt_secret=SecretStr(SECRET), jwt_audience="notiflow", jwt_issuer="idp"))
    assert verifier.verify(_token({"sub": "a", "aud": "notiflow", "iss": "idp"})).user_id == "a"
    for claims in ({"sub": "a", "aud": "other", "iss": "idp"}, {"sub": "a", "aud": "notiflow", "iss": "x"},
                   {"sub": "a"}):
        with pytest.raises(Unauthorized):
            verifier.verify(_token(claims))


def test_with_no_audience_configured_a_token_meant_for_another_service_is_refused(hs: TokenVerifier) -> None:
    """Issue 25, finding 8: a token whose ``aud`` names another service was accepted when none was set."""
    with pytest.raises(Unauthorized, match="audience"):
        hs.verify(_token({"sub": "a", "aud": "billing-service"}))
    assert hs.verify(_token({"sub": "a"})).user_id == "a"


def test_a_public_key_without_an_audience_refuses_to_start() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="NOTIFLOW_JWT_AUDIENCE"):
        TokenVerifier(_settings(jwt_public_key=SecretStr(_pem(private))))


def test_a_token_living_longer_than_the_max_lifetime_is_refused() -> None:
    """Issue 25, finding 8: ``exp`` in the year 3000 was accepted."""
    verifier = TokenVerifier(_settings(jwt_secret=SecretStr(SECRET), jwt_max_lifetime_s=3600, jwt_leeway_s=0))
    now = int(time.time())
    year_3000 = 32503680000
    for claims in ({"sub": "a", "exp": year_3000}, {"sub": "a", "iat": now, "exp": year_3000},
                   {"sub": "a", "iat": now - 60, "exp": now + 3600}, {"sub": "a", "exp": now + 3700}):
        with pytest.raises(Unauthorized, match="lifetime exceeds 3600 s") as refused:
            verifier.verify(_token(claims))
        assert refused.value.code == "invalid_token", claims
    assert verifier.verify(_token({"sub": "a", "iat": now, "exp": now + 3600})).user_id == "a"
    assert verifier.verify(_token({"sub": "a", "exp": now + 3500})).user_id == "a"
    assert _settings().jwt_max_lifetime_s == 86_400
    with pytest.raises(ValueError, match="at most"):
        issue_token(_settings(jwt_secret=SecretStr(SECRET), jwt_max_lifetime_s=60), "a", ttl_s=61)


def test_short_hs256_secrets_and_unusable_keys_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenVerifier(_settings(jwt_secret=SecretStr("short")))
    with pytest.raises(ValueError):
        TokenVerifier(_settings(jwt_public_key=SecretStr("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"),
                                jwt_audience="notiflow"))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        TokenVerifier(_settings(jwt_public_key=SecretStr(_pem(p384)), jwt_audience="notiflow"))


def test_issue_token_round_trips() -> None:
    s = _settings(jwt_secret=SecretStr(SECRET), jwt_audience="aud", jwt_issuer="iss")
    assert TokenVerifier(s).verify(issue_token(s, "carol", ttl_s=60)).user_id == "carol"
    with pytest.raises(ValueError):
        issue_token(_settings(), "carol")


def test_api_keys_are_random_prefixed_and_stored_as_sha256() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith(KEY_PREFIX) and len(a) >= len(KEY_PREFIX) + 43
    assert key_hash(a) == key_hash(a) != key_hash(b) and len(key_hash(a)) == 64
    assert not looks_like_jwt(a) and looks_like_jwt(_token({"sub": "x"}))


def test_bootstrap_keys_hold_every_scope_and_match_exactly() -> None:
    table = bootstrap_principals(["first-key", "second-key"])
    found = match_bootstrap("second-key", table)
    assert found is not None and all(found.allows(s) for s in Scope) and found.may_act_for("anyone")
    assert found.idempotency_scope.startswith("bootstrap:") and "second-key" not in found.idempotency_scope
    assert match_bootstrap("second-ke", table) is None and match_bootstrap("", table) is None


def test_scopes_do_not_imply_each_other() -> None:
    admin = Principal("key", "ops", frozenset({Scope.ADMIN}))
    assert admin.allows(Scope.ADMIN) and not admin.allows(Scope.SEND) and not admin.may_act_for("bob")
    reader = Principal("key", "backend", frozenset({Scope.READ}))
    assert reader.may_act_for("bob") and not reader.allows(Scope.SEND)
    assert ANONYMOUS.allows(Scope.ADMIN) and ANONYMOUS.may_act_for("bob")
    assert ANONYMOUS.identity == "anonymous" and Principal("user", "bob", user_id="bob").identity == "user:bob"


def test_parse_scopes() -> None:
    assert parse_scopes("send, read") == {Scope.SEND, Scope.READ}
    for bad in ("", "send,write", ","):
        with pytest.raises(ValueError):
            parse_scopes(bad)


def test_secrets_are_masked_in_settings() -> None:
    s = _settings(jwt_secret=SecretStr(SECRET), api_keys="k-one,k-two")
    assert [k.get_secret_value() for k in s.api_keys] == ["k-one", "k-two"]
    for text in (repr(s), str(s), str(s.model_dump())):
        assert SECRET not in text and "k-one" not in text


def test_log_lines_never_carry_credentials() -> None:
    jwt_text = _token({"sub": "alice"})
    key = new_api_key()
    line = f'127.0.0.1 - "WebSocket /ws/alice?token={jwt_text}&x=1" Authorization: Bearer {key}'
    masked = redact(line)
    assert jwt_text not in masked and key not in masked and "/ws/alice?token=[redacted]&x=1" in masked
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "%s", (line,), None)
    record.url = f"/notifications/offline/alice?token={jwt_text}"
    out = JsonFormatter("node").format(record)
    assert jwt_text not in out and key not in out


def test_secrets_init_writes_once_and_settings_read_the_files(tmp_path: Any, capsys: Any) -> None:
    import argparse

    from notiflow.cli_auth import cmd_secrets_init

    folder = tmp_path / "secrets"
    assert cmd_secrets_init(argparse.Namespace(dir=folder)) == 0
    key = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert key.startswith(KEY_PREFIX)
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert cmd_secrets_init(argparse.Namespace(dir=folder)) == 0  # idempotent: nothing is replaced
    assert {p.name: p.read_text() for p in folder.iterdir()} == first
    assert "nothing changed" in capsys.readouterr().out and all(p.stat().st_mode & 0o077 == 0 for p in folder.iterdir())
    s = Settings(_env_file=None, _secrets_dir=str(folder))  # type: ignore[call-arg]
    assert [k.get_secret_value() for k in s.api_keys] == [key]
    assert s.jwt_secret is not None and len(s.jwt_secret.get_secret_value()) >= 32
