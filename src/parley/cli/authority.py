"""``parley-authority``: the judicial authority's side (also used by the tests).

``keygen --out KEY`` writes an Ed25519 private key to KEY (0600, base64 of the
32-byte seed) and its public key to KEY.pub (base64); ``sign ORDER.json --key
KEY --out SIGNED.json`` writes ``{"order": ..., "signature": base64}``, the
signature being Ed25519 over the order's RFC 8785 canonical JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from pathlib import Path

import rfc8785

from parley.crypto.primitives import SigningKey


def _write(path: Path, data: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="parley-authority", description="sign court orders for Parley")
    sub = p.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen")
    kg.add_argument("--out", required=True, type=Path, metavar="KEY")
    sg = sub.add_parser("sign")
    sg.add_argument("order", type=Path, metavar="ORDER.json")
    sg.add_argument("--key", required=True, type=Path)
    sg.add_argument("--out", required=True, type=Path, metavar="SIGNED.json")
    args = p.parse_args(argv)
    try:
        if args.command == "keygen":
            key = SigningKey.generate(secrets.token_bytes)
            _write(args.out, base64.b64encode(key.private_bytes()).decode() + "\n", 0o600)
            _write(
                Path(str(args.out) + ".pub"), base64.b64encode(key.public).decode() + "\n", 0o644
            )
            sys.stdout.write(f"wrote {args.out} and {args.out}.pub\n")
            return 0
        key = SigningKey.from_private_bytes(
            base64.b64decode(args.key.read_text().strip(), validate=True)
        )
        order = json.loads(args.order.read_text())
        if not isinstance(order, dict):
            raise ValueError("an order is a JSON object")
        signature = key.sign(bytes(rfc8785.dumps(order)))
        _write(
            args.out,
            json.dumps(
                {"order": order, "signature": base64.b64encode(signature).decode()}, indent=2
            )
            + "\n",
            0o644,
        )
        sys.stdout.write(f"wrote {args.out}\n")
        return 0
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"parley-authority: {exc}\n")
        return 1
    except Exception as exc:
        sys.stderr.write(f"parley-authority: {type(exc).__name__}: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
