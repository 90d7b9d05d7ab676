"""`llmkit keys new | hash`: API keys and the hashed lines that `serve --api-keys FILE` reads."""

from __future__ import annotations

import argparse
import sys


def _keys(args: argparse.Namespace) -> int:
    from llmkit.serve.auth import hash_key, new_key

    if args.action == "new":
        key = new_key()
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"line for the --api-keys file:                          {hash_key(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        from llmkit.errors import ConfigError

        raise ConfigError(["no key given: `llmkit keys hash KEY`, or the key on stdin"])
    print(hash_key(key))
    return 0


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="make API keys and the hashed lines that `serve --api-keys FILE` reads",
                       description="API keys for `llmkit serve`. The keys file holds one key a line, plaintext or, "
                                   "better, as its `sha256:<hex>` hash so that no key is stored in the clear.")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    kh = ksub.add_parser("hash", help="print the sha256: line of a key (the key from stdin if not given)")
    kh.add_argument("key", nargs="?", help="the key; omit it to read it from stdin (keeps it out of shell history)")
    ksub.add_parser("new", help="make a random key and print it with its sha256: line")
    k.set_defaults(fn=_keys)
