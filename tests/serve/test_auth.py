"""API keys: file and env sources, hashes at rest, Bearer checks on /v1, open /health, guarded /metrics."""

from __future__ import annotations

import httpx
import openai
import pytest
from serve_helpers import MODEL

from llmkit.errors import ConfigError
from llmkit.serve.auth import KeyStore, check_bind, hash_key, is_loopback


def test_keys_from_file_and_env(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# team keys\nsk-plain-one\n{hash_key('sk-hashed-two')}  # stored hashed\n\n")
    keys = KeyStore.load(f, env="sk-env-three, ")
    assert all(h.startswith("sha256:") for h in keys.hashes) and len(keys.hashes) == 3
    assert "sk-plain-one" not in repr(keys.hashes)  # only hashes in memory
    for key in ("sk-plain-one", "sk-hashed-two", "sk-env-three"):
        assert keys.identify(f"Bearer {key}") == hash_key(key)
    assert keys.identify("Bearer sk-wrong") is None
    assert keys.identify("sk-plain-one") is None  # no scheme
    assert keys.identify(None) is None


def test_bad_key_lines_are_reported_with_their_line(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-ok\nsha256:1234\nsk with space\n")
    with pytest.raises(ConfigError) as e:
        KeyStore.load(f, env="")
    assert f"{f}:2" in str(e.value) and f"{f}:3" in str(e.value)


def test_public_bind_needs_keys():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    check_bind("127.0.0.1", KeyStore(), False)
    check_bind("0.0.0.0", KeyStore({hash_key("k")}), False)
    check_bind("0.0.0.0", KeyStore(), True)
    with pytest.raises(ConfigError, match="--allow-public-without-keys"):
        check_bind("0.0.0.0", KeyStore(), False)


def test_server_checks_keys(make_server, tmp_path):
    f = tmp_path / "keys"
    f.write_text(hash_key("sk-good") + "\n")
    srv = make_server(keys=KeyStore.load(f, env=""))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-bad"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        srv.openai("sk-bad").models.list()
    good = srv.openai("sk-good")
    assert good.chat.completions.create(**body).choices[0].message.role == "assistant"
    assert [m.id for m in good.models.list().data] == [MODEL]
    assert httpx.get(f"{srv.url}/health").status_code == 200  # open
    assert httpx.get(f"{srv.url}/metrics").status_code == 200  # open on loopback
    # auth comes before the body is even validated: a bad body without a key is still a 401
    assert httpx.post(f"{srv.url}/v1/chat/completions", json={"x": 1}).status_code == 401
