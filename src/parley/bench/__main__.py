"""Entry point: ``python -m parley.bench protocol --json``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parley.bench")
    parser.add_argument("suite", choices=["protocol", "server", "kt"])
    parser.add_argument(
        "--connections", type=int, default=1000, help="server: websocket connections to hold"
    )
    parser.add_argument("--database-url", help="server: run on this database instead of SQLite")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    if args.suite == "protocol":
        from parley.bench.protocol import run

        result = run(quick=args.quick)
    elif args.suite == "kt":
        from parley.bench.kt import run as run_kt

        result = run_kt(quick=args.quick)
    else:
        from parley.bench.server import run as run_server

        result = run_server(
            quick=args.quick, connections=args.connections, database_url=args.database_url
        )
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
