"""Signed, opaque job tokens (gearstash.client.tokens): the documented format (encrypt-then-MAC), that a
token reveals nothing about its job, every way a token is refused, key rotation, the Client and CLI
entry points, and tokens minted and checked by PHP from the README's recipe."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.need import need
from workers import running_worker

import gearstash.client.tokens
from gearstash import BadToken, Client, ConfigError
from gearstash.cli.main import main
from gearstash.client.tokens import MAX_TOKEN_LENGTH, TokenSigner, b64decode, b64encode
from gearstash.model.records import JobKey, JobRecord, JobRef, State

SECRET = "tok-secret-0123456789abcdef"
OTHER = "another-secret-9876543210fedcba"
REF = JobRef(b"H:web1:70", "127.0.0.1:4730", b"5f0c2b7e4c8a4f0e9d6a1b2c3d4e5f60")
T0 = 1_800_000_000.0
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derived(secret: str) -> tuple[bytes, bytes]:
    """(enc_key, mac_key) as the README derives them from a secret."""
    enc = hmac.new(secret.encode(), b"gearstash token enc", hashlib.sha256).digest()
    mac = hmac.new(secret.encode(), b"gearstash token mac", hashlib.sha256).digest()
    return enc, mac


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    crypt = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return crypt.update(data) + crypt.finalize()


def _mac(secret: str, body: str, purpose: str = "fetch") -> str:
    key = _derived(secret)[1]
    return _b64(hmac.new(key, f"gs1.{purpose}.{body}".encode(), hashlib.sha256).digest())


def _seal(secret: str, raw: bytes, purpose: str = "fetch") -> str:
    """A token whose body is ``raw`` (IV and ciphertext) with a valid MAC."""
    body = _b64(raw)
    return f"gs1.{body}.{_mac(secret, body, purpose)}"


def _mint(secret: str, payload: bytes, purpose: str = "fetch", iv: bytes | None = None) -> str:
    """A token made by hand from the documented format (independent of gearstash.client.tokens)."""
    iv = os.urandom(16) if iv is None else iv
    return _seal(secret, iv + _aes_ctr(_derived(secret)[0], iv, payload), purpose)


def _open(secret: str, token: str) -> bytes:
    """The payload of a token, decrypted by hand from the documented format."""
    raw = _unb64(token.split(".")[1])
    return _aes_ctr(_derived(secret)[0], raw[:16], raw[16:])


def _reason(signer: TokenSigner, token: Any, now: float | None = T0) -> str:
    with pytest.raises(BadToken) as info:
        signer.verify(token, now=now)
    return info.value.reason


# ------------------------------------------------------------------------------ format


def test_token_has_the_documented_format() -> None:
    token = TokenSigner(SECRET).sign(REF, ttl=60, now=T0 + 0.25)
    prefix, body, signature = token.split(".")
    assert prefix == "gs1" and "=" not in token and set(body + signature) <= set(B64URL)
    # the MAC: HMAC-SHA256 with the derived mac key over "gs1.<purpose>.<body>"
    assert signature == _mac(SECRET, body) and len(signature) == 43
    raw_mac = hmac.new(SECRET.encode(), f"gs1.fetch.{body}".encode(), hashlib.sha256).digest()
    assert signature != _b64(raw_mac)  # not keyed with the secret itself
    # the body: a 16-byte IV, then AES-256-CTR of the JSON payload under the derived enc key
    plain = json.dumps({"r": str(REF), "x": int(T0) + 61}, separators=(",", ":")).encode()
    plain += b" " * (-len(plain) % 64)  # padded with spaces to a multiple of 64 bytes
    raw = _unb64(body)
    assert len(raw) == 16 + len(plain) and len(plain) % 64 == 0
    assert _open(SECRET, token) == plain  # expiry rounded up: lives at least ttl seconds
    assert json.loads(_open(SECRET, token)) == {"r": str(REF), "x": int(T0) + 61}
    # a token minted by hand from the README's description verifies
    by_hand = _mint(SECRET, json.dumps({"r": str(REF), "x": int(T0) + 5}).encode())
    assert TokenSigner(SECRET).verify(by_hand, now=T0) == REF
    # the CTR counter is the whole 16-byte IV, incremented as one 128-bit big-endian number
    # (OpenSSL's aes-256-ctr): an IV that wraps around inside a long payload still verifies
    long_ref = JobRef(b"H:long:1", "127.0.0.1:4730", b"u" * 200)
    wrapping = _mint(
        SECRET, json.dumps({"r": str(long_ref), "x": int(T0) + 5}).encode(), iv=b"\xff" * 16
    )
    assert TokenSigner(SECRET).verify(wrapping, now=T0) == long_ref
    # the format before encryption (base64 JSON, MAC keyed with the secret) is refused
    old_payload = _b64(json.dumps({"r": str(REF), "x": int(T0) + 5}).encode())
    old_mac = hmac.new(SECRET.encode(), f"gs1.fetch.{old_payload}".encode(), hashlib.sha256)
    assert _reason(TokenSigner(SECRET), f"gs1.{old_payload}.{_b64(old_mac.digest())}") == (
        "bad signature"
    )
    # str refs, bare handles and non-ASCII uniques round-trip
    odd = JobRef(b"H:x:1", None, "caf\u00e9#@%".encode())
    for ref in (odd, JobRef(b"H:bare:9"), str(REF)):
        want = ref if isinstance(ref, JobRef) else JobRef.parse(ref)
        assert TokenSigner(SECRET).verify(TokenSigner(SECRET).sign(ref, now=T0), now=T0) == want


def test_base64url_helpers_are_strict() -> None:
    assert b64encode(b"\xfb\xff") == "-_8" and b64decode("-_8") == b"\xfb\xff"
    for bad in ("+/8", "-_8=", "a", "ab c", "ab\n", "é"):
        with pytest.raises(ValueError):
            b64decode(bad)


def test_a_token_reveals_nothing_about_its_job() -> None:
    signer = TokenSigner(SECRET)
    odd = JobRef(b"H:gearman-box.internal:4242", "10.1.2.3:4730", "caf\u00e9-secret".encode())
    for ref in (REF, odd, JobRef(b"H:bare:9")):
        token = signer.sign(ref, now=T0)
        body = token.split(".")[1]
        secrets = [ref.handle, str(ref).encode(), b'"r"', b'"x"', str(int(T0) + 3600).encode()]
        if ref.server:
            secrets += [ref.server.encode(), ref.server.split(":")[0].encode()]
        if ref.unique:
            secrets += [ref.unique, str(ref).split("#")[1].encode()]
        # decoded from every alignment of the body, and in the token text itself
        decodings = [token.encode()]
        for shift in range(4):
            part = body[shift:]
            part = part[: len(part) - (len(part) % 4 == 1)]
            decodings.append(_unb64(part))
        for secret in secrets:
            for decoded in decodings:
                assert secret not in decoded, (ref, secret)
        # …yet it is all there, for whoever has the secret
        assert json.loads(_open(SECRET, token))["r"] == str(ref)


def test_two_tokens_for_the_same_job_differ() -> None:
    signer = TokenSigner(SECRET)
    tokens = {signer.sign(REF, ttl=60, now=T0) for _ in range(50)}
    assert len(tokens) == 50  # a random IV each time
    ivs = {_unb64(token.split(".")[1])[:16] for token in tokens}
    assert len(ivs) == 50
    lengths = {len(token) for token in tokens}
    assert len(lengths) == 1  # the same ref: the same length, different bytes
    for token in tokens:
        assert signer.verify(token, now=T0) == REF
        assert TokenSigner(OTHER, previous=[SECRET]).verify(token, now=T0) == REF


def test_nothing_is_decrypted_before_the_mac_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = TokenSigner(SECRET)
    token = signer.sign(REF, now=T0)
    calls: list[bytes] = []
    real = gearstash.client.tokens._ctr

    def counting(key: bytes, iv: bytes, data: bytes) -> bytes:
        calls.append(data)
        return real(key, iv, data)

    body = token.split(".")[1]
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    refused = [
        TokenSigner(OTHER).sign(REF, now=T0),
        TokenSigner(SECRET, purpose="cancel").sign(REF, now=T0),
        f"gs1.{flipped}.{token.split('.')[2]}",
        f"gs1.{'A' * 40}.{'A' * 43}",
    ]
    monkeypatch.setattr(gearstash.client.tokens, "_ctr", counting)
    for forged in refused:
        assert _reason(signer, forged) == "bad signature"
    assert calls == []  # the forged ciphertexts were never decrypted
    assert signer.verify(token, now=T0) == REF and len(calls) == 1


# ------------------------------------------------------------------------------ refusals


def test_every_altered_character_is_refused() -> None:
    signer = TokenSigner(SECRET)
    token = signer.sign(REF, ttl=60, now=T0)
    assert signer.verify(token, now=T0) == REF
    dots = [i for i, c in enumerate(token) if c == "."]
    for i, char in enumerate(token):
        other = "A" if char != "A" else "B"
        if char == ".":
            other = "x"
        altered = token[:i] + other + token[i + 1 :]
        reason = _reason(signer, altered)
        if i < dots[0] or char == ".":
            assert reason == "malformed", (i, altered)  # the prefix, or the structure
        else:
            assert reason == "bad signature", (i, altered)  # payload or signature
    # a valid MAC moved onto another body (encrypted with the right key), and back
    other = signer.sign(JobRef(b"H:web1:71", "127.0.0.1:4730"), ttl=60, now=T0)
    _, body, signature = token.split(".")
    assert _reason(signer, f"gs1.{other.split('.')[1]}.{signature}") == "bad signature"
    assert _reason(signer, f"gs1.{body}.{other.split('.')[2]}") == "bad signature"
    # CTR is malleable: a bit flipped in the ciphertext would flip the same plaintext bit — the
    # MAC is what refuses it
    raw = bytearray(_unb64(body))
    raw[16 + len('{"r":"H:web1:7')] ^= ord("0") ^ ord("1")  # 70 -> 71 once decrypted
    assert _reason(signer, f"gs1.{_b64(bytes(raw))}.{signature}") == "bad signature"
    assert _reason(signer, token.replace("gs1.", "gs2.", 1)) == "malformed"
    assert _reason(signer, token + ".x") == "malformed"


def test_forged_with_another_secret_is_refused() -> None:
    forged = TokenSigner(OTHER).sign(REF, now=T0)
    assert _reason(TokenSigner(SECRET), forged) == "bad signature"
    # the error says nothing about the expected signature or the secret
    with pytest.raises(BadToken) as info:
        TokenSigner(SECRET).verify(forged, now=T0)
    real = TokenSigner(SECRET).sign(REF, now=T0).split(".")[2]
    assert str(info.value) == "job token refused: bad signature"
    assert real not in repr(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(TokenSigner(SECRET)) and "secrets=1" in repr(TokenSigner(SECRET))


def test_expiry_boundary() -> None:
    signer = TokenSigner(SECRET)
    token = signer.sign(REF, ttl=60, now=T0)  # x = T0 + 60
    assert signer.verify(token, now=T0 + 59.999) == REF
    assert _reason(signer, token, now=T0 + 60) == "expired"
    assert _reason(signer, token, now=T0 + 10**6) == "expired"
    fractional = signer.sign(REF, ttl=0.5, now=T0 + 0.2)  # x = ceil(T0 + 0.7) = T0 + 1
    assert signer.verify(fractional, now=T0 + 0.9) == REF
    assert _reason(signer, fractional, now=T0 + 1) == "expired"
    # without now=, the clock is used: a fresh token verifies, an old one is expired
    assert signer.verify(signer.sign(REF, ttl=30)) == REF
    assert _reason(signer, signer.sign(REF, ttl=30, now=time.time() - 31), now=None) == "expired"
    # a forged expired token is reported as forged: the signature is checked first
    assert _reason(TokenSigner(OTHER), token, now=T0 + 60) == "bad signature"


def test_rotation_accepts_previous_secrets_only() -> None:
    old, new = TokenSigner(OTHER), TokenSigner(SECRET, previous=[OTHER])
    old_token = old.sign(REF, now=T0)
    new_token = new.sign(REF, now=T0)
    assert new.verify(old_token, now=T0) == REF  # still accepted during the rotation
    assert new.verify(new_token, now=T0) == REF
    assert _reason(old, new_token) == "bad signature"  # signed with the new secret
    assert _reason(TokenSigner(SECRET), old_token) == "bad signature"  # rotation finished
    unknown = TokenSigner("a-third-secret-nobody-knows-000").sign(REF, now=T0)
    assert _reason(new, unknown) == "bad signature"
    assert TokenSigner(SECRET, previous=[OTHER.encode(), "x" * 40]).verify(old_token, now=T0)


def test_purpose_is_signed() -> None:
    fetch = TokenSigner(SECRET)
    cancel = TokenSigner(SECRET, purpose="cancel")
    token = cancel.sign(REF, now=T0)
    assert cancel.verify(token, now=T0) == REF
    assert _reason(fetch, token) == "bad signature"
    assert _reason(cancel, fetch.sign(REF, now=T0)) == "bad signature"


def test_bad_configuration_is_refused() -> None:
    for secret in ("short", b"15 bytes secret", ""):
        with pytest.raises(ConfigError, match="at least 16 bytes") as info:
            TokenSigner(secret)
        assert "15 bytes secret" not in str(info.value)
    with pytest.raises(ConfigError, match="at least 16"):
        TokenSigner(SECRET, previous=["short"])
    with pytest.raises(ConfigError, match="sequence"):
        TokenSigner(SECRET, previous=OTHER)  # type: ignore[arg-type]
    for purpose in ("", "a.b", "x" * 65, "sp ace"):
        with pytest.raises(ConfigError):
            TokenSigner(SECRET, purpose=purpose)
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            TokenSigner(SECRET).sign(REF, ttl=ttl)
    with pytest.raises(ConfigError, match="too long"):
        TokenSigner(SECRET).sign(JobRef(b"H" * 4000, "127.0.0.1:4730", b"u"))


def test_malformed_payloads_under_a_valid_signature_are_refused() -> None:
    signer = TokenSigner(SECRET)
    x = int(T0) + 60
    for payload in (
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"x": x}).encode(),
        json.dumps({"r": "H:a:1"}).encode(),
        json.dumps({"r": "H:a:1", "x": str(x)}).encode(),
        json.dumps({"r": "H:a:1", "x": True}).encode(),
        json.dumps({"r": "H:a:1", "x": float(x)}).encode(),
        json.dumps({"r": 7, "x": x}).encode(),
        json.dumps({"r": "", "x": x}).encode(),
    ):
        token = _mint(SECRET, payload)
        assert _reason(signer, token) == "malformed", payload
    # a body that is not canonical base64url text: authenticated, but not decodable
    p = "A"  # one base64 character is never valid
    assert _reason(signer, f"gs1.{p}.{_mac(SECRET, p)}") == "malformed"
    # a body too short to hold an IV and any ciphertext
    for raw in (b"", b"\x00", os.urandom(15), os.urandom(16)):
        assert _reason(signer, _seal(SECRET, raw)) == "malformed", raw
    # a good payload encrypted with another key (under a valid MAC) decrypts to garbage
    iv = os.urandom(16)
    wrong_key = _aes_ctr(_derived(OTHER)[0], iv, json.dumps({"r": "H:a:1", "x": x}).encode())
    assert _reason(signer, _seal(SECRET, iv + wrong_key)) == "malformed"
    # unknown keys are ignored (room for later versions of the payload)
    extra = _mint(SECRET, json.dumps({"r": str(REF), "x": x, "v": 2}).encode())
    assert signer.verify(extra, now=T0) == REF


def test_garbage_and_huge_input_is_refused_quickly() -> None:
    signer = TokenSigner(SECRET)
    valid = signer.sign(REF, now=T0)
    garbage: list[Any] = [
        "",
        ".",
        "..",
        "gs1",
        "gs1..",
        "gs1.a.b",
        "gs1." + valid.split(".", 1)[1] + "=",
        valid.replace("gs1", "GS1", 1),
        " " + valid,
        valid + "\n",
        "gs1.\u00e9\u00e9.\u00e9\u00e9",
        "\x00" * 100,
        None,
        b"gs1.a.b",
        12,
    ]
    for junk in garbage:
        assert _reason(signer, junk) == "malformed", junk
    huge = "gs1." + "A" * 50_000_000 + "." + "A" * 43
    started = time.perf_counter()
    for _ in range(100):
        assert _reason(signer, huge) == "malformed"
    assert time.perf_counter() - started < 0.5  # refused by length, before any decoding
    just_over = "gs1." + "A" * (MAX_TOKEN_LENGTH - 47) + "." + "A" * 43
    assert len(just_over) == MAX_TOKEN_LENGTH + 1 and _reason(signer, just_over) == "malformed"


_VALID = TokenSigner(SECRET).sign(REF, ttl=10**9, now=T0)
_CHARS = st.sampled_from(B64URL + ".=+/ %\x00\u00e9")


@st.composite
def _mutations(draw: st.DrawFn) -> str:
    token = _VALID
    kind = draw(st.sampled_from(["replace", "insert", "delete", "swap", "truncate", "splice"]))
    i = draw(st.integers(0, len(token) - 1))
    if kind == "replace":
        char = draw(_CHARS.filter(lambda c: c != token[i]))
        return token[:i] + char + token[i + 1 :]
    if kind == "insert":
        return token[:i] + draw(_CHARS) + token[i:]
    if kind == "delete":
        return token[:i] + token[i + 1 :]
    if kind == "swap":
        j = draw(st.integers(0, len(token) - 1).filter(lambda j: token[j] != token[i]))
        chars = list(token)
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if kind == "truncate":
        return token[:i]
    return token[:i] + draw(st.text(min_size=1, max_size=20)) + token[i:]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_any_mutation_of_a_valid_token_is_refused(mutated: str) -> None:
    signer = TokenSigner(SECRET)
    assert mutated != _VALID
    with pytest.raises(BadToken) as info:
        signer.verify(mutated, now=T0)
    assert info.value.reason in ("malformed", "bad signature")


# ------------------------------------------------------------------------------ Client & CLI


@pytest.mark.gearmand
def test_round_trip_through_a_real_worker(gearmand: Any, tmp_sqlite_url: str) -> None:
    signer = TokenSigner(SECRET)
    servers = [gearmand.address]
    with running_worker(servers, tmp_sqlite_url), Client(servers, store=tmp_sqlite_url) as client:
        ref = client.submit_background("reverse", b"ABC123")
        assert client.wait(ref, timeout=20).state is State.COMPLETE
        token = signer.sign(ref, ttl=120)
        view = client.fetch_token(token, signer)
        assert view.ref == ref and view.state is State.COMPLETE
        assert view.result == b"321CBA" and view.data == [b"chunk-0", b"chunk-1", b"chunk-2"]
        # the same job by an altered or expired token: refused
        with pytest.raises(BadToken, match="bad signature"):
            client.fetch_token(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), signer)
        with pytest.raises(BadToken, match="expired"):
            client.fetch_token(signer.sign(ref, ttl=1, now=time.time() - 5), signer)


class _CountingStore:
    """A store that counts every call (it must never be called for a refused token)."""

    url = "counting://"
    capabilities = frozenset[str]()

    def __init__(self) -> None:
        self.calls = 0

    def write(self, events: Any) -> None:
        self.calls += 1

    def get_many(self, refs: Any) -> list[JobRecord | None]:
        self.calls += 1
        return [None for _ in refs]

    def close(self) -> None:
        pass


def test_fetch_token_verifies_before_touching_server_or_store() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    server = f"127.0.0.1:{listener.getsockname()[1]}"
    store = _CountingStore()
    signer = TokenSigner(SECRET)
    ref = JobRef(b"H:x:1", server, b"u1")
    try:
        with Client([server], store=store, timeout=1) as client:
            for token in (
                TokenSigner(OTHER).sign(ref),
                signer.sign(ref, ttl=1, now=time.time() - 10),
                "gs1.garbage",
            ):
                with pytest.raises(BadToken):
                    client.fetch_token(token, signer)
            assert store.calls == 0
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody connected to the job server
            # a good token does reach them
            store.write([])
            calls = store.calls
            view = client.fetch_token(signer.sign(ref), signer)
            assert view.ref == ref and store.calls == calls + 1
    finally:
        listener.close()


def _cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env)


def test_cli_sign_and_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEARSTASH_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    url = f"sqlite:///{tmp_path}/tok.db"
    from gearstash.model.records import Event, EventKind
    from gearstash.spine.manager import open_store

    key = JobKey("127.0.0.1:1", b"H:cli:1", b"u-cli")
    store = open_store(url)
    store.write(
        [
            Event(EventKind.STARTED, key, T0, function=b"reverse"),
            Event(EventKind.DATA, key, T0, payload=b"step"),
            Event(EventKind.COMPLETED, key, T0, payload=b"done!"),
        ]
    )
    store.close()
    ref = str(JobRef(key.handle, key.server, key.unique))
    env = {"GEARSTASH_TOKEN_SECRET": SECRET, "GEARSTASH_STORE": url}
    signed = _cli(env, "token", "sign", ref, "--ttl", "300")
    assert signed.exit_code == 0, signed.output
    token = signed.stdout.strip()
    assert TokenSigner(SECRET).verify(token) == JobRef.parse(ref)
    shown = _cli(env, "token", "fetch", "-s", "127.0.0.1:1", token, "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert (doc["state"], doc["result"], doc["data"]) == ("complete", "done!", ["step"])
    text = _cli(env, "token", "fetch", "-s", "127.0.0.1:1", token)
    assert text.exit_code == 0 and "complete" in text.stdout and "done!" in text.stdout
    # a refused token: one line, exit 1, the reason only
    bad = _cli(env, "token", "fetch", "-s", "127.0.0.1:1", token[:-1] + "A")
    if token.endswith("A"):
        bad = _cli(env, "token", "fetch", "-s", "127.0.0.1:1", token[:-1] + "B")
    assert bad.exit_code == 1 and "job token refused: bad signature" in bad.output
    # the secret from a file (docker secrets), or the config file — never from an option
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    by_file = _cli({"GEARSTASH_TOKEN_SECRET_FILE": str(secret_file)}, "token", "sign", ref)
    assert by_file.exit_code == 0 and TokenSigner(SECRET).verify(by_file.stdout.strip())
    conf = tmp_path / "conf.toml"
    conf.write_text(f'token_secret = "{OTHER}"\n')
    conf.chmod(0o600)
    by_conf = _cli({}, "--config", str(conf), "token", "sign", ref)
    assert by_conf.exit_code == 0 and TokenSigner(OTHER).verify(by_conf.stdout.strip())
    for option in ("--secret", "--token-secret", "--key"):
        refused = _cli({}, "token", "sign", ref, option, SECRET)
        assert refused.exit_code == 2, refused.output
    missing = _cli({}, "token", "sign", ref)
    assert missing.exit_code == 1 and "no token secret configured" in missing.output
    short = _cli({"GEARSTASH_TOKEN_SECRET": "short"}, "token", "sign", ref)
    assert short.exit_code == 1 and "at least 16 bytes" in short.output


# ------------------------------------------------------------------------------ PHP

README = Path(__file__).resolve().parent.parent / "README.md"


def _php_recipe() -> str:
    """The PHP code block of the README's "Tokens for browsers" section, as written there."""
    section = README.read_text().split("## Tokens for browsers", 1)[1].split("\n## ", 1)[0]
    return section.split("```php\n", 1)[1].split("```", 1)[0]


PHP_MAIN = r"""
[$_, $mode, $secret, $arg] = $argv;
echo $mode === 'mint'
    ? gearstash_token($secret, $arg, 300)
    : var_export(gearstash_verify($secret, $arg), true);
"""


def test_a_token_minted_by_php_verifies_in_python(tmp_path: Path) -> None:
    php = shutil.which("php")
    need(php is not None, "php-cli is not installed (scripts/setup.sh installs it)")
    assert php is not None
    script = tmp_path / "token.php"
    script.write_text("<?php\n" + _php_recipe() + PHP_MAIN)
    ref = str(JobRef(b"H:web1:70", "127.0.0.1:4730", "uniq/\u00e9#1".encode()))

    def run(*args: str) -> str:
        proc = subprocess.run([php, str(script), *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    token = run("mint", SECRET, ref)
    assert token.startswith("gs1.")
    assert TokenSigner(SECRET).verify(token) == JobRef.parse(ref)
    assert _reason(TokenSigner(OTHER), token, now=None) == "bad signature"
    # PHP's tokens are opaque too, and a new IV each time
    again = run("mint", SECRET, ref)
    assert again != token and TokenSigner(SECRET).verify(again) == JobRef.parse(ref)
    assert b"H:web1:70" not in _unb64(token.split(".")[1]) and "H:web1" not in token
    # and the other way round: PHP verifies what Python signs, and refuses an altered one
    ours = TokenSigner(SECRET).sign(ref, ttl=60)
    assert run("verify", SECRET, ours) == f"'{ref}'"
    assert run("verify", OTHER, ours) == "NULL"
    stale = TokenSigner(SECRET).sign(ref, ttl=1, now=time.time() - 9)
    assert run("verify", SECRET, stale) == "NULL"
    body, mac = ours.split(".")[1:]
    flipped = bytearray(_unb64(body))
    flipped[-3] ^= 1  # a ciphertext bit: the MAC refuses it
    assert run("verify", SECRET, f"gs1.{_b64(bytes(flipped))}.{mac}") == "NULL"
    # OpenSSL's counter is the whole 128-bit IV, like ours: the same across a wrap-around
    long_ref = str(JobRef(b"H:long:1", "127.0.0.1:4730", b"u" * 200))
    payload = json.dumps({"r": long_ref, "x": int(time.time()) + 60}).encode()
    assert run("verify", SECRET, _mint(SECRET, payload, iv=b"\xff" * 16)) == f"'{long_ref}'"


def test_token_length_hides_the_reference_length_up_to_the_padding():
    signer = TokenSigner("p" * 32)
    short = signer.sign(JobRef(b"H:a:1", "127.0.0.1:4730", b"u"), now=1_000_000_000)
    longer = signer.sign(JobRef(b"H:a:12345", "127.0.0.1:4730", b"u1234567890"), now=1_000_000_000)
    assert len(short) == len(longer)
    assert signer.verify(longer, now=1_000_000_000) == JobRef(
        b"H:a:12345", "127.0.0.1:4730", b"u1234567890"
    )
