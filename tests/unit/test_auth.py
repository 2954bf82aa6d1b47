"""Tokens, keys and passwords: what the identity signs is what every service accepts, only that."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from identity import keys
from identity.throttle import LoginThrottle
from identity.tokens import HashGate, Signer, hash_password, verify_password
from sagakit import auth
from sagakit.errors import ApiError


def _key_set(directory: Path) -> auth.KeySet:
    return auth.KeySet((directory / keys.PUBLIC).read_text)


def test_a_token_the_identity_signs_is_verified_with_the_public_set(tmp_path):
    keys.init(tmp_path)
    signer = Signer(keys.load(tmp_path), 900)
    token = signer.issue("cust-1", ["orders"], "customer", email="ana@example.com", name="Ana")
    assert token["token_type"] == "bearer" and token["expires_in"] == 900
    caller = auth.verify(token["access_token"], _key_set(tmp_path))
    assert caller.subject == "cust-1" and caller.scopes == {"orders"}
    assert caller.kind == "customer" and caller.email == "ana@example.com"
    assert not caller.is_operator and caller.owns("cust-1") and not caller.owns("cust-2")


def test_the_public_set_holds_no_private_key(tmp_path):
    keys.init(tmp_path)
    public = json.loads((tmp_path / keys.PUBLIC).read_text())
    assert public["keys"] and all("d" not in k for k in public["keys"])
    assert oct((tmp_path / keys.PRIVATE).stat().st_mode & 0o777) == "0o600"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": auth.ISSUER, "aud": auth.AUDIENCE, "sub": "x", "iat": now, "exp": now + 60,
            "scope": "ops", **overrides}


@pytest.mark.parametrize("bad", [
    {"exp": int(time.time()) - 3600},  # expired
    {"exp": int(time.time()) - 1},  # just expired: the expiry is exact, no leeway
    {"aud": "someone-else"},
    {"iss": "not-our-identity"},
])
def test_expired_or_foreign_tokens_are_401(tmp_path, bad):
    keys.init(tmp_path)
    newest = keys.load(tmp_path)["keys"][0]
    token = jwt.encode(_claims(**bad), jwt.PyJWK(newest), algorithm="EdDSA",
                       headers={"kid": newest["kid"]})
    with pytest.raises(ApiError) as raised:
        auth.verify(token, _key_set(tmp_path))
    assert raised.value.status == 401
    assert 'error="invalid_token"' in raised.value.headers["WWW-Authenticate"]


def test_a_token_from_a_clock_a_little_ahead_is_valid_at_once(tmp_path):
    keys.init(tmp_path)
    newest = keys.load(tmp_path)["keys"][0]
    ahead = int(time.time()) + auth.LEEWAY_SECONDS // 2
    token = jwt.encode(_claims(iat=ahead, nbf=ahead), jwt.PyJWK(newest), algorithm="EdDSA",
                       headers={"kid": newest["kid"]})
    assert auth.verify(token, _key_set(tmp_path)).subject == "x"


def test_a_token_signed_by_another_key_or_none_is_401(tmp_path):
    keys.init(tmp_path)
    stranger = keys.new_key()
    forged = jwt.encode(_claims(), jwt.PyJWK(stranger), algorithm="EdDSA",
                        headers={"kid": keys.load(tmp_path)["keys"][0]["kid"]})
    unsigned = jwt.encode(_claims(), "", algorithm="none")  # "none" takes no key
    for token in (forged, unsigned, "not.a.token"):
        with pytest.raises(ApiError) as raised:
            auth.verify(token, _key_set(tmp_path))
        assert raised.value.status == 401


def test_after_a_rotation_services_accept_the_new_key_without_a_restart(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    old = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    keys.rotate(tmp_path)
    new = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    monkeypatch.setattr(auth, "RELOAD_SECONDS", 0.0)
    assert auth.verify(new, key_set).subject == "a"  # an unknown kid re-reads the file
    assert auth.verify(old, key_set).subject == "a"  # the old key stays until retired
    keys.retire(tmp_path, jwt.get_unverified_header(old)["kid"])
    key_set = _key_set(tmp_path)
    with pytest.raises(ApiError):
        auth.verify(old, key_set)
    with pytest.raises(SystemExit):
        keys.retire(tmp_path, jwt.get_unverified_header(new)["kid"])  # never the last one


def _counting_decode(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = jwt.decode

    def decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def test_a_token_is_verified_once_until_it_expires(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    token = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    expiry = jwt.decode(token, options={"verify_signature": False})["exp"]
    decoded = _counting_decode(monkeypatch)
    first = auth.verify(token, key_set)
    assert auth.verify(token, key_set) == first and auth.verify(token, key_set) == first
    assert len(decoded) == 1  # the signature was checked once
    monkeypatch.setattr(time, "time", lambda: expiry + 1.0)  # past its exp
    with pytest.raises(ApiError) as raised:
        auth.verify(token, key_set)
    assert raised.value.status == 401
    assert len(decoded) == 2  # not served from memory past its expiry: checked, and refused


def test_a_bad_token_is_checked_every_time(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    newest = keys.load(tmp_path)["keys"][0]
    expired = jwt.encode(_claims(exp=int(time.time()) - 3600), jwt.PyJWK(newest),
                         algorithm="EdDSA", headers={"kid": newest["kid"]})
    decoded = _counting_decode(monkeypatch)
    for _ in range(2):
        with pytest.raises(ApiError):
            auth.verify(expired, key_set)
    assert len(decoded) == 2


def test_a_remembered_token_goes_with_the_key_that_signed_it(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    old = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    assert auth.verify(old, key_set).subject == "a"  # remembered
    keys.rotate(tmp_path)
    keys.retire(tmp_path, jwt.get_unverified_header(old)["kid"])
    new = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    monkeypatch.setattr(auth, "RELOAD_SECONDS", 0.0)
    assert auth.verify(new, key_set).subject == "a"  # its unknown kid re-reads the set
    with pytest.raises(ApiError) as raised:
        auth.verify(old, key_set)  # its key left the set: no longer accepted from memory
    assert raised.value.status == 401


def test_a_reload_that_keeps_a_key_keeps_its_tokens_remembered(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    old = Signer(keys.load(tmp_path), 900).issue("a", ["orders"], "customer")["access_token"]
    auth.verify(old, key_set)
    keys.rotate(tmp_path)  # a new key joins; the old one stays
    new = Signer(keys.load(tmp_path), 900).issue("b", ["orders"], "customer")["access_token"]
    monkeypatch.setattr(auth, "RELOAD_SECONDS", 0.0)
    decoded = _counting_decode(monkeypatch)
    assert auth.verify(new, key_set).subject == "b"  # re-reads the set
    assert auth.verify(old, key_set).subject == "a"
    assert decoded == [new]  # the old token was not checked again


def test_at_most_so_many_tokens_are_remembered(tmp_path, monkeypatch):
    keys.init(tmp_path)
    key_set = _key_set(tmp_path)
    signer = Signer(keys.load(tmp_path), 900)
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    tokens = [signer.issue(f"c{n}", ["orders"], "customer")["access_token"] for n in range(5)]
    for token in tokens:
        auth.verify(token, key_set)
    decoded = _counting_decode(monkeypatch)
    for token in tokens[-3:]:
        auth.verify(token, key_set)
    assert decoded == []  # the newest three are remembered
    auth.verify(tokens[0], key_set)
    assert decoded == [tokens[0]]  # the oldest was let go


def test_secrets_come_from_the_variable_or_its_file(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("from-a-file\n")
    assert auth.read_secret("X", environ={"X": "plain"}) == "plain"
    assert auth.read_secret("X", environ={"X": "plain", "X_FILE": str(secret)}) == "from-a-file"
    assert auth.read_secret("X", "dflt", environ={}) == "dflt"


def test_passwords_are_argon2id_and_checked_in_constant_shape():
    hashed = asyncio.run(hash_password("correct horse"))
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "wrong")
    assert not verify_password(None, "anything")  # unknown account: the dummy hash's work


def test_allow_declares_the_openapi_security_and_refuses_unknown_scopes():
    assert auth.allow() == {"openapi_extra": {"security": []}}
    declared = auth.allow("orders", "ops")
    assert declared["openapi_extra"]["security"] == [{"OAuth2": ["orders"]}, {"OAuth2": ["ops"]}]
    with pytest.raises(ValueError, match="unknown scopes"):
        auth.allow("admin")


async def test_the_hash_gate_runs_two_at_once_queues_a_few_and_refuses_the_rest() -> None:
    gate = HashGate(at_once=2, waiting=1)
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1
        return 1

    held = [asyncio.create_task(gate.run(work)) for _ in range(3)]  # two run, one waits
    await asyncio.sleep(0.05)
    with pytest.raises(ApiError) as refused:
        await gate.run(work)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    release.set()
    assert await asyncio.gather(*held) == [1, 1, 1]
    assert most == 2
    assert await gate.run(lambda: 7) == 7  # free again once they are done


def test_password_guessing_waits_double_after_the_free_attempts() -> None:
    throttle = LoginThrottle(free=5, first_wait=1, longest_wait=900)
    assert [throttle.wait_after(n) for n in range(1, 10)] == [0, 0, 0, 0, 1, 2, 4, 8, 16]
    assert throttle.wait_after(15) == 900 and throttle.wait_after(10_000) == 900
