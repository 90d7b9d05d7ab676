"""API keys: `Authorization: Bearer <key>` on every /v1 route once any key is configured.

Keys come from a file (one a line: a plaintext `sk-...` key, or `sha256:<hex>` so that keys are stored hashed
at rest; `#` starts a comment) and from `$LLMKIT_API_KEYS` (comma-separated, same two forms). Only the SHA-256
hashes are kept in memory, and a presented key is hashed and compared with `hmac.compare_digest` against every
stored hash, so neither the keys nor the comparison's timing leak.

    llmkit keys hash sk-...     # prints the sha256: line to put in the file instead of the key
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from llmkit.errors import ConfigError

PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """The line that stores `key` hashed: `sha256:<64 hex digits>`."""
    return PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "sk-llmkit-" + secrets.token_urlsafe(24)


def _parse(line: str, where: str) -> str:
    if line.startswith(PREFIX):
        digest = line[len(PREFIX):].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError([f"{where}: a hashed key is 'sha256:' and 64 hex digits"])
        return PREFIX + digest
    if any(c.isspace() for c in line):
        raise ConfigError([f"{where}: a key may not contain spaces"])
    return hash_key(line)


class KeyStore:
    """The hashes of the accepted keys. Empty means auth is off (only allowed on loopback, see `check_bind`)."""

    def __init__(self, hashes: set[str] | None = None):
        self.hashes = sorted(hashes or ())

    @classmethod
    def load(cls, path: str | Path | None = None, env: str | None = None) -> KeyStore:
        hashes: set[str] = set()
        problems = []
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError([f"API keys file not found: {p}"])
            for i, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                line = raw.split("#", 1)[0].strip()
                if line:
                    try:
                        hashes.add(_parse(line, f"{p}:{i}"))
                    except ConfigError as e:
                        problems += e.problems
        env = os.environ.get("LLMKIT_API_KEYS", "") if env is None else env
        for j, item in enumerate(k.strip() for k in env.split(",")):
            if item:
                try:
                    hashes.add(_parse(item, f"$LLMKIT_API_KEYS item {j + 1}"))
                except ConfigError as e:
                    problems += e.problems
        if problems:
            raise ConfigError(problems)
        return cls(hashes)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def identify(self, authorization: str | None) -> str | None:
        """The key's hash (the identity rate limits count against) if the header carries a known key, else None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = hash_key(key.strip())
        found = None
        for h in self.hashes:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(presented, h):
                found = h
        return found


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: KeyStore, allow_public_without_keys: bool) -> None:
    """Refuse to serve a non-loopback address with no keys, unless the operator explicitly said so."""
    if not keys and not is_loopback(host) and not allow_public_without_keys:
        raise ConfigError([(
            f"refusing to listen on {host} with no API keys: anyone who can reach it could use the models. "
            "Give keys (--api-keys FILE or $LLMKIT_API_KEYS; `llmkit keys new` makes one), bind 127.0.0.1, "
            "or pass --allow-public-without-keys if that is really meant"
        )])
